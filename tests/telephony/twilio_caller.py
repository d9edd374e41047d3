"""A scripted Twilio: the other end of a bidirectional Media Stream, over a real websocket.

It sends what Twilio sends (`connected`, `start`, `media` at real time, `dtmf`, `stop`) and
plays what the server sends the way Twilio does: media back to back at real time, each `mark`
returned once the audio queued before it has played, and on `clear` the queued audio dropped
and every pending mark returned at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from server.audio import PcmFrame, resample, ulaw_decode, ulaw_encode

RATE_HZ = 8_000
FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class ReturnedMark:
    name: str
    at_s: float
    played: bool  # False: dropped by a clear

    @property
    def item_id(self) -> str:
        return self.name.rpartition("@")[0]

    @property
    def position_ms(self) -> int:
        return int(self.name.rpartition("@")[2])


@dataclass(slots=True)
class _Queued:
    start_s: float
    end_s: float
    audio: bytes


@dataclass(slots=True)
class Clear:
    at_s: float
    heard_ms: float  # audio played since the previous clear (or the start), partial chunk included
    dropped_ms: float


@dataclass
class TwilioCaller:
    ws: websockets.ClientConnection
    stream_sid: str = "MZ00000000000000000000000000000001"
    call_sid: str = "CA00000000000000000000000000000001"
    received: list[dict[str, Any]] = field(default_factory=list)
    marks: list[ReturnedMark] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
    played: list[bytes] = field(default_factory=list)  # mu-law chunks that played in full
    is_closed: bool = False

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._queue: deque[_Queued] = deque()
        self._pending_marks: deque[tuple[float, str]] = deque()
        self._play_end_s = 0.0
        self._heard_since_clear_ms = 0.0
        self._changed = asyncio.Event()
        self._new_message = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name="twilio-caller-reader")
        self._player = asyncio.create_task(self._play(), name="twilio-caller-player")

    # --- what Twilio sends ---------------------------------------------------------------

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        raw = json.dumps(message) if isinstance(message, dict) else message
        async with self._send_lock:
            await self.ws.send(raw)

    async def connected(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start_message(self, custom_parameters: dict[str, str] | None = None) -> dict[str, Any]:
        return self.start_message_for(self.stream_sid, custom_parameters, self.call_sid)

    @staticmethod
    def start_message_for(
        stream_sid: str, custom_parameters: dict[str, str] | None = None, call_sid: str = "CA1"
    ) -> dict[str, Any]:
        return {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": "AC00000000000000000000000000000001",
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": custom_parameters or {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }

    async def start(self, custom_parameters: dict[str, str] | None = None) -> None:
        await self.connected()
        await self.send(self.start_message(custom_parameters))

    def media_message(self, payload: str) -> dict[str, Any]:
        return {
            "event": "media",
            "sequenceNumber": "3",
            "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload},
        }

    async def speak(self, frame: PcmFrame, realtime: bool = True) -> None:
        """`frame` as mu-law 8 kHz media events, 20 ms each, paced at real time."""
        audio = ulaw_encode(resample(frame, RATE_HZ).samples)
        step = RATE_HZ * FRAME_MS // 1000
        started = self._loop.time()
        for n, i in enumerate(range(0, len(audio), step)):
            await self.send(self.media_message(base64.b64encode(audio[i : i + step]).decode()))
            if realtime:
                await asyncio.sleep(max(0.0, started + (n + 1) * FRAME_MS / 1000 - self._loop.time()))

    async def silence_until(
        self, done: asyncio.Future[Any] | asyncio.Task[Any], timeout_s: float = 10.0
    ) -> None:
        """Send silence at real time (as a phone line does) until `done` is done."""
        deadline = self._loop.time() + timeout_s
        while not done.done():
            if self._loop.time() > deadline:
                raise AssertionError("timed out sending silence")
            await self.speak(PcmFrame.silence(FRAME_MS, RATE_HZ))

    async def dtmf(self, digit: str) -> None:
        await self.send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": "5",
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        await self.send(
            {
                "event": "stop",
                "sequenceNumber": "9",
                "streamSid": self.stream_sid,
                "stop": {"accountSid": "AC00000000000000000000000000000001", "callSid": self.call_sid},
            }
        )

    # --- what the server sends, played like Twilio ------------------------------------------

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                message["_t"] = self._loop.time()
                await self._on_message(message)
                async with self._new_message:
                    self.received.append(message)
                    self._new_message.notify_all()
        except websockets.ConnectionClosed:
            pass
        self.is_closed = True
        async with self._new_message:
            self._new_message.notify_all()

    async def _on_message(self, message: dict[str, Any]) -> None:
        now = self._loop.time()
        match message.get("event"):
            case "media":
                audio = base64.b64decode(message["media"]["payload"])
                start = max(self._play_end_s, now)
                self._play_end_s = start + len(audio) / RATE_HZ
                self._queue.append(_Queued(start, self._play_end_s, audio))
            case "mark":
                self._pending_marks.append((self._play_end_s, message["mark"]["name"]))
                self._changed.set()
            case "clear":
                heard = self._settle(now)
                dropped = sum((q.end_s - max(q.start_s, now)) * 1000 for q in self._queue)
                self._queue.clear()
                self._play_end_s = now
                self.clears.append(Clear(now, heard, dropped))
                pending, self._pending_marks = list(self._pending_marks), deque()
                for _, name in pending:
                    await self._return_mark(name, played=False)
                self._changed.set()

    def _settle(self, now: float) -> float:
        """Move fully played chunks to `played`; returns the ms heard since the last clear,
        counting the chunk playing now in part."""
        while self._queue and self._queue[0].end_s <= now:
            chunk = self._queue.popleft()
            self.played.append(chunk.audio)
            self._heard_since_clear_ms += len(chunk.audio) / RATE_HZ * 1000
        partial = 0.0
        if self._queue and self._queue[0].start_s < now:
            partial = (now - self._queue[0].start_s) * 1000
        heard, self._heard_since_clear_ms = self._heard_since_clear_ms + partial, 0.0
        return heard

    async def _play(self) -> None:
        while True:
            if not self._pending_marks:
                self._changed.clear()
                await self._changed.wait()
                continue
            due, name = self._pending_marks[0]
            delay = due - self._loop.time()
            if delay > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
                continue
            self._pending_marks.popleft()
            await self._return_mark(name, played=True)

    async def _return_mark(self, name: str, played: bool) -> None:
        self.marks.append(ReturnedMark(name, self._loop.time(), played))
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.send(
                {"event": "mark", "sequenceNumber": "7", "streamSid": self.stream_sid, "mark": {"name": name}}
            )

    # --- reading results ---------------------------------------------------------------------

    async def wait_for(self, event: str, timeout_s: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first message of `event` at index >= after."""

        async def find() -> dict[str, Any]:
            async with self._new_message:
                while True:
                    for message in self.received[after:]:
                        if message.get("event") == event:
                            return message
                    if self.is_closed:
                        raise AssertionError(f"connection closed before {event}: {self.close_code}")
                    await self._new_message.wait()

        return await asyncio.wait_for(find(), timeout_s)

    async def wait_closed(self, timeout_s: float = 10.0) -> tuple[int | None, str | None]:
        """The server's close code and reason, once the connection has closed."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        return self.close_code, self.ws.close_reason

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def is_playing(self) -> bool:
        return self._play_end_s > self._loop.time()

    async def wait_played_out(self, quiet_s: float = 0.3, timeout_s: float = 20.0) -> None:
        """Until everything received has played and nothing new came for `quiet_s`."""
        deadline = self._loop.time() + timeout_s
        while self._loop.time() < deadline:
            count = len(self.received)
            await self.speak(PcmFrame.silence(FRAME_MS, RATE_HZ))
            last = self.received[-1]["_t"] if self.received else 0.0
            if not self.is_playing() and count == len(self.received) and self._loop.time() - last >= quiet_s:
                self._settle(self._loop.time())
                return
        raise AssertionError("the reply did not finish playing")

    def of_event(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == event]

    def played_audio(self) -> PcmFrame:
        audio = b"".join(self.played)
        samples = ulaw_decode(audio) if audio else np.zeros(0, dtype=np.int16)
        return PcmFrame(samples, RATE_HZ)

    async def aclose(self) -> None:
        self._player.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._player
        await self.ws.close()
        await asyncio.wait_for(self._reader, 5)


@contextlib.asynccontextmanager
async def twilio_call(
    base_url: str, headers: dict[str, str] | None = None, path: str = "/v1/twilio"
) -> AsyncIterator[TwilioCaller]:
    url = base_url.replace("http://", "ws://") + path
    async with websockets.connect(url, additional_headers=headers or {}, max_size=None) as ws:
        caller = TwilioCaller(ws)
        try:
            yield caller
        finally:
            await caller.aclose()
