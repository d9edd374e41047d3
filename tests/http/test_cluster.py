"""Replicas sharing one real redis-server (Debian's package; tests/redis_server.py): client
secrets, connection-rate limits and session caps hold across apps, and an unreachable or hung
Redis gets each limit's documented fallback, never a hang. The apps serve FAKE models
(tests/conftest.py fake_app); each app stands for a replica or a worker process of one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fake_app
from tests.harness import realtime_client, running_server
from tests.http.test_access import KEY, refusal, session
from tests.redis_server import RedisProcess, free_port

UNLIMITED_RATES = {"ip_connections_per_minute": 0, "key_connections_per_minute": 0}


@contextlib.asynccontextmanager
async def replicas(redis: RedisProcess, *settings: dict[str, Any]) -> AsyncIterator[list[str]]:
    """One running fake-model app per settings dict, all on `redis`; their URLs."""
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for own in settings:
            # a generous timeout: on a shared box a slow answer must not pass for a failure
            app = fake_app(**{"redis_url": redis.url, "redis_timeout_s": 5.0, **own})
            urls.append(await stack.enter_async_context(running_server(app)))
        yield urls


async def wait_for_status(url: str, path: str, status: int, tries: int = 200) -> httpx.Response:
    """GET url+path until it answers `status` (a session's slot is freed as its handler ends)."""
    async with httpx.AsyncClient() as http:
        for _ in range(tries):
            with contextlib.suppress(httpx.TransportError):
                response = await http.get(url + path)
                if response.status_code == status:
                    return response
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url}{path} never answered {status}")


async def test_a_client_secret_minted_on_one_replica_opens_a_session_on_another(redis: RedisProcess) -> None:
    keyed = {"api_keys": [KEY], **UNLIMITED_RATES}
    async with replicas(redis, {**keyed, "replica_id": "a"}, {**keyed, "replica_id": "b"}) as (a, b):
        async with httpx.AsyncClient() as http:
            minted = await http.post(
                a + "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"session": {"instructions": "Caller 42 is on the line."}},
            )
        assert minted.status_code == 200, minted.text
        protocols = ["realtime", f"openai-insecure-api-key.{minted.json()['value']}"]
        async with session(b, subprotocols=protocols) as client:
            created = await client.wait_for("session.created")
            assert created["session"]["instructions"] == "Caller 42 is on the line."
        status, body = await refusal(b, subprotocols=["realtime", "openai-insecure-api-key.ek_not_minted"])
        assert (status, body["error"]["code"]) == (401, "invalid_client_secret")


async def test_the_replica_cap_counts_every_process_of_the_replica(redis: RedisProcess) -> None:
    worker = {"replica_id": "box-1", "replica_max_sessions": 1, **UNLIMITED_RATES}
    async with replicas(redis, worker, worker) as (first, second):
        async with realtime_client(first) as caller:
            await caller.wait_for("session.created")
            status, body = await refusal(second)
            assert (status, body["error"]["code"]) == (503, "at_capacity")
            ready = await wait_for_status(second, "/readyz", 503)
            assert ready.json()["status"] == "at_capacity"
            async with httpx.AsyncClient() as http:
                shared = (await http.get(second + "/healthz")).json()["shared_state"]
            assert shared["replica_sessions"] == shared["global_sessions"] == 1
        await wait_for_status(second, "/readyz", 200)  # the session ended: its slot is free
        async with realtime_client(second) as caller:
            await caller.wait_for("session.created")


async def test_the_global_cap_spans_replicas_and_leaves_them_ready(redis: RedisProcess) -> None:
    capped = {"global_max_sessions": 1, **UNLIMITED_RATES}
    async with replicas(redis, {**capped, "replica_id": "a"}, {**capped, "replica_id": "b"}) as (a, b):
        async with realtime_client(a) as caller:
            await caller.wait_for("session.created")
            status, body = await refusal(b)
            assert (status, body["error"]["code"]) == (503, "global_at_capacity")
            assert "service is at its session limit" in body["error"]["message"]
            async with httpx.AsyncClient() as http:
                assert (await http.get(b + "/readyz")).status_code == 200  # every replica alike


async def test_a_connection_rate_limit_spans_replicas(redis: RedisProcess) -> None:
    limited = {"ip_connections_per_minute": 1, "ip_connection_burst": 2, "key_connections_per_minute": 0}
    async with replicas(redis, {**limited, "replica_id": "a"}, {**limited, "replica_id": "b"}) as (a, b):
        for url in (a, b):
            async with realtime_client(url) as caller:
                await caller.wait_for("session.created")
        status, body = await refusal(a)
        assert (status, body["error"]["code"]) == (429, "ip_rate_limited")


