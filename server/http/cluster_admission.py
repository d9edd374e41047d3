"""Admission across replicas: connection-rate limits and session caps counted in Redis.

The websocket gate (server/http/gate.py) asks, in this order, for every upgrade:

1. `check_rates(client_ip, key, now_s)`: one token from the client address's bucket, then
   from the API key's, in Redis, so a client is limited across all replicas (every attempt
   spends one, as in the per-process limiter).
2. the process's own cap (server/http/admission.py, `VOXGATE_MAX_SESSIONS`).
3. `claim(now_s)`: a slot in the replica's count and in the global count, refused past
   `replica_max_sessions` / `global_max_sessions` (0: counted, not capped).

The route runs the session, then `release(slot)`. Slots carry an expiry that `run_heartbeat`
renews every third of `slot_ttl_s` for every session still running, so the slots of a replica
that died (killed, its machine gone) stop counting within `slot_ttl_s`.

When Redis fails (server/errors.py SharedStateUnavailable; each command is bounded by the
Redis timeout), each limit falls back as documented in docs/operations.md:
- rate limits: to per-process token buckets with the same limits (a client may then open up to
  one burst per process);
- session caps: `caps_on_failure` "open" admits on the per-process cap alone (the session is
  counted in Redis by the next heartbeat that reaches it); "closed" refuses (HTTP 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from server.errors import SharedStateUnavailable
from server.http.admission import (
    AT_CAPACITY_RETRY_AFTER_S,
    RateLimit,
    RefusalReason,
    Refused,
    TokenBuckets,
)
from server.shared.redis_state import RedisState, SlotClaim, SlotCounts

log = logging.getLogger(__name__)

# a client refused because Redis is unreachable may try again about this soon
UNAVAILABLE_RETRY_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    replica_id: str
    per_ip: RateLimit
    per_key: RateLimit
    replica_max_sessions: int = 0  # 0: no cap
    global_max_sessions: int = 0
    slot_ttl_s: float = 30.0
    caps_on_failure: Literal["open", "closed"] = "open"


@dataclass(slots=True, eq=False)
class ClusterSlot:
    """One session's place in the shared counts; `release` frees it once."""

    slot_id: str
    released: bool = False


class ClusterAdmission:
    """Rate limits and session caps shared through Redis, with per-process fallbacks."""

    def __init__(
        self,
        state: RedisState,
        options: ClusterOptions,
        on_failure: Callable[[str], None] = lambda operation: None,
    ) -> None:
        self.state = state
        self.options = options
        self._on_failure = on_failure  # a metric: shared-state failures by operation
        self._fallback_ip = TokenBuckets(options.per_ip)
        self._fallback_key = TokenBuckets(options.per_key)
        self._live: dict[str, ClusterSlot] = {}  # this process's sessions, renewed by the heartbeat
        self._slot_prefix = f"{options.replica_id}:{os.getpid()}:"

    @property
    def live_slots(self) -> int:
        return len(self._live)

    def _failed(self, operation: str, exc: SharedStateUnavailable) -> None:
        self._on_failure(operation)
        log.warning("shared state unavailable", extra={"operation": operation, "error": str(exc)})

    async def check_rates(self, client_ip: str | None, key: str | None, now_s: float) -> Refused | None:
        """Spend a token from the address's bucket, then the key's (each skipped when None or
        its limit is off); the refusal, or None."""
        checks = (
            (client_ip, "ip", self.options.per_ip, self._fallback_ip, RefusalReason.IP_RATE_LIMITED),
            (key, "key", self.options.per_key, self._fallback_key, RefusalReason.KEY_RATE_LIMITED),
        )
        for name, kind, limit, fallback, reason in checks:
            if name is None or not limit.is_enabled:
                continue
            try:
                wait_s = await self.state.take_token(f"{kind}:{name}", limit.per_minute, limit.burst)
            except SharedStateUnavailable as exc:
                self._failed("rate_limit", exc)
                wait_s = fallback.take(name, now_s)
            if wait_s > 0:
                return Refused(reason, wait_s)
        return None

    async def claim(self) -> ClusterSlot | Refused:
        """A place in the replica's and the global session counts, or why not."""
        slot = ClusterSlot(self._slot_prefix + secrets.token_hex(6))
        o = self.options
        try:
            claim = await self.state.claim_slot(
                slot.slot_id, o.replica_id, o.slot_ttl_s, o.replica_max_sessions, o.global_max_sessions
            )
        except SharedStateUnavailable as exc:
            self._failed("session_slot", exc)
            if o.caps_on_failure == "closed":
                return Refused(RefusalReason.SHARED_STATE_UNAVAILABLE, UNAVAILABLE_RETRY_AFTER_S)
            claim = SlotClaim.CLAIMED  # admitted uncounted; the next heartbeat adds it
        match claim:
            case SlotClaim.REPLICA_FULL:
                return Refused(RefusalReason.AT_CAPACITY, AT_CAPACITY_RETRY_AFTER_S)
            case SlotClaim.GLOBALLY_FULL:
                return Refused(RefusalReason.GLOBAL_AT_CAPACITY, AT_CAPACITY_RETRY_AFTER_S)
        self._live[slot.slot_id] = slot
        return slot

    async def release(self, slot: ClusterSlot) -> None:
        """Free `slot` (once). If Redis fails, it expires after slot_ttl_s instead."""
        if slot.released:
            return
        slot.released = True
        self._live.pop(slot.slot_id, None)
        try:
            await self.state.release_slot(slot.slot_id, self.options.replica_id)
        except SharedStateUnavailable as exc:
            self._failed("slot_release", exc)

    async def counts(self) -> SlotCounts | None:
        """Sessions on this replica and on all of them, or None when Redis fails."""
        try:
            return await self.state.slot_counts(self.options.replica_id)
        except SharedStateUnavailable as exc:
            self._failed("slot_counts", exc)
            return None

    async def replica_is_full(self) -> bool:
        """Whether this replica is at its cap (for /readyz); False when uncapped or unknown."""
        if not self.options.replica_max_sessions:
            return False
        counts = await self.counts()
        return counts is not None and counts.replica >= self.options.replica_max_sessions

    async def renew(self) -> None:
        """Push every live slot's expiry slot_ttl_s ahead (and count any admitted while Redis
        was unreachable)."""
        try:
            await self.state.renew_slots(list(self._live), self.options.replica_id, self.options.slot_ttl_s)
        except SharedStateUnavailable as exc:
            self._failed("slot_renewal", exc)

    async def run_heartbeat(self) -> None:
        """Renew the live slots every third of their TTL, until cancelled."""
        period_s = self.options.slot_ttl_s / 3
        while True:
            await asyncio.sleep(period_s)
            await self.renew()

    async def close(self) -> None:
        """Release what is left (best effort, bounded by the Redis timeout) and disconnect."""
        for slot in list(self._live.values()):
            await self.release(slot)
        with contextlib.suppress(SharedStateUnavailable, OSError):
            await self.state.close()
