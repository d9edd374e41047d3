"""The one module that talks to Redis: the shared state's commands, each atomic and bounded.

Every decision that reads and then writes (a token bucket, a session slot under a cap, a
client secret under the live-secrets cap) is one Lua script, so replicas racing for the last
slot or token cannot both win. Scripts read the time from Redis (`TIME`), so the replicas'
clocks may disagree without changing a bucket's refill or a slot's expiry.

Every command runs under `timeout_s` (connecting included); a timeout, a refused connection or
a Redis error raises SharedStateUnavailable, never hangs. Key names start with the
`{prefix}` hash tag, so a Redis Cluster keeps all of them on one node (the scripts touch
several keys at once).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from server.errors import SharedStateUnavailable

T = TypeVar("T")
ScriptArg = str | int | float

# KEYS[1]: the bucket; ARGV: tokens per second, burst. Returns the seconds to wait (0: taken).
_TAKE_TOKEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if held[1] then
  tokens = math.min(burst, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * rate)
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

# KEYS: replica's slots, all slots (sorted sets: member slot id, score expiry ms).
# ARGV: slot id, ttl ms, replica cap, global cap (0: none). Returns 0 claimed, 1 replica full,
# 2 globally full.
_CLAIM_SLOT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
local replica_cap = tonumber(ARGV[3])
local global_cap = tonumber(ARGV[4])
if replica_cap > 0 and redis.call('ZCARD', KEYS[1]) >= replica_cap then return 1 end
if global_cap > 0 and redis.call('ZCARD', KEYS[2]) >= global_cap then return 2 end
local expires_ms = now_ms + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires_ms, ARGV[1])
redis.call('ZADD', KEYS[2], expires_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
"""

# KEYS: replica's slots, all slots. ARGV: ttl ms, slot ids... Every slot is (re)added: a
# session that is still running counts, even if a late renewal let its slot expire.
_RENEW_SLOTS = """
local t = redis.call('TIME')
local expires_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expires_ms, ARGV[i])
  redis.call('ZADD', KEYS[2], expires_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return #ARGV - 1
"""

