"""server/shared/redis_state.py against a real redis-server: the scripts' atomic decisions,
expiry, and bounded failure (a stopped or hung Redis raises SharedStateUnavailable in time)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from server.errors import SharedStateUnavailable
from server.shared.redis_state import RedisState, SlotClaim, SlotCounts
from tests.redis_server import RedisProcess, free_port


@pytest.fixture
async def state(redis: RedisProcess) -> AsyncIterator[RedisState]:
    shared = RedisState(redis.url, prefix="test", timeout_s=5.0)  # generous: the box is shared
    try:
        yield shared
    finally:
        await shared.close()


async def test_token_bucket_is_shared_by_every_client_of_the_redis(redis: RedisProcess) -> None:
    replica_a, replica_b = RedisState(redis.url, "t"), RedisState(redis.url, "t")
    try:
        taken = [
            await replica.take_token("ip:10.0.0.1", 6, 3) for replica in (replica_a, replica_b, replica_a)
        ]
        assert taken == [0.0, 0.0, 0.0]  # a burst of 3, spent on two replicas
        wait_s = await replica_b.take_token("ip:10.0.0.1", 6, 3)
        assert 9.0 < wait_s <= 10.0  # 6 a minute: one token every 10 s
        assert await replica_b.take_token("ip:10.0.0.2", 6, 3) == 0.0  # another address
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_racing_claims_never_pass_the_caps(state: RedisState) -> None:
    claims = await asyncio.gather(*(state.claim_slot(f"s{i}", "a", 30, 5, 0) for i in range(20)))
    assert claims.count(SlotClaim.CLAIMED) == 5
    assert set(claims) == {SlotClaim.CLAIMED, SlotClaim.REPLICA_FULL}
    assert await state.claim_slot("b1", "b", 30, 5, 7) is SlotClaim.CLAIMED
    assert await state.claim_slot("b2", "b", 30, 5, 7) is SlotClaim.CLAIMED
    assert await state.claim_slot("b3", "b", 30, 5, 7) is SlotClaim.GLOBALLY_FULL  # 5 + 2 anywhere
    assert await state.slot_counts("a") == SlotCounts(replica=5, all_replicas=7)
    winner = f"s{claims.index(SlotClaim.CLAIMED)}"  # which ones won the race is up to Redis
    await state.release_slot(winner, "a")
    await state.release_slot(winner, "a")  # twice: still one
    assert await state.slot_counts("b") == SlotCounts(replica=2, all_replicas=6)


async def test_slots_of_a_replica_that_stops_renewing_expire(state: RedisState) -> None:
    await state.claim_slot("dead-1", "dead", 0.3, 0, 0)
    await state.claim_slot("alive-1", "alive", 0.3, 0, 0)
    for _ in range(4):  # the live replica's heartbeat; the dead one's never comes
        await asyncio.sleep(0.15)
        await state.renew_slots(["alive-1"], "alive", 0.3)
    assert await state.slot_counts("dead") == SlotCounts(replica=0, all_replicas=1)
    assert await state.claim_slot("alive-2", "alive", 30, 2, 2) is SlotClaim.CLAIMED  # room again


async def test_renewal_adds_a_slot_admitted_while_redis_was_away(state: RedisState) -> None:
    await state.renew_slots(["admitted-uncounted"], "a", 30)
    assert await state.slot_counts("a") == SlotCounts(1, 1)


async def test_secret_records_expire_and_are_capped(state: RedisState) -> None:
    import time

    now_s = int(time.time())
    assert await state.store_secret("d1", {"expires_at_s": now_s + 60, "session": {}}, now_s + 60, 2, 10)
    assert await state.store_secret("d2", {"expires_at_s": now_s + 60, "session": {}}, now_s + 60, 2, 10)
    assert not await state.store_secret("d3", {"expires_at_s": now_s + 60, "session": {}}, now_s + 60, 2, 10)
    assert await state.load_secret("d1") == {"expires_at_s": now_s + 60, "session": {}}
    assert await state.delete_secret("d1") is True
    assert await state.load_secret("d1") is None
    assert await state.store_secret("d3", {"expires_at_s": now_s + 60, "session": {}}, now_s + 60, 2, 10)


async def test_call_parameters_round_trip(state: RedisState) -> None:
    await state.store_call("CA123", {"instructions": "Be brief.", "tier": "gold"}, ttl_s=60)
    assert await state.load_call("CA123") == {"instructions": "Be brief.", "tier": "gold"}
    assert await state.load_call("CA999") is None


async def test_a_stopped_redis_fails_fast(redis: RedisProcess, state: RedisState) -> None:
    assert await state.take_token("ip:x", 60, 5) == 0.0
    redis.stop()
    with pytest.raises(SharedStateUnavailable, match="Redis"):
        await asyncio.wait_for(state.claim_slot("s", "a", 30, 0, 0), 5)


async def test_a_hung_redis_times_out_instead_of_hanging(redis: RedisProcess) -> None:
    state = RedisState(redis.url, timeout_s=0.5)
    try:
        await asyncio.wait_for(state.ping(), 10)
        redis.pause()
        try:
            with pytest.raises(SharedStateUnavailable, match="within 0.5 s"):
                await asyncio.wait_for(state.take_token("ip:x", 60, 5), 5)
        finally:
            redis.resume()
        for _ in range(20):  # and it comes back (a command may still time out while it wakes)
            with contextlib.suppress(SharedStateUnavailable):
                await state.ping()
                break
        else:
            raise AssertionError("Redis never answered again")
    finally:
        await state.close()


async def test_nothing_listening_is_unavailable() -> None:
    nowhere = RedisState(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(SharedStateUnavailable):
            await asyncio.wait_for(nowhere.ping(), 5)
    finally:
        await nowhere.close()
