"""Admission control and session lifetime as plain logic: injected times, no loop, no sleeps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.http.admission import (
    AT_CAPACITY_RETRY_AFTER_S,
    Admission,
    AdmissionOptions,
    Admitted,
    RateLimit,
    RefusalReason,
    Refused,
    SessionLimiter,
    TokenBuckets,
)
from server.http.gate import credential_fingerprint, refusal_message, refusal_status
from server.settings import Settings
from server.streaming.lifetime import EndSession, LifetimeOptions, SessionEnd, SessionLifetime, WarnExpiring

# --- token buckets ---------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_when_the_next_token_comes() -> None:
    buckets = TokenBuckets(RateLimit(per_minute=60, burst=3))  # one token a second
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 100.0) == pytest.approx(1.0)
    assert buckets.take("a", 100.25) == pytest.approx(0.75)  # a refusal spends nothing
    assert buckets.take("a", 101.0) == 0.0  # refilled one
    assert buckets.take("a", 101.0) == pytest.approx(1.0)


def test_buckets_are_per_key_and_refill_to_the_burst_only() -> None:
    buckets = TokenBuckets(RateLimit(per_minute=6, burst=2))  # a token every 10 s
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == pytest.approx(10.0)
    assert buckets.take("b", 0.0) == 0.0  # another client is not affected
    # an hour later the bucket holds `burst` tokens, not 360
    assert [buckets.take("a", 3600.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(10.0)]


def test_a_clock_stepping_back_refills_nothing() -> None:
    buckets = TokenBuckets(RateLimit(per_minute=60, burst=1))
    assert buckets.take("a", 50.0) == 0.0
    assert buckets.take("a", 40.0) == pytest.approx(1.0)


def test_a_disabled_limit_never_refuses_and_tracks_nothing() -> None:
    buckets = TokenBuckets(RateLimit(per_minute=0, burst=1))
    assert all(buckets.take("a", 0.0) == 0.0 for _ in range(1000))
    assert len(buckets) == 0


def test_full_buckets_are_forgotten_and_distinct_keys_cannot_grow_memory() -> None:
    buckets = TokenBuckets(RateLimit(per_minute=60, burst=5), max_tracked=100)
    for i in range(10_000):  # a flood of distinct keys within one second
        buckets.take(f"key-{i}", 0.5)
    assert len(buckets) <= 100
    # later, a touch prunes every bucket that has refilled (they equal absent ones)
    buckets.take("late", 3600.0)
    assert len(buckets) == 1


def test_rate_limit_and_options_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RateLimit(per_minute=-1, burst=1)
    with pytest.raises(ValueError, match="per_minute"):
        RateLimit(per_minute=float("inf"), burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(per_minute=1, burst=0)
    with pytest.raises(ValueError, match="max_sessions"):
        AdmissionOptions(max_sessions=0)


# --- sessions --------------------------------------------------------------------------------


def test_the_session_limiter_counts_slots_and_a_slot_is_released_once() -> None:
    limiter = SessionLimiter(2)
    first, second = limiter.try_acquire(), limiter.try_acquire()
    assert first is not None and second is not None
    assert limiter.try_acquire() is None
    limiter.release(first)
    limiter.release(first)  # a second release of the same slot changes nothing
    assert limiter.active == 1
    third = limiter.try_acquire()
    assert third is not None and limiter.try_acquire() is None
    limiter.release(second)
    limiter.release(third)
    assert limiter.active == 0


def _admission(max_sessions: int = 2, ip: RateLimit | None = None, key: RateLimit | None = None) -> Admission:
    return Admission(
        AdmissionOptions(
            max_sessions=max_sessions,
            per_ip=ip or RateLimit(per_minute=0, burst=1),
            per_key=key or RateLimit(per_minute=0, burst=1),
        )
    )


def test_admission_refuses_beyond_capacity_and_admits_after_a_release() -> None:
    admission = _admission(max_sessions=2)
    first, second = admission.admit("1.2.3.4", None, 0.0), admission.admit("1.2.3.4", None, 0.0)
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    refused = admission.admit("5.6.7.8", None, 0.0)
    assert refused == Refused(RefusalReason.AT_CAPACITY, AT_CAPACITY_RETRY_AFTER_S)
    assert admission.active == admission.maximum == 2
    admission.release(first.slot)
    assert isinstance(admission.admit("5.6.7.8", None, 0.0), Admitted)


def test_rate_limits_come_first_ip_then_key_and_capacity_refusals_still_cost_a_token() -> None:
    admission = _admission(max_sessions=1, ip=RateLimit(per_minute=60, burst=2), key=RateLimit(60, 1))
    assert isinstance(admission.admit("ip", None, 0.0), Admitted)
    # full: refused for capacity, but the attempt spent the address's second token
    assert admission.admit("ip", None, 0.0) == Refused(RefusalReason.AT_CAPACITY, AT_CAPACITY_RETRY_AFTER_S)
    ip_refused = admission.admit("ip", "k", 0.0)
    assert isinstance(ip_refused, Refused) and ip_refused.reason is RefusalReason.IP_RATE_LIMITED
    assert ip_refused.retry_after_s == pytest.approx(1.0)
    # the key bucket was not touched by the address's refusal
    assert admission.admit("other-ip", "k", 0.0) == Refused(
        RefusalReason.AT_CAPACITY, AT_CAPACITY_RETRY_AFTER_S
    )
    key_refused = admission.admit("third-ip", "k", 0.0)
    assert isinstance(key_refused, Refused) and key_refused.reason is RefusalReason.KEY_RATE_LIMITED
    assert admission.tracked_clients() <= 4


def test_unknown_address_and_no_key_skip_their_limiters() -> None:
    admission = _admission(max_sessions=100, ip=RateLimit(60, 1), key=RateLimit(60, 1))
    assert all(isinstance(admission.admit(None, None, 0.0), Admitted) for _ in range(10))


def test_refusals_map_to_http_statuses_and_say_when_to_retry() -> None:
    busy = Refused(RefusalReason.AT_CAPACITY, 5.0)
    rate = Refused(RefusalReason.IP_RATE_LIMITED, 0.2)
    assert refusal_status(busy) == 503 and refusal_status(rate) == 429
    assert refusal_status(Refused(RefusalReason.KEY_RATE_LIMITED, 1.0)) == 429
    assert "session limit" in refusal_message(busy) and "5 s" in refusal_message(busy)
    assert "this address" in refusal_message(rate) and "1 s" in refusal_message(rate)


def test_credential_fingerprints_hide_the_key_and_tell_keys_apart() -> None:
    bearer = credential_fingerprint("Bearer sk-secret-1", [])
    assert bearer is not None and "sk-secret" not in bearer
    assert credential_fingerprint("bearer  sk-secret-1 ", []) == bearer
    assert credential_fingerprint(None, ["realtime", "openai-insecure-api-key.sk-secret-1"]) == bearer
    assert credential_fingerprint("Bearer sk-secret-2", []) != bearer
    assert credential_fingerprint(None, ["realtime"]) is None
    assert credential_fingerprint("Basic abc", ["openai-insecure-api-key."]) is None


# --- session lifetime ------------------------------------------------------------------------


def test_max_duration_warns_once_then_ends() -> None:
    life = SessionLifetime(LifetimeOptions(max_duration_s=100, warning_s=10, idle_timeout_s=0), start_s=1000)
    assert life.next_deadline_s() == 1090
    assert life.poll(1050) is None
    assert life.poll(1090) == WarnExpiring(seconds_left=10)
    assert life.poll(1095) is None  # warned once
    assert life.next_deadline_s() == 1100
    assert life.poll(1100) == EndSession(SessionEnd.MAX_DURATION)
    assert life.poll(2000) == EndSession(SessionEnd.MAX_DURATION)


def test_a_late_poll_still_warns_before_it_ends() -> None:
    life = SessionLifetime(LifetimeOptions(max_duration_s=100, warning_s=10, idle_timeout_s=0), start_s=0)
    assert life.poll(97.5) == WarnExpiring(seconds_left=2.5)
    assert life.poll(100) == EndSession(SessionEnd.MAX_DURATION)


def test_activity_postpones_the_idle_timeout_but_not_the_maximum_duration() -> None:
    life = SessionLifetime(LifetimeOptions(max_duration_s=100, warning_s=0, idle_timeout_s=30), start_s=0)
    for t in range(10, 100, 10):
        assert life.poll(t) is None
        life.push_activity(t)
    assert life.next_deadline_s() == 100  # idle would be 120: the maximum duration comes first
    assert life.poll(100) == EndSession(SessionEnd.MAX_DURATION)


def test_no_client_message_for_the_idle_timeout_ends_the_session() -> None:
    life = SessionLifetime(LifetimeOptions(max_duration_s=3600, warning_s=60, idle_timeout_s=30), start_s=0)
    life.push_activity(20)
    life.push_activity(5)  # an older time never moves the deadline back
    assert life.next_deadline_s() == 50
    assert life.poll(49.9) is None
    assert life.poll(50) == EndSession(SessionEnd.IDLE)


def test_zero_warning_and_zero_idle_disable_them() -> None:
    life = SessionLifetime(LifetimeOptions(max_duration_s=10, warning_s=0, idle_timeout_s=0), start_s=0)
    assert life.next_deadline_s() == 10
    assert life.poll(9.99) is None
    assert life.poll(10) == EndSession(SessionEnd.MAX_DURATION)


def test_lifetime_options_reject_a_warning_at_or_after_the_end() -> None:
    with pytest.raises(ValueError, match="warning_s"):
        LifetimeOptions(max_duration_s=10, warning_s=10)
    with pytest.raises(ValueError, match="max_duration_s"):
        LifetimeOptions(max_duration_s=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        LifetimeOptions(idle_timeout_s=-1)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"session_max_duration_s": 30, "session_warning_s": 30}, "must be less than session_max_duration_s"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"ip_connections_per_minute": -1}, "ip_connections_per_minute"),
        ({"key_connection_burst": 0}, "key_connection_burst"),
        ({"idle_timeout_s": -5}, "idle_timeout_s"),
        ({"max_outbound_buffer_ms": 10}, "max_outbound_buffer_ms"),
    ],
)
def test_settings_reject_bad_limits_with_a_clear_error(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)  # type: ignore[arg-type]


def test_settings_read_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_MAX_SESSIONS", "12")
    monkeypatch.setenv("VOXGATE_SESSION_MAX_DURATION_S", "600")
    settings = Settings()
    assert settings.max_sessions == 12 and settings.session_max_duration_s == 600