# KEYS: replica's slots, all slots. Returns the live counts {replica, global}.
_COUNT_SLOTS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf'), redis.call('ZCOUNT', KEYS[2], '(' .. now_ms, '+inf')}
"""

# KEYS: the live-secrets index (member secret key, score expiry s), the secret's key.
# ARGV: expires at (Unix s), the most live secrets, the record, seconds kept past expiry.
# Returns 1 stored, 0 too many live.
_MINT_SECRET = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], KEYS[2])
redis.call('SET', KEYS[2], ARGV[3], 'EXAT', tonumber(ARGV[1]) + tonumber(ARGV[4]))
return 1
"""


class SlotClaim(Enum):
    CLAIMED = 0
    REPLICA_FULL = 1
    GLOBALLY_FULL = 2


@dataclass(frozen=True, slots=True)
class SlotCounts:
    replica: int
    all_replicas: int


class RedisState:
    """Voxgate's keys in one Redis database, under `prefix`."""

    def __init__(self, url: str, prefix: str = "voxgate", timeout_s: float = 0.5) -> None:
        self.timeout_s = timeout_s
        self._tag = "{" + prefix + "}"
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            health_check_interval=30,
        )
        self._take_token = self._redis.register_script(_TAKE_TOKEN)
        self._claim_slot = self._redis.register_script(_CLAIM_SLOT)
        self._renew_slots = self._redis.register_script(_RENEW_SLOTS)
        self._count_slots = self._redis.register_script(_COUNT_SLOTS)
        self._mint_secret = self._redis.register_script(_MINT_SECRET)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _bounded(self, call: Awaitable[T], what: str) -> T:
        """`call`'s result within timeout_s, or SharedStateUnavailable naming `what`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except TimeoutError as exc:
            raise SharedStateUnavailable(f"Redis did not answer {what} within {self.timeout_s:g} s") from exc
        except (RedisError, OSError) as exc:
            raise SharedStateUnavailable(f"Redis failed {what}: {exc}") from exc

    async def ping(self) -> None:
        await self._bounded(self._redis.ping(), "a ping")

    # --- token buckets ---------------------------------------------------------------------

    async def take_token(self, bucket: str, per_minute: float, burst: int) -> float:
        """Spend one token of `bucket` (refilling `per_minute / 60` a second up to `burst`):
        0.0 if there was one, else the seconds until there will be (nothing spent)."""
        keys = [f"{self._tag}:rate:{bucket}"]
        wait = await self._bounded(self._take_token(keys, [per_minute / 60, burst]), "a rate limit")
        return float(wait)

    # --- session slots ---------------------------------------------------------------------

    def _slot_keys(self, replica_id: str) -> list[str]:
        return [f"{self._tag}:slots:replica:{replica_id}", f"{self._tag}:slots:all"]

    async def claim_slot(
        self, slot_id: str, replica_id: str, ttl_s: float, replica_cap: int, global_cap: int
    ) -> SlotClaim:
        args: list[ScriptArg] = [slot_id, int(ttl_s * 1000), replica_cap, global_cap]
        code = await self._bounded(self._claim_slot(self._slot_keys(replica_id), args), "a session slot")
        return SlotClaim(int(code))

    async def renew_slots(self, slot_ids: Sequence[str], replica_id: str, ttl_s: float) -> None:
        if slot_ids:
            args: list[ScriptArg] = [int(ttl_s * 1000), *slot_ids]
            await self._bounded(self._renew_slots(self._slot_keys(replica_id), args), "slot renewal")

    async def release_slot(self, slot_id: str, replica_id: str) -> None:
        replica_key, all_key = self._slot_keys(replica_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(replica_key, slot_id)
        pipe.zrem(all_key, slot_id)
        await self._bounded(pipe.execute(), "a slot release")

    async def slot_counts(self, replica_id: str) -> SlotCounts:
        replica, everywhere = await self._bounded(
            self._count_slots(self._slot_keys(replica_id), []), "the session counts"
        )
        return SlotCounts(int(replica), int(everywhere))

    # --- client secrets --------------------------------------------------------------------

    def _secret_key(self, digest_hex: str) -> str:
        return f"{self._tag}:secret:{digest_hex}"

    async def store_secret(
        self, digest_hex: str, record: Mapping[str, Any], expires_at_s: int, max_live: int, keep_s: int
    ) -> bool:
        """Store a secret's record until `expires_at_s + keep_s`; False when `max_live`
        secrets are live already (nothing stored)."""
        keys = [f"{self._tag}:secrets", self._secret_key(digest_hex)]
        args: list[ScriptArg] = [expires_at_s, max_live, json.dumps(record), keep_s]
        return bool(await self._bounded(self._mint_secret(keys, args), "a client secret"))

    async def load_secret(self, digest_hex: str) -> dict[str, Any] | None:
        raw = await self._bounded(self._redis.get(self._secret_key(digest_hex)), "a client secret")
        return None if raw is None else dict(json.loads(raw))

    async def delete_secret(self, digest_hex: str) -> bool:
        key = self._secret_key(digest_hex)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(f"{self._tag}:secrets", key)
        deleted, _ = await self._bounded(pipe.execute(), "a client secret")
        return bool(deleted)

    # --- Twilio call parameters ------------------------------------------------------------

    def _call_key(self, call_sid: str) -> str:
        return f"{self._tag}:call:{call_sid}"

    async def store_call(self, call_sid: str, parameters: Mapping[str, str], ttl_s: int) -> None:
        call = self._redis.set(self._call_key(call_sid), json.dumps(dict(parameters)), ex=ttl_s)
        await self._bounded(call, "call parameters")

    async def load_call(self, call_sid: str) -> dict[str, str] | None:
        raw = await self._bounded(self._redis.get(self._call_key(call_sid)), "call parameters")
        return None if raw is None else {str(k): str(v) for k, v in json.loads(raw).items()}
