"""Two replicas behind a real nginx running deploy/nginx/voxgate.conf (issue 16).

The replicas are `python -m loadtests.fake_server` subprocesses: the real gateway with INSTANT
FAKE MODELS (FakeAsr, FakeLlm, FakeTts), each answering every turn with its own name, so a
session's reply says which replica serves it. nginx is Debian's binary (scripts/system-deps.sh)
with the deploy config rendered for the two replicas' addresses (loadtests/balancer.py).

What a client sees when its replica goes away, through nginx:
- SIGKILL: the kernel closes the replica's sockets; nginx sees its upstream connection end and
  closes the client's connection without a websocket close frame (nginx tunnels bytes after
  the upgrade and never writes frames itself), so the client's close code is 1006 (abnormal
  closure, nothing received). It comes at once: nobody waits for a timeout.
- SIGTERM: the replica drains (server/http/shutdown.py) and its close frame, 1001 "server
  shutting down", passes through nginx unchanged, after the reply in progress has finished.
Either way a new session is retried by nginx on the other replica (`proxy_next_upstream error`:
the dead or draining replica refuses the connection) and succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from loadtests.balancer import Nginx, Replica, fake_replica, nginx_balancer, nginx_binary
from server.http.shutdown import SHUTDOWN_REASON
from tests.harness import RealtimeTestClient

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (scripts/system-deps.sh)"),
]

# FakeTts speaks 50 ms a character: about 1.9 s of audio, long enough to SIGTERM mid-reply
REPLIES = {"a": "Replica a here. One two three.", "b": "Replica b here. One two three."}
CLOSE_ABNORMAL = 1006  # no close frame was received (RFC 6455 7.1.5): the connection just ended
CLOSE_GOING_AWAY = 1001


@dataclass(frozen=True, slots=True)
class Stack:
    nginx: Nginx
    replicas: dict[str, Replica]


@contextlib.asynccontextmanager
async def balanced_stack(workdir: Path, grace_s: float = 10.0) -> AsyncIterator[Stack]:
    async with (
        fake_replica(workdir, "a", grace_s=grace_s, reply=REPLIES["a"]) as a,
        fake_replica(workdir, "b", grace_s=grace_s, reply=REPLIES["b"]) as b,
        nginx_balancer(workdir / "nginx", [a.address, b.address]) as nginx,
    ):
        yield Stack(nginx, {"a": a, "b": b})


class Sessions:
    """Realtime sessions opened through nginx, each knowing which replica answered it."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "/v1/realtime?model=test"
        self.open: list[tuple[str, RealtimeTestClient]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Sessions:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, client in self.open:
            with contextlib.suppress(websockets.WebSocketException, OSError, TimeoutError):
                await asyncio.wait_for(client.aclose(), 10)

    async def connect(self) -> tuple[str, RealtimeTestClient]:
        """A new session, with one turn answered: (the replica that answered, the client)."""
        ws = await asyncio.wait_for(websockets.connect(self.url, max_size=None), 10)
        client = RealtimeTestClient(ws)
        await client.wait_for("session.created")
        replica = await turn(client)
        self.open.append((replica, client))
        return replica, client

    async def connect_many(self, count: int) -> list[str]:
        """`count` sessions opened at once; the replica of each."""
        opened = await asyncio.gather(*(self.connect() for _ in range(count)))
        return [replica for replica, _ in opened]

    def on(self, replica: str) -> list[RealtimeTestClient]:
        return [client for name, client in self.open if name == replica]

    async def until_on(self, replica: str, timeout_s: float = 30.0) -> None:
        """Open sessions until one lands on `replica` (least_conn: the emptier one first)."""
        async with asyncio.timeout(timeout_s):
            while not self.on(replica):
                await self.connect()
                if not self.on(replica):
                    await asyncio.sleep(0.5)


async def turn(client: RealtimeTestClient, timeout_s: float = 10.0) -> str:
    """A typed turn, answered in full; the name of the replica that answered it."""
    after = len(client.events)
    await client.say("hello")
    done = await client.wait_for("response.done", timeout_s, after=after)
    assert done["response"]["status"] == "completed", done
    transcript = await client.wait_for("response.output_audio_transcript.done", timeout_s, after=after)
    names = [name for name, reply in REPLIES.items() if transcript["transcript"] == reply]
    assert names, transcript
    return names[0]


async def close_of(client: RealtimeTestClient, timeout_s: float = 10.0) -> tuple[int | None, str | None]:
    """Wait (bounded) for the connection to end; the close code and reason the client got."""
    await asyncio.wait_for(client.ws.wait_closed(), timeout_s)
    return client.ws.close_code, client.ws.close_reason


async def healthz_sessions(replicas: Sequence[Replica]) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        return {r.name: (await http.get(r.url + "/healthz")).json()["sessions"] for r in replicas}


@contextlib.asynccontextmanager
async def header_recorder() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A bare HTTP upstream (not Voxgate) on a free loopback port that records each request's
    headers (names lowercased) and answers 200; yields its address and the records."""
    records: list[dict[str, str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin1").split("\r\n")[1:]
        records.append(
            {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        )
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"127.0.0.1:{port}", records
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def test_nginx_passes_the_upgrade_and_who_the_client_is(tmp_path: Path) -> None:
    async with (
        header_recorder() as (address, records),
        nginx_balancer(tmp_path, [address]) as nginx,
        httpx.AsyncClient(timeout=5, trust_env=False) as http,
    ):
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "X-Forwarded-For": "203.0.113.7"}
        assert (await http.get(nginx.url + "/v1/realtime", headers=upgrade)).text == "ok"
        assert (await http.get(nginx.url + "/healthz")).text == "ok"
    websocket, plain = records
    assert (websocket["upgrade"], websocket["connection"]) == ("websocket", "upgrade")
    assert plain["connection"] == "close" and "upgrade" not in plain
    # uvicorn reads the client from the right of X-Forwarded-For, skipping trusted proxies
    # (FORWARDED_ALLOW_IPS): here nginx's view of the client, 127.0.0.1, is the last entry
    assert websocket["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert websocket["x-real-ip"] == "127.0.0.1"
    assert websocket["x-forwarded-proto"] == "http"
    assert websocket["host"] == nginx.url.removeprefix("http://").split(":")[0]


async def test_sessions_spread_across_both_replicas(tmp_path: Path) -> None:
    async with balanced_stack(tmp_path) as stack, Sessions(stack.nginx.url) as sessions:
        await sessions.connect_many(6)
        counts = await healthz_sessions(list(stack.replicas.values()))
        assert counts["a"] > 0 and counts["b"] > 0, counts
        assert sum(counts.values()) == 6
        # the replies say the same: least_conn alternates sessions opened one after another
        assert {name: len(sessions.on(name)) for name in ("a", "b")} == counts == {"a": 3, "b": 3}


async def test_a_killed_replica_ends_its_sessions_at_once_and_the_other_serves_on(tmp_path: Path) -> None:
    async with balanced_stack(tmp_path) as stack, Sessions(stack.nginx.url) as sessions:
        await sessions.connect_many(6)
        killed, survivors = sessions.on("a"), sessions.on("b")
        assert len(killed) == 3 and len(survivors) == 3
        assert await stack.replicas["a"].kill() == -signal.SIGKILL
        loop = asyncio.get_running_loop()
        killed_at_s = loop.time()
        for client in killed:
            code, _ = await close_of(client, timeout_s=5)  # not nginx's 3700 s read timeout
            assert code == CLOSE_ABNORMAL  # nginx closes the TCP connection; no close frame
            assert client.ws.protocol.close_rcvd is None
        assert loop.time() - killed_at_s < 2.0  # promptly: the kill, not a timeout, ended them
        assert await asyncio.gather(*(turn(client) for client in survivors)) == ["b"] * 3
        # new sessions: a's refused connects are retried on b by nginx, unseen by the clients
        assert await sessions.connect_many(4) == ["b"] * 4
        assert (await healthz_sessions([stack.replicas["b"]]))["b"] == 7


async def test_a_terminated_replica_finishes_the_reply_then_closes_1001_through_nginx(tmp_path: Path) -> None:
    async with balanced_stack(tmp_path) as stack, Sessions(stack.nginx.url) as sessions:
        await sessions.connect_many(4)
        replying, idle = sessions.on("a")
        after = len(replying.events)
        await replying.say("tell me more")
        await replying.wait_for("response.output_audio.delta", after=after)
        terminated = asyncio.create_task(stack.replicas["a"].terminate())
        try:
            assert await close_of(idle) == (CLOSE_GOING_AWAY, SHUTDOWN_REASON)  # idle: at once
            assert not replying.ws.close_code  # mid-reply: still open
            assert await sessions.connect_many(3) == ["b"] * 3  # a drains: new sessions go to b
            done = await replying.wait_for("response.done", after=after)
            assert done["response"]["status"] == "completed"
            assert await close_of(replying) == (CLOSE_GOING_AWAY, SHUTDOWN_REASON)
            assert await asyncio.wait_for(terminated, 20) in (0, -signal.SIGTERM)
        finally:
            await asyncio.wait_for(terminated, 20)
        assert await asyncio.gather(*(turn(client) for client in sessions.on("b"))) == ["b"] * 5


async def test_rolling_restart_drops_only_the_restarted_replicas_sessions(tmp_path: Path) -> None:
    """The restart procedure of deploy/README.md: one replica at a time, the next once the
    first is ready. nginx retries a refused connect on the other replica (`max_fails=0`): with
    passive health checks (max_fails=2 fail_timeout=10s) the replica restarted first stayed
    "failed" while its new sessions lasted (a websocket counts as a success only when it
    closes), and restarting the second left none to take new sessions (two 502s at once)."""
    async with balanced_stack(tmp_path, grace_s=5) as stack, Sessions(stack.nginx.url) as sessions:
        await sessions.connect_many(6)
        for name, other in (("a", "b"), ("b", "a")):
            await sessions.until_on(name)
            await sessions.until_on(other)
            restarted, kept = sessions.on(name), sessions.on(other)
            assert restarted and kept
            restarting = asyncio.create_task(stack.replicas[name].restart())  # SIGTERM, start, ready
            opened_meanwhile = 0
            try:
                for client in restarted:
                    assert await close_of(client, timeout_s=15) == (CLOSE_GOING_AWAY, SHUTDOWN_REASON)
                while not restarting.done():  # clients keep arriving: each one is served
                    try:
                        await sessions.connect()
                    except websockets.InvalidStatus as exc:
                        raise AssertionError("a new session was refused during a restart") from exc
                    opened_meanwhile += 1
            finally:
                await asyncio.wait_for(restarting, 90)
            assert opened_meanwhile > 0
            assert all(client.ws.close_code is None for client in kept)  # nothing else was dropped
            assert await asyncio.gather(*(turn(client) for client in kept)) == [other] * len(kept)
            sessions.open = [(n, c) for n, c in sessions.open if c.ws.close_code is None]
            await sessions.connect_many(len(restarted))  # the dropped clients reconnect
        counts = await healthz_sessions(list(stack.replicas.values()))
        assert sum(counts.values()) == len(sessions.open)
