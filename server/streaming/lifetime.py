"""SessionLifetime: when a session must end on the server's initiative. Pure: never awaits,
never reads a clock; the Conversation feeds it times in seconds on its own clock.

Order of calls: `push_activity(now_s)` on every client message; `poll(now_s)` whenever
`next_deadline_s()` has passed (polling early is harmless: it returns None). `poll` returns
`WarnExpiring` once, `warning_s` before the maximum duration, then `EndSession(reason)` for
good: the session must close (routes.py maps the reason to a close code).

Invariants:
- The warning comes before the end and at most once; with `warning_s == 0` there is none.
- The maximum duration counts from the start, whatever the client does; the idle timeout
  counts from the last client message (of any kind) and `idle_timeout_s == 0` disables it.
- Once ended, `poll` keeps returning the same `EndSession`.

The other ends a session can meet (a client that stops reading, a message that is too big)
are found by the transport (server/streaming/guard.py) and share `SessionEnd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class SessionEnd(Enum):
    """Why the server ended a session."""

    MAX_DURATION = "max_duration"
    IDLE = "idle"
    SLOW_CONSUMER = "slow_consumer"  # the client stopped reading what we send
    MESSAGE_TOO_BIG = "message_too_big"


@dataclass(frozen=True, slots=True)
class LifetimeOptions:
    max_duration_s: float = 3600.0
    warning_s: float = 60.0
    idle_timeout_s: float = 300.0  # 0 disables

    def __post_init__(self) -> None:
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, not {self.max_duration_s}")
        if not 0 <= self.warning_s < self.max_duration_s:
            raise ValueError(
                f"warning_s must be >= 0 and less than max_duration_s ({self.max_duration_s}), "
                f"not {self.warning_s}"
            )
        if self.idle_timeout_s < 0:
            raise ValueError(f"idle_timeout_s must be >= 0, not {self.idle_timeout_s}")


@dataclass(frozen=True, slots=True)
class WarnExpiring:
    """Tell the client the session ends in `seconds_left`."""

    seconds_left: float


@dataclass(frozen=True, slots=True)
class EndSession:
    reason: SessionEnd


class SessionLifetime:
    def __init__(self, options: LifetimeOptions, start_s: float) -> None:
        self.options = options
        self.start_s = start_s
        self.last_activity_s = start_s
        self._warned = options.warning_s == 0
        self._ended: EndSession | None = None

    @property
    def expires_at_s(self) -> float:
        return self.start_s + self.options.max_duration_s

    def push_activity(self, now_s: float) -> None:
        self.last_activity_s = max(self.last_activity_s, now_s)

    def next_deadline_s(self) -> float:
        """The earliest time `poll` may have something to say."""
        deadlines = [self.expires_at_s]
        if not self._warned:
            deadlines.append(self.expires_at_s - self.options.warning_s)
        if self.options.idle_timeout_s > 0:
            deadlines.append(self.last_activity_s + self.options.idle_timeout_s)
        return min(deadlines)

    def poll(self, now_s: float) -> WarnExpiring | EndSession | None:
        if self._ended is not None:
            return self._ended
        if now_s >= self.expires_at_s:
            self._ended = EndSession(SessionEnd.MAX_DURATION)
            return self._ended
        idle_s = self.options.idle_timeout_s
        if idle_s > 0 and now_s >= self.last_activity_s + idle_s:
            self._ended = EndSession(SessionEnd.IDLE)
            return self._ended
        if not self._warned and now_s >= self.expires_at_s - self.options.warning_s:
            self._warned = True
            return WarnExpiring(self.expires_at_s - now_s)
        return None
