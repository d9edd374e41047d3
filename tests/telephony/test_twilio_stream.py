"""TwilioMediaStream on its own: an in-memory websocket on one side, the test playing the
Conversation on the other (the commands it reads with receive(), the outputs it sends with
send())."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.audio import AudioFormat, Encoding
from server.streaming.commands import (
    AddUserText,
    AppendAudio,
    CancelResponse,
    Command,
    CreateResponse,
    TruncateItem,
    UpdateSession,
)
from server.streaming.outputs import (
    ItemTruncated,
    ResponseAudio,
    ResponseEnded,
    ResponseStarted,
    SessionUpdated,
    SpeechStarted,
)
from server.streaming.port import TransportClosed
from server.streaming.session_config import SessionConfig
from server.telephony.twilio import ULAW_8K, TwilioMediaStream, TwilioOptions, call_settings

SID = "MZ1"
DEFAULTS = SessionConfig(id="sess_1", model="voxgate-cascade")


class Session:
    """The conversation's settings as the adapter may read them (SessionView)."""

    def __init__(self) -> None:
        self.config = DEFAULTS.copy()

    def server_tool_names(self) -> list[str]:
        return []

    def transcription_languages(self) -> frozenset[str] | None:
        return None


class MemoryTransport:
    """The websocket: the test queues Twilio's frames; what the adapter sends is kept."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    def push(self, message: dict[str, Any] | str | bytes | None) -> None:
        self.inbound.put_nowait(json.dumps(message) if isinstance(message, dict) else message)

    async def receive(self) -> str | bytes:
        message = await self.inbound.get()
        if message is None:
            raise TransportClosed
        return message

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def events(self) -> list[str]:
        return [m["event"] for m in self.sent]


def start_frame(parameters: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "event": "start",
        "streamSid": SID,
        "start": {"streamSid": SID, "callSid": "CA1", "customParameters": parameters or {}},
    }


def delta(item_id: str, chunk_ms: int = 20) -> ResponseAudio:
    return ResponseAudio("resp_1", item_id, b"\xff" * (8 * chunk_ms), chunk_ms)


def ended(status: str) -> ResponseEnded:
    return ResponseEnded("resp_1", "item_a", True, "", status, DEFAULTS)


async def next_command(stream: TwilioMediaStream, timeout_s: float = 2.0) -> Command:
    return await asyncio.wait_for(stream.receive(), timeout_s)


async def mark_back(stream: TwilioMediaStream, ws: MemoryTransport, name: str) -> None:
    """Return a mark, then a media frame so the reader has something to hand on."""
    ws.push({"event": "mark", "streamSid": SID, "mark": {"name": name}})
    ws.push({"event": "media", "streamSid": SID, "media": {"payload": "//8="}})
    assert await next_command(stream) == AppendAudio(b"\xff\xff")


@pytest.fixture
async def started() -> AsyncIterator[tuple[TwilioMediaStream, MemoryTransport]]:
    ws = MemoryTransport()
    stream = TwilioMediaStream(ws, TwilioOptions(dtmf_pause_ms=50))
    session = Session()
    ws.push({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    ws.push(start_frame({"instructions": "Be brief.", "voice": "en-gb"}))
    start = await stream.start()
    assert start.call_sid == "CA1"
    stream.attach(session)
    update = stream.opening_settings()
    assert update == UpdateSession(call_settings(DEFAULTS, start.custom_parameters))
    await stream.send(SessionUpdated(update.config))
    try:
        yield stream, ws
    finally:
        await stream.aclose()


def test_call_settings_ask_for_mu_law_server_vad_and_the_callers_parameters() -> None:
    session = call_settings(DEFAULTS, {"instructions": "Be brief.", "voice": "en-gb"})
    assert session.input_format == ULAW_8K == AudioFormat(Encoding.ULAW, 8000)
    assert (session.output_format, session.voice) == (ULAW_8K, "en-gb")
    assert session.turn_detection is not None and session.turn_detection.type == "server_vad"
    assert session.turn_detection.create_response and session.turn_detection.interrupt_response
    assert session.instructions == "Be brief."
    plain = call_settings(DEFAULTS, {})
    assert (plain.instructions, plain.voice) == (DEFAULTS.instructions, DEFAULTS.voice)
    assert DEFAULTS.input_format.encoding is Encoding.PCM16  # the defaults are not changed


async def test_each_chunk_goes_out_as_media_then_a_mark(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for _ in range(3):
        await stream.send(delta("item_a"))
    assert ws.events() == ["media", "mark"] * 3
    assert [m["mark"]["name"] for m in ws.sent if m["event"] == "mark"] == [
        "item_a@20",
        "item_a@40",
        "item_a@60",
    ]
    assert all(m["streamSid"] == SID for m in ws.sent)


async def test_barge_in_clears_and_truncates_to_the_last_mark_returned_before_the_clear(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for _ in range(5):
        await stream.send(delta("item_a"))
    await mark_back(stream, ws, "item_a@20")
    await mark_back(stream, ws, "item_a@40")
    # the server cancels the response (barge-in), then cuts the item with its own estimate
    await stream.send(ended("cancelled"))
    await stream.send(ItemTruncated("item_a", 95))
    assert ws.events()[-1] == "clear"
    truncate = await next_command(stream)
    assert truncate == TruncateItem("item_a", 0, 40)
    # the cleared marks come back (one may even have played meanwhile): they do not count
    await mark_back(stream, ws, "item_a@60")
    # the server echoes our truncation: no answer, no second clear
    await stream.send(ItemTruncated("item_a", 40))
    await stream.send(SpeechStarted(500, "item_in"))
    assert ws.events().count("clear") == 1
    # a stale chunk of the cleared item is never sent
    sent = len(ws.sent)
    await stream.send(delta("item_a"))
    assert len(ws.sent) == sent
    assert stream.violation is None


async def test_speech_while_the_tail_still_plays_at_twilio_clears_it(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    """The reply is over on the server, but Twilio still holds its last chunks."""
    stream, ws = started
    for _ in range(3):
        await stream.send(delta("item_a"))
    await mark_back(stream, ws, "item_a@20")
    reader = asyncio.create_task(stream.receive())  # the conversation's reader is waiting
    await asyncio.sleep(0.01)
    await stream.send(SpeechStarted(500, "item_in"))
    assert ws.events()[-1] == "clear"
    truncate = await asyncio.wait_for(reader, 1)  # woken, not waiting for Twilio
    assert isinstance(truncate, TruncateItem) and truncate.audio_end_ms == 20


async def test_server_estimate_is_corrected_when_everything_played(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for _ in range(2):
        await stream.send(delta("item_a"))
    await mark_back(stream, ws, "item_a@20")
    await mark_back(stream, ws, "item_a@40")
    await stream.send(ItemTruncated("item_a", 25))
    assert "clear" not in ws.events()  # nothing left to clear
    assert await next_command(stream) == TruncateItem("item_a", 0, 40)


async def test_dtmf_keys_gather_until_a_pause_or_hash(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for digit in "12":
        ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": digit}})
    assert await next_command(stream) == AddUserText("[DTMF 12]")  # after the 50 ms pause
    assert await next_command(stream) == CreateResponse()
    # a reply is being generated: a key interrupts it first
    await stream.send(ResponseStarted("resp_1", "item_a", True, None, DEFAULTS))
    for digit in "9#":
        ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": digit}})
    assert await next_command(stream) == CancelResponse()
    # the conversation cancels the reply; the cut reaches it before the key press's message
    await stream.send(delta("item_a"))
    await stream.send(ended("cancelled"))
    kinds = [type(await next_command(stream)) for _ in range(3)]
    assert kinds == [TruncateItem, AddUserText, CreateResponse]


async def test_dtmf_ignored_when_configured() -> None:
    ws = MemoryTransport()
    stream = TwilioMediaStream(ws, TwilioOptions(dtmf="ignore"))
    ws.push(start_frame())
    await stream.start()
    stream.attach(Session())
    assert isinstance(stream.opening_settings(), UpdateSession)
    ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "1"}})
    ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "#"}})
    ws.push({"event": "stop", "streamSid": SID})
    with pytest.raises(TransportClosed):
        await next_command(stream)
    assert stream.stopped and stream.violation is None
    await stream.aclose()


async def test_no_start_in_time_is_a_violation() -> None:
    ws = MemoryTransport()
    stream = TwilioMediaStream(ws, TwilioOptions(start_timeout_s=0.05))
    ws.push({"event": "connected"})
    with pytest.raises(TransportClosed):
        await stream.start()
    assert stream.violation is not None and stream.violation.code == "start_timeout"
    await stream.aclose()
    assert [t for t in asyncio.all_tasks() if t.get_name() == "twilio-stream-receive"] == []


async def test_after_a_violation_nothing_more_is_read_or_sent(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    ws.push({"event": "media", "streamSid": "MZ-other", "media": {"payload": "//8="}})
    ws.push({"event": "media", "streamSid": SID, "media": {"payload": "//8="}})
    with pytest.raises(TransportClosed):
        await next_command(stream)
    assert stream.violation is not None and "streamSid" in str(stream.violation)
    with pytest.raises(TransportClosed):
        await stream.send(delta("item_a"))
    with pytest.raises(TransportClosed):
        await stream.receive()