async def test_redis_gone_mid_run_caps_fail_open_secrets_fail_closed(redis: RedisProcess) -> None:
    async with replicas(redis, {"api_keys": [KEY], **UNLIMITED_RATES, "replica_max_sessions": 5}) as (url,):
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient() as http:
            minted = await http.post(url + "/v1/realtime/client_secrets", headers=headers, json={})
        secret = minted.json()["value"]
        async with session(url, additional_headers=headers) as running:
            await running.wait_for("session.created")
            redis.stop()
            # a new session is admitted on the process's own cap (documented fail-open) ...
            async with session(url, additional_headers=headers) as late:
                await late.wait_for("session.created")
            # ... a client secret cannot be checked: a clear 503, not a 401 and not a hang
            protocols = ["realtime", f"openai-insecure-api-key.{secret}"]
            status, body = await asyncio.wait_for(refusal(url, subprotocols=protocols), 10)
            assert (status, body["error"]["code"]) == (503, "shared_state_unavailable")
            async with httpx.AsyncClient() as http:
                minting = await http.post(url + "/v1/realtime/client_secrets", headers=headers, json={})
                assert (minting.status_code, minting.json()["error"]["code"]) == (
                    503,
                    "shared_state_unavailable",
                )
                assert minting.headers["retry-after"] == "5"
                health = (await http.get(url + "/healthz")).json()
                assert health["status"] == "ok" and health["shared_state"] == {"status": "unavailable"}
                assert (await http.get(url + "/readyz")).status_code == 200
                metrics = (await http.get(url + "/metrics", headers=headers)).text
            # the late session and the secret's attempt (slots are claimed before credentials)
            assert re.search(
                r'voxgate_shared_state_failures_total\{operation="session_slot",replica="[^"]+"\} 2\.0',
                metrics,
            )
            assert re.search(
                r'voxgate_shared_state_failures_total\{operation="client_secret",replica="[^"]+"\} 2\.0',
                metrics,
            )
            # the session that was running goes on
            await running.say("hello")
            assert (await running.wait_for("response.done"))["response"]["status"] == "completed"


async def test_redis_gone_with_caps_failing_closed_refuses_new_sessions(redis: RedisProcess) -> None:
    closed = {"redis_session_caps_on_failure": "closed", **UNLIMITED_RATES}
    async with replicas(redis, closed) as (url,):
        redis.stop()
        status, body = await refusal(url)
        assert (status, body["error"]["code"]) == (503, "shared_state_unavailable")
        assert "try again" in body["error"]["message"]


async def test_a_hung_redis_costs_an_upgrade_its_timeout_not_a_hang(redis: RedisProcess) -> None:
    limited = {"ip_connections_per_minute": 60, "ip_connection_burst": 5, "redis_timeout_s": 0.3}
    async with replicas(redis, limited) as (url,):
        redis.pause()
        try:
            # rate limit and slot each time out after 0.3 s; the per-process fallbacks admit
            async with asyncio.timeout(10):
                async with realtime_client(url) as caller:
                    await caller.wait_for("session.created")
        finally:
            redis.resume()
        async with httpx.AsyncClient() as http:  # once Redis answers, the heartbeat counts it
            health = (await http.get(url + "/healthz")).json()
        assert health["shared_state"]["status"] == "ok"


@pytest.mark.slow
async def test_the_sessions_of_a_killed_replica_stop_counting_after_the_slot_ttl(
    redis: RedisProcess, tmp_path: Path
) -> None:
    """A replica process (fake models; `loadtests.redis_cost --serve`) is SIGKILLed with
    sessions open: its slots stop being renewed and leave the counts within the slot TTL."""
    port = free_port()
    env = {
        **os.environ,
        "VOXGATE_REDIS_URL": redis.url,
        "VOXGATE_REPLICA_ID": "doomed",
        "VOXGATE_REDIS_SLOT_TTL_S": "3",
        "VOXGATE_LOG_LEVEL": "warning",
    }
    with (tmp_path / "doomed.log").open("wb") as log:
        doomed = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick
            [sys.executable, "-m", "loadtests.redis_cost", "--serve", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        doomed_url = f"http://127.0.0.1:{port}"
        await wait_for_status(doomed_url, "/healthz", 200, tries=600)
        async with replicas(redis, {"replica_id": "survivor", "redis_slot_ttl_s": 3, **UNLIMITED_RATES}) as (
            survivor,
        ):
            async with realtime_client(doomed_url) as one, realtime_client(doomed_url) as two:
                await one.wait_for("session.created")
                await two.wait_for("session.created")
                async with httpx.AsyncClient() as http:
                    shared = (await http.get(survivor + "/healthz")).json()["shared_state"]
                assert shared["global_sessions"] == 2
                doomed.kill()
                await asyncio.to_thread(doomed.wait, 10)
                async with httpx.AsyncClient() as http:
                    for _ in range(100):  # 3 s TTL after the last renewal (at most 3 s before the kill)
                        shared = (await http.get(survivor + "/healthz")).json()["shared_state"]
                        if shared["global_sessions"] == 0:
                            break
                        await asyncio.sleep(0.1)
                assert shared["global_sessions"] == 0, (tmp_path / "doomed.log").read_text()
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
