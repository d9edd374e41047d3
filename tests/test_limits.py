"""Admission control and session limits through a real uvicorn server and real websockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI, WebSocket
from websockets.exceptions import InvalidStatus

from server.agent import SessionRequest, SessionSetup
from server.http.admission import RefusalReason, Refused
from server.http.app import create_app
from server.http.gate import refuse
from server.http.listener import listening_socket, send_buffer_bytes
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings
from tests.conftest import fake_app
from tests.harness import RealtimeTestClient, realtime_client, running_server

USER_TEXT = {
    "type": "conversation.item.create",
    "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
}


async def health(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(url + "/healthz")).json()
        return body


async def metric(url: str, line_start: str) -> float:
    """The sum of the samples whose line starts with `line_start` once the `replica` label
    every sample carries is taken out."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(url + "/metrics")).text
    lines = [re.sub(r',?replica="[^"]*"', "", line).replace("{}", "") for line in text.splitlines()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(line_start))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    """Poll `check` until it holds; fail after `timeout_s` (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not await check():
        if loop.time() > give_up:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def no_sessions(url: str) -> None:
    async def check() -> bool:
        h = await health(url)
        return bool(h["sessions"] == 0 and h["admitted_sessions"] == 0)

    await eventually(check, "every session and slot released")


async def refused(
    url: str, path: str = "/v1/realtime?model=test", headers: dict[str, str] | None = None
) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            url.replace("http://", "ws://") + path, additional_headers=headers or {}
        ):
            pass
    return info.value


async def reply_completes(client: RealtimeTestClient) -> None:
    start = len(client.events)
    await client.send(USER_TEXT)
    await client.send({"type": "response.create"})
    done = await client.wait_for("response.done", after=start)
    assert done["response"]["status"] == "completed"


async def closed(client: RealtimeTestClient, timeout_s: float = 20.0) -> tuple[int, str]:
    """The code and reason of the server's close frame, once it came."""

    async def check() -> bool:
        return client.ws.protocol.close_rcvd is not None

    await eventually(check, "the server closed the session", timeout_s)
    close = client.ws.protocol.close_rcvd
    assert close is not None
    return close.code, close.reason


# --- admission -------------------------------------------------------------------------------


async def test_over_the_limit_the_upgrade_gets_503_and_existing_sessions_go_on() -> None:
    app = fake_app(max_sessions=2, ip_connections_per_minute=0)
    async with running_server(app) as url, realtime_client(url) as first, realtime_client(url) as second:
        await first.wait_for("session.created")
        await second.wait_for("session.created")
        refusal = await refused(url)
        assert refusal.response.status_code == 503
        assert int(refusal.response.headers["Retry-After"]) >= 1
        body = json.loads(refusal.response.body or b"{}")
        assert body["error"]["code"] == "at_capacity" and "session limit" in body["error"]["message"]
        h = await health(url)
        assert (h["sessions"], h["admitted_sessions"], h["max_sessions"]) == (2, 2, 2)
        for client in (first, second):  # both sessions still work while others are refused
            await reply_completes(client)
        assert await metric(url, 'voxgate_sessions_refused_total{reason="at_capacity"}') == 1


async def test_twilio_calls_count_against_the_same_limit() -> None:
    app = fake_app(max_sessions=1, ip_connections_per_minute=0)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        refusal = await refused(url, "/v1/twilio")
        assert refusal.response.status_code == 503


async def test_the_slot_is_released_after_a_normal_close() -> None:
    app = fake_app(max_sessions=1, ip_connections_per_minute=0)
    async with running_server(app) as url:
        for _ in range(3):  # one at a time: each waits for the previous one's slot
            async with realtime_client(url) as client:
                await client.wait_for("session.created")
            await no_sessions(url)


