"""A scripted fake realtime server (named as such) and test clips for the benchmark's tests.

`scripted_server(Script(...))` is a tiny `websockets` server on 127.0.0.1 that plays the
Realtime protocol with known, injected delays, counted from the moment it received the last
voiced input frame (the first one, for speech_started). It detects speech by frame energy
(the test clips are tones and digital silence) and never looks at the client's clock; its
`ServerLog` records what it received and sent, on its own monotonic clock.

Each connection also keeps a `ServerLog` of its own (`ServerLog.connections`, keyed by the
session id it announces, `sess_fake_N`), for tests with concurrent sessions. Faults on demand:
refusing the websocket upgrade (HTTP 503), closing at the end of speech, sending malformed
messages with every reply, stalling in the middle of a reply, never answering.

Timings are checked with `check_timing`: the delay the fake actually realised (its own send
time minus its own receive time) must be within SCHEDULER_SLACK_MS of the script, and the
client's figure within TOLERANCE_MS (30 ms) of that realised delay. On a busy machine a fake
that sleeps 250 ms may wake at 290; the client must then report 290, not 250.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from loadtests.corpus import SAMPLE_RATE_HZ, Utterance, make_utterance
from loadtests.session import SessionOptions

TOLERANCE_MS = 30.0
SCHEDULER_SLACK_MS = 100.0
VOICED_RMS = 500.0


def tone_clip(
    name: str = "tone", lead_ms: int = 200, tone_ms: int = 600, tail_ms: int = 200, reference: str = "hello"
) -> Utterance:
    """Silence, a loud 300 Hz tone, silence: 'speech' from lead_ms to lead_ms + tone_ms."""
    rate = SAMPLE_RATE_HZ
    t = np.arange(tone_ms * rate // 1000) / rate
    samples = np.concatenate(
        (
            np.zeros(lead_ms * rate // 1000),
            np.sin(2 * np.pi * 300 * t) * 8000,
            np.zeros(tail_ms * rate // 1000),
        )
    ).astype(np.int16)
    return make_utterance(name, samples, rate, reference, "synthetic")


# --- the server ------------------------------------------------------------------------


@dataclass
class Script:
    """Delays (ms) after the server received the last voiced frame of a turn (the first one,
    for `started_ms`)."""

    started_ms: float = 60.0
    stopped_ms: float = 150.0
    transcript_ms: float = 200.0
    created_ms: float = 210.0
    first_audio_ms: float = 250.0
    reply_audio_ms: int = 1000  # sent in 20 ms chunks at real time after a burst of `lead_ms`
    lead_ms: int = 100
    pause_after_ms: int | None = None  # stop sending reply audio for `pause_ms` after this much
    pause_ms: int = 0
    barge_in_reaction_ms: float = 120.0  # last chunk this long after the interrupting frame
    transcript: str = "where is my order"
    end_silence_frames: int = 5  # the fake VAD's endpoint: 100 ms of silent frames
    send_session_created: bool = True
    answer_turns: bool = True
    close_at_speech_end: bool = False
    refuse: bool = False  # answer the websocket upgrade with HTTP 503
    malformed: bool = False  # after response.created: non-JSON, an event without type, bad audio
    hang_after_chunks: int | None = None  # stop sending the reply after this many chunks
    first_audio_ms_per_session: float = 0.0  # first audio this much later per open session
    # a server that tells backchannels from interruptions: voice over a reply holds the reply
    # for this long, then it resumes where it paused; that voice is neither a barge-in nor a turn
    backchannel_hold_ms: int | None = None


@dataclass
class ServerLog:
    """What the fake did, on its own monotonic clock."""

    onsets_received: list[float] = field(default_factory=list)
    speech_end_received: list[float] = field(default_factory=list)
    interrupt_received: list[float] = field(default_factory=list)
    endpoint_received: list[float] = field(default_factory=list)  # the frame ending the silence
    sent: list[tuple[float, str]] = field(default_factory=list)  # (after send, event type)
    session_updates: list[dict[str, Any]] = field(default_factory=list)
    connections: dict[str, ServerLog] = field(default_factory=dict)  # by session id
    refused: int = 0
    open_sessions: int = 0

    def sent_times(self, type_: str, after_s: float, before_s: float = float("inf")) -> list[float]:
        return [t for t, kind in self.sent if kind == type_ and after_s <= t < before_s]

    def realized_ms(self, type_: str, turn: int, *, from_onset: bool = False) -> float:
        """When the fake sent the first `type_` of a turn, after its end of speech (or onset)."""
        origins = self.onsets_received if from_onset else self.speech_end_received
        until = (
            self.speech_end_received[turn + 1] if turn + 1 < len(self.speech_end_received) else float("inf")
        )
        return (self.sent_times(type_, origins[turn], until)[0] - origins[turn]) * 1000


def check_timing(measured: float | None, realized: float, scripted: float) -> None:
    assert abs(realized - scripted) <= SCHEDULER_SLACK_MS, (realized, scripted)
    assert measured is not None and abs(measured - realized) <= TOLERANCE_MS, (measured, realized)


class ScriptedConnection:
    def __init__(self, ws: ServerConnection, script: Script, log: ServerLog) -> None:
        self.ws = ws
        self.script = script
        self.shared = log
        self.session_id = f"sess_fake_{len(log.connections) + 1}"
        self.log = ServerLog()  # this connection's
        log.connections[self.session_id] = self.log
        self.frames = 0  # input frames received: the stream clock, 20 ms each
        self.voice_end_ms = 0
        self.in_speech = False
        self.silent_frames = 0
        self.last_voiced_s = 0.0
        self.turns = 0
        self.reply: asyncio.Task[None] | None = None
        self.interrupted_at: float | None = None
        self.held_at: float | None = None  # voice over the reply began (backchannel_hold_ms)
        self.in_overlay = False
        self.tasks: set[asyncio.Task[None]] = set()

    def record(self, name: str, value: Any) -> None:
        """Append to a list of this connection's log and of the shared one."""
        getattr(self.log, name).append(value)
        getattr(self.shared, name).append(value)

    async def send(self, type_: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": type_, "event_id": "evt", **fields}))
        self.record("sent", (time.monotonic(), type_))

    async def run(self) -> None:
        if not self.script.send_session_created:
            await self.ws.wait_closed()
            return
        await self.send("session.created", session={"id": self.session_id, "type": "realtime"})
        self.shared.open_sessions += 1
        try:
            async for message in self.ws:
                t = time.monotonic()
                event = json.loads(message)
                if event["type"] == "session.update":
                    self.record("session_updates", event["session"])
                    await self.send("session.updated", session={"id": self.session_id})
                elif event["type"] == "input_audio_buffer.append":
                    await self.on_frame(base64.b64decode(event["audio"]), t)
        except ConnectionClosed:
            pass
        finally:
            self.shared.open_sessions -= 1
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        return task

    async def announce_start(self, onset_s: float, item_id: str) -> None:
        await self.at(onset_s, self.script.started_ms)
        await self.send("input_audio_buffer.speech_started", audio_start_ms=0, item_id=item_id)

    async def on_frame(self, audio: bytes, t: float) -> None:
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
        voiced = float(np.sqrt(np.mean(samples**2))) > VOICED_RMS
        self.frames += 1
        if voiced:
            if not self.in_speech:
                self.in_speech = True
                replying = self.reply is not None and not self.reply.done()
                if replying and self.script.backchannel_hold_ms is not None:
                    self.held_at, self.in_overlay = t, True
                    self.last_voiced_s = t
                    return
                self.record("onsets_received", t)
                self.spawn(self.announce_start(t, self.item_id))
                if self.reply is not None and not self.reply.done():
                    self.interrupted_at = t
                    self.record("interrupt_received", t)
            self.last_voiced_s = t
            self.voice_end_ms = self.frames * 20
            self.silent_frames = 0
            return
        if not self.in_speech:
            return
        self.silent_frames += 1
        if self.silent_frames < self.script.end_silence_frames:
            return
        self.in_speech = False
        if self.in_overlay:
            self.in_overlay = False
            return
        self.record("speech_end_received", self.last_voiced_s)
        self.record("endpoint_received", t)
        if self.script.close_at_speech_end:
            await self.ws.close(1011, "scripted failure")
            return
        if not self.script.answer_turns:
            return
        self.turns += 1
        if self.reply is not None:
            await self.reply  # the interrupted reply ends itself within the reaction time
        self.reply = self.spawn(self.answer(self.last_voiced_s, self.turns, self.voice_end_ms))

    @property
    def item_id(self) -> str:
        return f"item_{self.turns + 1}"

    async def at(self, origin_s: float, delay_ms: float) -> None:
        await asyncio.sleep(max(0.0, origin_s + delay_ms / 1000 - time.monotonic()))

    async def answer(self, end_s: float, turn: int, audio_end_ms: int) -> None:
        script = self.script
        item = f"item_{turn}"
        response = f"resp_{turn}"
        first_audio_ms = script.first_audio_ms + script.first_audio_ms_per_session * self.shared.open_sessions
        await self.at(end_s, script.stopped_ms)
        await self.send("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item)
        await self.send("input_audio_buffer.committed", item_id=item, previous_item_id=None)
        await self.at(end_s, script.transcript_ms)
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item,
            content_index=0,
            transcript=script.transcript,
        )
        await self.at(end_s, script.created_ms)
        await self.send("response.created", response={"id": response, "status": "in_progress"})
        if script.malformed:
            await self.ws.send("this is not JSON")
            await self.ws.send(json.dumps({"no": "type"}))
            await self.send_chunk(response, item, "not base64!")
        chunk = base64.b64encode(np.full(480, 1000, dtype="<i2").tobytes()).decode()
        self.interrupted_at = None
        await self.at(end_s, first_audio_ms)
        # paced from when the first chunk really went out: a late start must not turn into
        # a catch-up burst, which would give the client more buffer than the script says
        start = time.monotonic()
        lead_frames = script.lead_ms // 20
        for k in range(script.reply_audio_ms // 20):
            if self.held_at is not None and script.backchannel_hold_ms is not None:
                await self.at(self.held_at, script.backchannel_hold_ms)  # hold, then resume here
                self.held_at = None
                start = time.monotonic() - max(0, k - lead_frames) * 0.02
            due = start + max(0, k - lead_frames) * 0.02
            if script.pause_after_ms is not None and k >= script.pause_after_ms // 20:
                due += script.pause_ms / 1000
            if self.interrupted_at is not None:
                stop = self.interrupted_at + script.barge_in_reaction_ms / 1000
                if due >= stop:
                    await self.at(stop, 0)
                    await self.send_chunk(response, item, chunk)
                    await self.send(
                        "response.done",
                        response={
                            "id": response,
                            "status": "cancelled",
                            "status_details": {"type": "cancelled", "reason": "turn_detected"},
                        },
                    )
                    return
            await self.at(due, 0)
            if script.hang_after_chunks is not None and k >= script.hang_after_chunks:
                await asyncio.Event().wait()  # stalled for good
            await self.send_chunk(response, item, chunk)
        await self.send(
            "response.output_audio_transcript.done", response_id=response, item_id=item, transcript="Sure."
        )
        await self.send("response.done", response={"id": response, "status": "completed"})

    async def send_chunk(self, response: str, item: str, chunk: str) -> None:
        await self.send(
            "response.output_audio.delta",
            response_id=response,
            item_id=item,
            output_index=0,
            content_index=0,
            delta=chunk,
        )


@contextlib.asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[tuple[str, ServerLog]]:
    log = ServerLog()

    async def handler(ws: ServerConnection) -> None:
        await ScriptedConnection(ws, script, log).run()

    def refuse(connection: ServerConnection, request: Request) -> Response | None:
        if not script.refuse:
            return None
        log.refused += 1
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "scripted refusal\n")

    async with serve(
        handler, "127.0.0.1", 0, compression=None, close_timeout=1, process_request=refuse
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime", log


def quick_options(url: str, **overrides: Any) -> SessionOptions:
    fields: dict[str, Any] = {
        "url": url,
        "silence_duration_ms": 100,
        "lead_silence_ms": 100,
        "pause_ms": 100,
        "reply_timeout_s": 5.0,
        "transcript_grace_s": 0.5,
        "deadline_s": 20.0,
    }
    fields.update(overrides)
    return SessionOptions(**fields)


AUDIO = "response.output_audio.delta"
TRANSCRIPT = "conversation.item.input_audio_transcription.completed"
