"""Admission control: who may open a session now. Pure logic: no clock reads, no I/O.

Order of calls: `admission.admit(client_ip, key, now_s)` for every websocket upgrade, before
accepting it. `Admitted(slot)` means go ahead; the caller must `admission.release(slot)` when
the session ends, whatever way it ends (a `finally`). `Refused(reason, retry_after_s)` means
refuse the upgrade; the route picks how (HTTP 503/429 with Retry-After).

Invariants:
- `active` never exceeds `max_sessions`; a slot counts once, however often it is released.
- Every attempt, admitted or not, spends one token from its client IP's bucket, then (if a key
  was presented and the IP passed) one from its key's bucket. A client retrying in a loop while
  the server is full therefore runs out of tokens: capacity refusals do not become free retries.
- A bucket refills at `per_minute / 60` tokens a second up to `burst`. A full bucket equals an
  absent one, so full buckets are dropped; at most `max_tracked` buckets exist per limiter (the
  least recently used goes first), so a flood of distinct keys cannot grow memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

# Nobody knows when a session will end; a client that was refused for capacity is asked to wait
# about as long as a short exchange takes before it tries again.
AT_CAPACITY_RETRY_AFTER_S = 5.0
MAX_TRACKED_CLIENTS = 10_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`per_minute` new connections sustained, `burst` at once; `per_minute == 0` disables."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute < 0 or not math.isfinite(self.per_minute):
            raise ValueError(f"per_minute must be a finite number >= 0, not {self.per_minute}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, not {self.burst}")

    @property
    def is_enabled(self) -> bool:
        return self.per_minute > 0


@dataclass(frozen=True, slots=True)
class AdmissionOptions:
    max_sessions: int = 4
    per_ip: RateLimit = field(default_factory=lambda: RateLimit(60, 20))
    per_key: RateLimit = field(default_factory=lambda: RateLimit(120, 40))
    max_tracked: int = MAX_TRACKED_CLIENTS

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, not {self.max_sessions}")
        if self.max_tracked < 1:
            raise ValueError(f"max_tracked must be >= 1, not {self.max_tracked}")


class RefusalReason(Enum):
    AT_CAPACITY = "at_capacity"
    IP_RATE_LIMITED = "ip_rate_limited"
    KEY_RATE_LIMITED = "key_rate_limited"
    GLOBAL_AT_CAPACITY = "global_at_capacity"  # every replica together (server/shared/cluster.py)
    SHARED_STATE_UNAVAILABLE = "shared_state_unavailable"  # Redis unreachable, caps fail closed


@dataclass(frozen=True, slots=True)
class Refused:
    reason: RefusalReason
    retry_after_s: float  # when trying again may succeed (capacity: a guess, see above)


@dataclass(slots=True, eq=False)
class Slot:
    """One admitted session's place; `Admission.release` frees it once."""

    released: bool = False


@dataclass(frozen=True, slots=True)
class Admitted:
    slot: Slot


class TokenBuckets:
    """One token bucket per key (an opaque string: an IP, a key fingerprint)."""

    def __init__(self, limit: RateLimit, max_tracked: int = MAX_TRACKED_CLIENTS) -> None:
        self._limit = limit
        self._rate_per_s = limit.per_minute / 60
        self._max_tracked = max_tracked
        # key -> (tokens, at_s), least recently touched first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now_s: float) -> float:
        """Spend one token of `key`'s bucket. 0.0 if there was one; otherwise nothing is spent
        and the result is the seconds until one will be there (> 0)."""
        if not self._limit.is_enabled:
            return 0.0
        tokens = self._tokens(key, now_s)
        self._buckets.pop(key, None)
        if tokens >= 1.0:
            tokens -= 1.0
            wait_s = 0.0
        else:
            wait_s = (1.0 - tokens) / self._rate_per_s
        self._buckets[key] = (tokens, now_s)
        self._prune(now_s)
        return wait_s

    def _tokens(self, key: str, now_s: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self._limit.burst)
        tokens, at_s = held
        elapsed_s = max(0.0, now_s - at_s)  # a clock that steps back refills nothing
        return min(float(self._limit.burst), tokens + elapsed_s * self._rate_per_s)

    def _prune(self, now_s: float) -> None:
        # the least recently touched come first; those are the ones most likely refilled
        while self._buckets:
            key = next(iter(self._buckets))
            if len(self._buckets) > self._max_tracked or self._tokens(key, now_s) >= self._limit.burst:
                del self._buckets[key]
            else:
                break


class SessionLimiter:
    """Counts concurrent sessions against a maximum."""

    def __init__(self, max_sessions: int) -> None:
        self.maximum = max_sessions
        self.active = 0

    def try_acquire(self) -> Slot | None:
        if self.active >= self.maximum:
            return None
        self.active += 1
        return Slot()

    def release(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        self.active -= 1


class Admission:
    """The session limiter and both rate limiters, consulted in that documented order."""

    def __init__(self, options: AdmissionOptions) -> None:
        self.options = options
        self.sessions = SessionLimiter(options.max_sessions)
        self._per_ip = TokenBuckets(options.per_ip, options.max_tracked)
        self._per_key = TokenBuckets(options.per_key, options.max_tracked)

    @property
    def active(self) -> int:
        return self.sessions.active

    @property
    def maximum(self) -> int:
        return self.sessions.maximum

    def admit(self, client_ip: str | None, key: str | None, now_s: float) -> Admitted | Refused:
        """Rate limits first (per IP, then per key), then capacity. `client_ip` None (unknown)
        and `key` None (no key presented) skip their limiter."""
        if client_ip is not None:
            wait_s = self._per_ip.take(client_ip, now_s)
            if wait_s > 0:
                return Refused(RefusalReason.IP_RATE_LIMITED, wait_s)
        if key is not None:
            wait_s = self._per_key.take(key, now_s)
            if wait_s > 0:
                return Refused(RefusalReason.KEY_RATE_LIMITED, wait_s)
        slot = self.sessions.try_acquire()
        if slot is None:
            return Refused(RefusalReason.AT_CAPACITY, AT_CAPACITY_RETRY_AFTER_S)
        return Admitted(slot)

    def release(self, slot: Slot) -> None:
        self.sessions.release(slot)

    def tracked_clients(self) -> int:
        """Buckets held (IPs and keys): bounded by 2 * max_tracked."""
        return len(self._per_ip) + len(self._per_key)
