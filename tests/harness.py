"""A real uvicorn server on an ephemeral loopback port, and a small realtime test client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import uvicorn
import websockets
from fastapi import FastAPI

from server.audio import PcmFrame
from server.model.fakes import tone


@contextlib.asynccontextmanager
async def running_server(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields 'http://127.0.0.1:PORT'."""
    async with serving(uvicorn.Server(server_config(app))) as url:
        yield url


def server_config(app: FastAPI) -> uvicorn.Config:
    """How the tests serve an app: loopback, a free port, the lifespan run."""
    return uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", ws_max_size=32 * 2**20, lifespan="on"
    )


START_TIMEOUT_S = 60


@contextlib.asynccontextmanager
async def serving(server: uvicorn.Server, stop_timeout_s: float = 10.0) -> AsyncIterator[str]:
    """Run `server` (configured with port 0) until the block ends; yields its http URL."""
    task = asyncio.create_task(server.serve(), name="test-uvicorn")
    try:
        # a model preloaded at startup may take many seconds on a loaded 2-core machine (CI
        # once failed here on a gemma server after the 5 s this waited before)
        for _ in range(START_TIMEOUT_S * 100):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError(f"the test server did not start within {START_TIMEOUT_S} s")
        sockets = [s for srv in server.servers for s in srv.sockets]
        port = sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, stop_timeout_s)


class RealtimeTestClient:
    """Sends events and collects everything the server sends, with timestamps."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name="test-client-reader")
        self.closed: websockets.ConnectionClosed | None = None

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in self.ws:
                event = json.loads(message)
                event["_t"] = loop.time()
                async with self._new:
                    self.events.append(event)
                    self._new.notify_all()
        except websockets.ConnectionClosed as exc:
            self.closed = exc
        async with self._new:
            self._new.notify_all()

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def say(self, text: str) -> None:
        """A user text message, then response.create: a typed turn."""
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        await self.send({"type": "conversation.item.create", "item": item})
        await self.send({"type": "response.create"})

    async def append(self, frame: PcmFrame) -> None:
        await self.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(frame.to_bytes()).decode()}
        )

    async def stream(self, frame: PcmFrame, chunk_ms: int = 20, realtime: bool = True) -> None:
        step = frame.sample_rate_hz * chunk_ms // 1000
        for i in range(0, frame.sample_count, step):
            await self.append(PcmFrame(frame.samples[i : i + step], frame.sample_rate_hz))
            if realtime:
                await asyncio.sleep(chunk_ms / 1000)

    async def speak_tone_turn(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """200 ms of silence, 600 ms of tone ("speech" to the energy VAD), 600 ms of silence,
        at real time; checks that the server heard the speech where it is and returns its
        speech_started and speech_stopped events."""
        await self.stream(PcmFrame.silence(200, 24_000))
        await self.stream(tone(600))
        await self.stream(PcmFrame.silence(600, 24_000))
        started = await self.wait_for("input_audio_buffer.speech_started")
        stopped = await self.wait_for("input_audio_buffer.speech_stopped")
        assert 180 <= started["audio_start_ms"] <= 240, started
        assert 780 <= stopped["audio_end_ms"] <= 820, stopped
        return started, stopped

    async def wait_for(self, type_: str, timeout_s: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first event of `type_` at index >= after."""

        async def find() -> dict[str, Any]:
            async with self._new:
                while True:
                    for event in self.events[after:]:
                        if event["type"] == type_:
                            return event
                    if self.closed is not None:
                        raise AssertionError(f"connection closed before {type_}: {self.closed}")
                    await self._new.wait()

        return await asyncio.wait_for(find(), timeout_s)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def index_of(self, event: dict[str, Any]) -> int:
        return self.events.index(event)

    async def aclose(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, 5)


@contextlib.asynccontextmanager
async def realtime_client(
    base_url: str, headers: dict[str, str] | None = None, path: str = "/v1/realtime?model=test"
) -> AsyncIterator[RealtimeTestClient]:
    url = base_url.replace("http://", "ws://") + path
    async with websockets.connect(url, additional_headers=headers or {}, max_size=None) as ws:
        client = RealtimeTestClient(ws)
        try:
            yield client
        finally:
            await client.aclose()


def decode_audio_deltas(events: list[dict[str, Any]]) -> np.ndarray[Any, np.dtype[np.int16]]:
    chunks = [np.frombuffer(base64.b64decode(e["delta"]), dtype="<i2") for e in events]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