async def test_the_slot_is_released_when_the_client_vanishes() -> None:
    app = fake_app(max_sessions=1, ip_connections_per_minute=0)
    async with running_server(app) as url:
        ws = await websockets.connect(url.replace("http://", "ws://") + "/v1/realtime?model=test")
        first = RealtimeTestClient(ws)
        await first.wait_for("session.created")
        ws.transport.abort()  # no close handshake: the TCP connection just drops
        await no_sessions(url)
        async with realtime_client(url) as second:
            await second.wait_for("session.created")


async def test_the_slot_is_released_when_the_session_crashes() -> None:
    async def crashing_setup(request: SessionRequest) -> SessionSetup:
        raise RuntimeError("the embedding code's hook failed")

    model = CascadeModel(FakeAsr(), FakeLlm(), FakeTts())
    settings = Settings(max_sessions=1, ip_connections_per_minute=0)
    app = create_app(settings, model=model, vad=EnergyClassifierFactory(), session_setup=crashing_setup)
    async with running_server(app) as url:
        for _ in range(2):  # the second would be refused if the first crash had leaked its slot
            ws = await websockets.connect(url.replace("http://", "ws://") + "/v1/realtime?model=test")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            await no_sessions(url)


async def test_connections_over_the_per_address_rate_get_429() -> None:
    app = fake_app(ip_connections_per_minute=1, ip_connection_burst=2)
    async with running_server(app) as url:
        for _ in range(2):
            async with realtime_client(url) as client:
                await client.wait_for("session.created")
        refusal = await refused(url)
        assert refusal.response.status_code == 429
        assert 1 <= int(refusal.response.headers["Retry-After"]) <= 60
        assert json.loads(refusal.response.body or b"{}")["error"]["code"] == "ip_rate_limited"
        assert await metric(url, 'voxgate_sessions_refused_total{reason="ip_rate_limited"}') == 1


async def test_connections_over_the_per_key_rate_get_429_and_other_keys_pass() -> None:
    app = fake_app(ip_connections_per_minute=0, key_connections_per_minute=1, key_connection_burst=1)
    async with running_server(app) as url:
        async with realtime_client(url, headers={"Authorization": "Bearer key-one"}) as client:
            await client.wait_for("session.created")
        refusal = await refused(url, headers={"Authorization": "Bearer key-one"})
        assert refusal.response.status_code == 429
        assert json.loads(refusal.response.body or b"{}")["error"]["code"] == "key_rate_limited"
        async with realtime_client(url, headers={"Authorization": "Bearer key-two"}) as other:
            await other.wait_for("session.created")


# --- session limits --------------------------------------------------------------------------


async def test_max_duration_warns_then_closes_with_a_reason() -> None:
    app = fake_app(session_max_duration_s=1.5, session_warning_s=1.0)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        warning = await client.wait_for("session.expiring")
        assert 0 <= warning["seconds_left"] <= 1 and isinstance(warning["expires_at"], int)
        assert await closed(client) == (1000, "session max duration reached")
        await no_sessions(url)
        assert await metric(url, 'voxgate_sessions_ended_by_server_total{reason="max_duration"}') == 1


async def test_idle_client_is_closed_and_any_message_keeps_it_open() -> None:
    app = fake_app(idle_timeout_s=2.0)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        for _ in range(10):  # 2.5 s of activity, each message well inside the timeout
            start = len(client.events)
            await client.send({"type": "session.update", "session": {"instructions": "be brief"}})
            await client.wait_for("session.updated", after=start)
            await asyncio.sleep(0.25)
        assert client.ws.protocol.close_rcvd is None
        assert await closed(client) == (1000, "idle timeout: no client message for 2 s")
        assert not client.of_type("session.expiring")


async def test_a_message_over_the_configured_size_closes_with_1009() -> None:
    app = fake_app(max_message_bytes=64 * 1024)  # below the websocket server's own limit
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"instructions": "x" * 60_000}})
        await client.wait_for("session.updated")  # under the limit: fine
        await client.send({"type": "session.update", "session": {"instructions": "x" * 70_000}})
        code, reason = await closed(client)
        assert code == 1009 and "over the 65536-byte limit" in reason
        await no_sessions(url)


