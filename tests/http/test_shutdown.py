"""Graceful shutdown: new sessions refused, replies in progress finish, then close 1001.

In-process `GracefulServer` with fake models (named as such), and `voxgate serve` in a
subprocess with the real fast-profile backends stopped by SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from fastapi import FastAPI

from server.aio import cancel_and_wait
from server.http.shutdown import SHUTDOWN_REASON, GracefulServer, app_sessions
from server.model.fakes import FakeAsr, FakeLlm, FakeTts, tone
from tests.conftest import fake_app
from tests.harness import (
    RealtimeTestClient,
    decode_audio_deltas,
    realtime_client,
    running_server,
    server_config,
    serving,
)
from tests.telephony.twilio_caller import twilio_call

REPLY = "One two three. Four five six."  # FakeTts: 50 ms per character, about 1.5 s of audio


@contextlib.asynccontextmanager
async def graceful_server(app: FastAPI, grace_s: float) -> AsyncIterator[tuple[str, GracefulServer]]:
    """Serve `app` with GracefulServer on 127.0.0.1:<free port>; yields the URL and server."""
    server = GracefulServer(server_config(app), app_sessions(app), grace_s)
    async with serving(server, stop_timeout_s=30) as url:
        yield url, server


async def closed(client: RealtimeTestClient, timeout_s: float = 10.0) -> tuple[int | None, str | None]:
    """Wait for the server to close the connection; its close code and reason."""
    await asyncio.wait_for(client.ws.wait_closed(), timeout_s)
    return client.ws.close_code, client.ws.close_reason


async def test_shutdown_lets_the_reply_finish_then_closes_1001() -> None:
    app = fake_app(llm=FakeLlm([REPLY]), tts=FakeTts())
    async with graceful_server(app, grace_s=30) as (url, server):
        async with realtime_client(url) as client:
            await client.wait_for("session.created")
            await client.say("hi")
            await client.wait_for("response.output_audio.delta")
            server.should_exit = True  # what SIGTERM does
            done = await client.wait_for("response.done")
            assert done["response"]["status"] == "completed"
            with pytest.raises(OSError):  # no longer accepting
                async with realtime_client(url):
                    pass
            assert await closed(client) == (1001, SHUTDOWN_REASON)
            audio = decode_audio_deltas(client.of_type("response.output_audio.delta"))
            phrases_ms = (len("One two three.") + len("Four five six.")) * 50  # FakeTts, per phrase
            assert abs(len(audio) / 24 - phrases_ms) <= 25  # the whole reply


async def test_shutdown_lets_a_phone_call_hear_the_reply_then_closes_1001() -> None:
    app = fake_app(FakeAsr(["where is my order"]), FakeLlm([REPLY]), FakeTts())
    async with graceful_server(app, grace_s=30) as (url, server), twilio_call(url) as caller:
        await caller.start({})
        after = len(caller.received)
        await caller.speak(tone(600))
        first = asyncio.ensure_future(caller.wait_for("media", after=after))
        await caller.silence_until(first)
        await first
        server.should_exit = True
        closing = asyncio.ensure_future(caller.wait_closed(timeout_s=30))
        with contextlib.suppress(websockets.ConnectionClosed):  # a phone line sends until closed
            await caller.silence_until(closing, timeout_s=30)
        assert await closing == (1001, SHUTDOWN_REASON)
        sent_ms = sum(len(base64.b64decode(m["media"]["payload"])) for m in caller.of_event("media")) / 8
        phrases_ms = (len("One two three.") + len("Four five six.")) * 50  # FakeTts, per phrase
        assert abs(sent_ms - phrases_ms) <= 25  # the whole reply (mu-law 8 kHz: 8 bytes a ms)
        assert caller.marks and all(mark.played for mark in caller.marks)  # and the phone played it


async def test_idle_session_is_closed_at_once() -> None:
    async with graceful_server(fake_app(), grace_s=60) as (url, server):
        async with realtime_client(url) as client:
            await client.wait_for("session.created")
            server.should_exit = True
            assert await closed(client, timeout_s=10) == (1001, SHUTDOWN_REASON)  # not after the 60 s grace


async def test_reply_longer_than_the_grace_is_cut_with_1001() -> None:
    app = fake_app(llm=FakeLlm(["A very long answer. " * 40]), tts=FakeTts())
    async with graceful_server(app, grace_s=0.5) as (url, server):
        async with realtime_client(url) as client:
            await client.wait_for("session.created")
            await client.say("hi")
            await client.wait_for("response.output_audio.delta")
            server.should_exit = True
            assert await closed(client, timeout_s=15) == (1001, SHUTDOWN_REASON)
            assert client.of_type("response.done") == []  # 40 s of audio: not finished


async def test_upgrade_while_draining_is_refused_with_503() -> None:
    app = fake_app(llm=FakeLlm([REPLY]), tts=FakeTts())
    async with running_server(app) as url, realtime_client(url) as busy:
        await busy.wait_for("session.created")
        await busy.say("hi")
        await busy.wait_for("response.output_audio.delta")
        drain = asyncio.create_task(app.state.runtime.sessions.drain(grace_s=30))
        try:
            await asyncio.sleep(0.05)
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with realtime_client(url):
                    pass
            assert refused.value.response.status_code == 503
            assert b"server shutting down" in refused.value.response.body
            done = await busy.wait_for("response.done")  # the live session still finishes
            assert done["response"]["status"] == "completed"
            assert await closed(busy) == (1001, SHUTDOWN_REASON)
        finally:
            await cancel_and_wait(drain, timeout_s=5)


async def test_readyz_flips_to_503_when_draining_and_at_capacity_while_healthz_stays_200() -> None:
    app = fake_app(llm=FakeLlm([REPLY]), tts=FakeTts(), max_sessions=1)
    async with running_server(app) as url, httpx.AsyncClient() as http:
        ready = await http.get(url + "/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        async with realtime_client(url) as busy:
            await busy.wait_for("session.created")
            full = await http.get(url + "/readyz")
            assert (full.status_code, full.json()["status"]) == (503, "at_capacity")
        for _ in range(100):  # the slot is released as the session's handler returns
            if (await http.get(url + "/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        drain = asyncio.create_task(app.state.runtime.sessions.drain(grace_s=5))
        try:
            await asyncio.sleep(0.05)
            draining = await http.get(url + "/readyz")
            assert (draining.status_code, draining.json()["status"]) == (503, "draining")
            assert (await http.get(url + "/healthz")).status_code == 200  # alive: do not restart it
        finally:
            await cancel_and_wait(drain, timeout_s=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_sigterm_to_voxgate_serve_drains_then_exits(tmp_path: Path) -> None:
    pytest.importorskip("pocketsphinx")
    port = _free_port()
    env = {
        **os.environ,
        "VOXGATE_PORT": str(port),
        "VOXGATE_LLM": "rules",  # the fast profile with a plainly named rule-based responder
        "VOXGATE_VAD": "webrtc",
        "VOXGATE_LOG_LEVEL": "warning",
        "VOXGATE_SHUTDOWN_GRACE_S": "30",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick; it is waited for off the loop
            [sys.executable, "-m", "server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(url + "/healthz")).status_code == 200:
                        break
                assert process.poll() is None, log_path.read_text()
                await asyncio.sleep(0.1)
        async with realtime_client(url, path="/v1/realtime") as client:
            await client.wait_for("session.created", timeout_s=30)
            await client.say("hello, what can you do for me today?")
            await client.wait_for("response.output_audio.delta", timeout_s=60)
            process.send_signal(signal.SIGTERM)
            done = await client.wait_for("response.done", timeout_s=60)
            assert done["response"]["status"] == "completed"
            assert await closed(client, timeout_s=30) == (1001, SHUTDOWN_REASON)
        # uvicorn re-raises the SIGTERM it caught once it has shut down: the exit is by SIGTERM
        assert await asyncio.to_thread(process.wait, 60) in (0, -signal.SIGTERM), log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
