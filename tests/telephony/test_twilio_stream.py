"""TwilioMediaStream on its own: an in-memory websocket on one side, the test playing the
Conversation on the other (what it reads with receive(), what it sends with send_text())."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.streaming.conversation import TransportClosed
from server.telephony.twilio import TwilioMediaStream, TwilioOptions, call_session

SID = "MZ1"


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


def delta(item_id: str, chunk_ms: int = 20) -> str:
    payload = base64.b64encode(b"\xff" * (8 * chunk_ms)).decode()
    return json.dumps({"type": "response.output_audio.delta", "item_id": item_id, "delta": payload})


def server_event(type_: str, **fields: Any) -> str:
    return json.dumps({"type": type_, **fields})


async def next_event(stream: TwilioMediaStream, timeout_s: float = 2.0) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await asyncio.wait_for(stream.receive(), timeout_s))
    return result


async def mark_back(stream: TwilioMediaStream, ws: MemoryTransport, name: str) -> None:
    """Return a mark, then a media frame so the reader has something to hand on."""
    ws.push({"event": "mark", "streamSid": SID, "mark": {"name": name}})
    ws.push({"event": "media", "streamSid": SID, "media": {"payload": "//8="}})
    assert (await next_event(stream))["type"] == "input_audio_buffer.append"


@pytest.fixture
async def started() -> AsyncIterator[tuple[TwilioMediaStream, MemoryTransport]]:
    ws = MemoryTransport()
    stream = TwilioMediaStream(ws, TwilioOptions(dtmf_pause_ms=50))
    ws.push({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    ws.push(start_frame({"instructions": "Be brief.", "voice": "en-gb"}))
    start = await stream.start()
    assert start.call_sid == "CA1"
    update = await next_event(stream)
    assert update == {"type": "session.update", "session": call_session(start.custom_parameters)}
    await stream.send_text(
        server_event("session.updated", session={"audio": {"output": {"format": {"type": "audio/pcmu"}}}})
    )
    try:
        yield stream, ws
    finally:
        await stream.aclose()


def test_call_session_asks_for_mu_law_server_vad_and_the_callers_parameters() -> None:
    session = call_session({"instructions": "Be brief.", "voice": "en-gb"})
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "en-gb"}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["instructions"] == "Be brief."
    assert "instructions" not in call_session({}) and "voice" not in call_session({})["audio"]["output"]


async def test_each_chunk_goes_out_as_media_then_a_mark(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for _ in range(3):
        await stream.send_text(delta("item_a"))
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
        await stream.send_text(delta("item_a"))
    await mark_back(stream, ws, "item_a@20")
    await mark_back(stream, ws, "item_a@40")
    # the server cancels the response (barge-in), then cuts the item with its own estimate
    await stream.send_text(server_event("response.done", response={"status": "cancelled"}))
    await stream.send_text(server_event("conversation.item.truncated", item_id="item_a", audio_end_ms=95))
    assert ws.events()[-1] == "clear"
    truncate = await next_event(stream)
    assert truncate == {
        "type": "conversation.item.truncate",
        "item_id": "item_a",
        "content_index": 0,
        "audio_end_ms": 40,
    }
    # the cleared marks come back (one may even have played meanwhile): they do not count
    await mark_back(stream, ws, "item_a@60")
    # the server echoes our truncation: no answer, no second clear
    await stream.send_text(server_event("conversation.item.truncated", item_id="item_a", audio_end_ms=40))
    await stream.send_text(server_event("input_audio_buffer.speech_started"))
    assert ws.events().count("clear") == 1
    # a stale chunk of the cleared item is never sent
    sent = len(ws.sent)
    await stream.send_text(delta("item_a"))
    assert len(ws.sent) == sent
    assert stream.violation is None


async def test_speech_while_the_tail_still_plays_at_twilio_clears_it(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    """The reply is over on the server, but Twilio still holds its last chunks."""
    stream, ws = started
    for _ in range(3):
        await stream.send_text(delta("item_a"))
    await mark_back(stream, ws, "item_a@20")
    reader = asyncio.create_task(stream.receive())  # the conversation's reader is waiting
    await asyncio.sleep(0.01)
    await stream.send_text(server_event("input_audio_buffer.speech_started"))
    assert ws.events()[-1] == "clear"
    truncate = json.loads(await asyncio.wait_for(reader, 1))  # woken, not waiting for Twilio
    assert truncate["audio_end_ms"] == 20


async def test_server_estimate_is_corrected_when_everything_played(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for _ in range(2):
        await stream.send_text(delta("item_a"))
    await mark_back(stream, ws, "item_a@20")
    await mark_back(stream, ws, "item_a@40")
    await stream.send_text(server_event("conversation.item.truncated", item_id="item_a", audio_end_ms=25))
    assert "clear" not in ws.events()  # nothing left to clear
    assert (await next_event(stream))["audio_end_ms"] == 40


async def test_dtmf_keys_gather_until_a_pause_or_hash(
    started: tuple[TwilioMediaStream, MemoryTransport],
) -> None:
    stream, ws = started
    for digit in "12":
        ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": digit}})
    item = await next_event(stream)  # after the 50 ms pause
    assert item["type"] == "conversation.item.create"
    assert item["item"]["content"] == [{"type": "input_text", "text": "[DTMF 12]"}]
    assert (await next_event(stream))["type"] == "response.create"
    # a reply is being generated: a key interrupts it first
    await stream.send_text(server_event("response.created", response={"status": "in_progress"}))
    for digit in "9#":
        ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": digit}})
    assert (await next_event(stream))["type"] == "response.cancel"
    # the conversation cancels the reply; the cut reaches it before the key press's message
    await stream.send_text(delta("item_a"))
    await stream.send_text(server_event("response.done", response={"status": "cancelled"}))
    kinds = [(await next_event(stream))["type"] for _ in range(3)]
    assert kinds == ["conversation.item.truncate", "conversation.item.create", "response.create"]


async def test_dtmf_ignored_when_configured() -> None:
    ws = MemoryTransport()
    stream = TwilioMediaStream(ws, TwilioOptions(dtmf="ignore"))
    ws.push(start_frame())
    await stream.start()
    assert (await next_event(stream))["type"] == "session.update"
    ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "1"}})
    ws.push({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "#"}})
    ws.push({"event": "stop", "streamSid": SID})
    with pytest.raises(TransportClosed):
        await next_event(stream)
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
        await next_event(stream)
    assert stream.violation is not None and "streamSid" in str(stream.violation)
    with pytest.raises(TransportClosed):
        await stream.send_text(delta("item_a"))
    with pytest.raises(TransportClosed):
        await stream.receive()