# --- a client that stops reading -------------------------------------------------------------


def client_frame(text: str) -> bytes:
    """A masked websocket text frame, as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_close_frame(data: bytes) -> tuple[int, str] | None:
    """The (code, reason) of the close frame among the server's unmasked frames, if there."""
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        if i + n > len(data):
            return None
        if opcode == 0x8:
            return int.from_bytes(data[i : i + 2], "big"), data[i + 2 : i + n].decode()
        i += n
    return None


@contextlib.asynccontextmanager
async def served_like_voxgate_serve(app: FastAPI, max_outbound_buffer_ms: int) -> AsyncIterator[str]:
    """uvicorn on the listening socket `voxgate serve` uses (server/http/listener.py)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    sock = listening_socket(config, max_outbound_buffer_ms)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-uvicorn")
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def test_the_kernel_send_buffer_is_sized_from_the_outbound_bound() -> None:
    assert send_buffer_bytes(2000) == 64_000  # 1 s of 24 kHz audio events: half the bound
    assert send_buffer_bytes(100) == 16 * 1024  # never below a floor


async def test_a_client_that_stops_reading_is_closed_and_costs_bounded_memory() -> None:
    words = "word " * 600  # 3000 characters: 150 s of speech from FakeTts, ~9.6 MB as base64 events
    app = fake_app(llm=FakeLlm([words]), max_outbound_buffer_ms=500)
    loop = asyncio.get_running_loop()
    async with served_like_voxgate_serve(app, 500) as url:
        baseline_tasks = len(asyncio.all_tasks())
        port = int(url.rsplit(":", 1)[1])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            await loop.sock_sendall(
                sock,
                (
                    f"GET /v1/realtime?model=test HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode(),
            )
            received = b""
            while b"\r\n\r\n" not in received:
                received += await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            assert received.startswith(b"HTTP/1.1 101"), received[:100]
            received = received.split(b"\r\n\r\n", 1)[1]
            await loop.sock_sendall(sock, client_frame(json.dumps(USER_TEXT)))
            await loop.sock_sendall(sock, client_frame(json.dumps({"type": "response.create"})))

            # from here on the client reads nothing: the reply's audio backs up, then the
            # server gives up on the session (its slot is held until the close frame is taken
            # or CLOSE_TIMEOUT_S passes)
            async def conversation_ended() -> bool:
                return int((await health(url))["sessions"]) == 0

            await eventually(conversation_ended, "the session ended")
            assert await metric(url, 'voxgate_sessions_ended_by_server_total{reason="slow_consumer"}') == 1
            # now read what was in flight: a bounded amount, then the close frame with its reason
            # (the server waits CLOSE_TIMEOUT_S for the client to take it)
            close = None
            while close is None:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                assert chunk, "connection ended without a close frame"
                received += chunk
                close = server_close_frame(received)

            async def tasks_ended() -> bool:
                return len(asyncio.all_tasks()) <= baseline_tasks

            await eventually(tasks_ended, "the session's tasks ended")
            await no_sessions(url)
        finally:
            sock.close()
    code, reason = close
    assert code == 1008 and "stopped reading" in reason and "500 ms" in reason
    # what the server held for this client (uvicorn's 64 KiB and the kernel's send buffer) is
    # a small part of the reply's 9.6 MB: the rest was never queued
    assert len(received) < 64 * 1024 + 2 * send_buffer_bytes(500) + 64 * 1024, len(received)


@pytest.mark.parametrize(
    ("reason", "code"), [(RefusalReason.AT_CAPACITY, 1013), (RefusalReason.IP_RATE_LIMITED, 1008)]
)
async def test_without_the_denial_extension_a_refusal_is_accept_then_close(
    reason: RefusalReason, code: int
) -> None:
    """An ASGI server that cannot answer an upgrade with HTTP: accept, then close with a reason."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "extensions": {}}
    await refuse(WebSocket(scope, receive, send), Refused(reason, 2.5))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == code and "try again in 3 s" in sent[1]["reason"]
