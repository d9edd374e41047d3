"""/v1/twilio end to end: a scripted Twilio over a real websocket, fake models (named as such).

The scripted Twilio (tests/telephony/twilio_caller.py) plays the server's audio at real time
and returns marks as Twilio does, so the played position is what a phone would have played.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from server.audio import PcmFrame
from server.events import (
    AgentEvent,
    AssistantTurn,
    FalseInterruption,
    SessionEnded,
    SessionStarted,
    Truncated,
    TurnLatency,
)
from server.http.app import create_app
from server.model.base import Message, SessionOptions
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts, tone
from server.model.phrases import PhraseSplitter, cut_text_to_fraction
from server.settings import Settings
from server.telephony.twilio_signature import compute_signature
from tests.conftest import fake_app
from tests.harness import running_server
from tests.telephony.twilio_caller import TwilioCaller, twilio_call

LONG_REPLY = (
    "Your order left our warehouse this morning. It should arrive on Thursday. "
    "You will get a text message with the tracking link. Is there anything else?"
)


class RecordingLlm(FakeLlm):
    """FakeLlm that also keeps the session options of each call (instructions, voice)."""

    options: list[SessionOptions]

    def __init__(self, script: list[str]) -> None:
        super().__init__(script)
        self.options = []

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        self.options.append(options)
        async for piece in super().complete(history, options):
            yield piece


async def no_session_left(url: str, baseline_tasks: int) -> None:
    for _ in range(250):
        if len(asyncio.all_tasks()) <= baseline_tasks:
            break
        await asyncio.sleep(0.02)
    names = sorted(t.get_name() for t in asyncio.all_tasks())
    assert len(asyncio.all_tasks()) <= baseline_tasks, names
    async with httpx.AsyncClient() as http:
        assert (await http.get(url + "/healthz")).json()["sessions"] == 0


async def speak_until_reply(caller: TwilioCaller, ms: int = 600) -> dict[str, Any]:
    """Say something, then send silence (as a phone line does) until reply audio arrives."""
    after = len(caller.received)
    await caller.speak(tone(ms))
    first = asyncio.ensure_future(caller.wait_for("media", after=after))
    await caller.silence_until(first)
    return await first


def dominant_hz(samples: np.ndarray[Any, np.dtype[np.int16]], rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate_hz)[int(np.argmax(spectrum))])


async def test_a_whole_call() -> None:
    llm = RecordingLlm(["Your order ships today."])
    app = fake_app(FakeAsr(["where is my order"]), llm)
    async with running_server(app) as url:
        baseline = len(asyncio.all_tasks())
        async with twilio_call(url) as caller:
            await caller.start({"instructions": "Be brief.", "voice": "en-gb", "caller": "+15550100"})
            await speak_until_reply(caller)
            await caller.wait_played_out()

            # every chunk is followed by its mark; the marks count up the item's audio
            kinds = [m["event"] for m in caller.received]
            assert kinds == ["media", "mark"] * (len(kinds) // 2)
            positions = [int(m["mark"]["name"].rpartition("@")[2]) for m in caller.of_event("mark")]
            assert positions == sorted(positions) and positions[0] == 20
            assert all(m["streamSid"] == caller.stream_sid for m in caller.received)
            assert all(mark.played for mark in caller.marks) and len(caller.marks) == len(positions)

            # the reply, as the phone played it: mu-law 8 kHz of FakeTts's 220 Hz tone, whole
            audio = caller.played_audio()
            assert abs(audio.duration_ms - len("Your order ships today.") * 50) <= 25
            assert positions[-1] == int(audio.duration_ms)
            assert abs(dominant_hz(audio.samples, 8000) - 220) < 5
            assert np.sqrt(np.mean(audio.samples.astype(np.float64) ** 2)) > 3000

            assert llm.calls == [[Message("user", "where is my order")]]
            assert llm.options[0].instructions == "Be brief." and llm.options[0].voice == "en-gb"
            assert caller.clears == []

            await caller.stop()
            assert await caller.wait_closed() == (1000, "")
        await no_session_left(url, baseline)


async def test_a_call_greets_the_caller_with_its_greeting_parameter() -> None:
    """A `greeting` <Parameter> is the call's first reply, spoken as it is while the line is
    silent; the language model reads it in the history when the caller answers."""
    greeting = "Thanks for calling Acme."
    llm = RecordingLlm(["Your order ships today."])
    app = fake_app(FakeAsr(["where is my order"]), llm)
    async with running_server(app) as url:
        async with twilio_call(url) as caller:
            await caller.start({"greeting": greeting})
            first = asyncio.ensure_future(caller.wait_for("media"))
            await caller.silence_until(first)  # the caller says nothing
            await caller.wait_played_out()
            assert abs(caller.played_audio().duration_ms - len(greeting) * 50) <= 25  # FakeTts
            await speak_until_reply(caller)
            await caller.wait_played_out()
            await caller.stop()
    assert llm.calls == [[Message("assistant", greeting), Message("user", "where is my order")]]


def kept_text(reply: str, audio_end_ms: int, ms_per_char: float = 50.0) -> str:
    """What CascadeModel keeps of `reply` once truncated at `audio_end_ms`, given FakeTts's
    `ms_per_char` of audio per phrase character (phrases as PhraseSplitter cuts them)."""
    splitter = PhraseSplitter()
    phrases = [p for word in reply.split() for p in splitter.push(word + " ")]
    rest = splitter.flush()
    phrases += [rest] if rest else []
    kept: list[str] = []
    elapsed = 0.0
    for phrase in phrases:
        audio_ms = len(phrase) * ms_per_char
        if elapsed + audio_ms > audio_end_ms:
            partial = cut_text_to_fraction(phrase, (audio_end_ms - elapsed) / audio_ms)
            kept += [partial] if partial else []
            break
        kept.append(phrase)
        elapsed += audio_ms
    return " ".join(kept)


async def test_barge_in_clears_twilio_and_cuts_the_history_to_the_played_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.telephony.twilio")
    llm = FakeLlm([LONG_REPLY, "Okay."])
    cuts: list[Truncated] = []

    async def on_event(event: AgentEvent) -> None:
        if isinstance(event, Truncated):
            cuts.append(event)

    app = fake_app(FakeAsr(["where is my order", "stop please"]), llm, on_event=on_event)
    async with running_server(app) as url:
        baseline = len(asyncio.all_tasks())
        async with twilio_call(url) as caller:
            await caller.start()
            await speak_until_reply(caller)
            for _ in range(30):  # the caller listens for 0.6 s, then talks over the reply
                await caller.speak(tone(20, amplitude=0))
            clear = asyncio.ensure_future(caller.wait_for("clear"))
            await caller.speak(tone(600))
            await caller.silence_until(clear)
            cleared_at = len(caller.received) - 1
            await speak_until_reply(caller, ms=0)  # the second reply ("Okay.") arrives
            await caller.wait_played_out()

            # the server's figure is the last mark the phone returned as played before the
            # clear, bar any still in flight (loopback: a few ms)
            [record] = [r for r in caplog.records if r.getMessage() == "twilio playback cleared"]
            audio_end_ms = int(record.__dict__["audio_end_ms"])
            item_id = str(record.__dict__["item_id"])
            played = [m for m in caller.marks if m.item_id == item_id and m.played]
            dropped = [m for m in caller.marks if m.item_id == item_id and not m.played]
            assert played and dropped
            assert audio_end_ms in [m.position_ms for m in played]
            assert played[-1].position_ms - 100 <= audio_end_ms <= played[-1].position_ms
            assert all(m.position_ms > played[-1].position_ms for m in dropped)
            # ... which is what the phone played: at least the 0.6 s before the interruption (more
            # on a busy machine: detection takes real time), within a chunk
            heard_ms = caller.clears[0].heard_ms
            assert 600 <= heard_ms
            assert audio_end_ms <= heard_ms <= audio_end_ms + 120
            assert caller.clears[0].dropped_ms > 0

            # not one chunk of the interrupted item after the clear
            late = [
                m
                for m in caller.received[cleared_at:]
                if m["event"] == "mark" and m["mark"]["name"].startswith(item_id)
            ]
            assert late == []

            # the assistant's history holds exactly what the caller heard
            assistant = [m for m in llm.calls[1] if m.role == "assistant"]
            assert len(assistant) == 1 and assistant[0].interrupted
            assert assistant[0].text == kept_text(LONG_REPLY, audio_end_ms)
            assert 0 < len(assistant[0].text) < len(LONG_REPLY) / 2
            assert [m.text for m in llm.calls[1] if m.role == "user"] == ["where is my order", "stop please"]

            # embedding code hears the server's estimate first, then the marks' figure
            ours = [c for c in cuts if c.item_id == item_id]
            assert [c.source for c in ours] == ["server", "client"]
            assert ours[-1].heard_ms == audio_end_ms and ours[-1].text == assistant[0].text

            await caller.stop()
            assert await caller.wait_closed() == (1000, "")
        await no_session_left(url, baseline)


async def test_a_backchannel_pauses_the_call_audio_and_it_resumes_with_its_marks_in_order() -> None:
    """Words barge-in on a phone call: "yeah" over the reply pauses it (no clear, nothing
    truncated); it then plays to its end, and the marks Twilio returns count every chunk once."""
    events: list[AgentEvent] = []

    async def on_event(event: AgentEvent) -> None:
        events.append(event)

    app = fake_app(FakeAsr(["where is my order", "yeah"]), FakeLlm([LONG_REPLY]), on_event=on_event)
    async with running_server(app) as url, twilio_call(url) as caller:
        await caller.start()
        await speak_until_reply(caller)
        for _ in range(30):
            await caller.speak(tone(20, amplitude=0))
        await caller.speak(tone(400))
        for _ in range(50):
            await caller.speak(tone(20, amplitude=0))
        await caller.wait_played_out(quiet_s=0.5)
    assert caller.clears == []
    positions = [m.position_ms for m in caller.marks if m.played]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert not any(isinstance(e, Truncated) for e in events)
    assert [e.kind for e in events if isinstance(e, FalseInterruption)] == ["backchannel"]
    turn = next(e for e in events if isinstance(e, AssistantTurn))
    assert (turn.status, turn.interrupted, turn.text) == ("completed", False, LONG_REPLY)


async def test_dtmf_keys_become_a_user_message_and_interrupt_a_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.telephony.twilio")
    llm = FakeLlm([LONG_REPLY, "You pressed one and two.", "Transferring you."])
    app = fake_app(FakeAsr(["hello"]), llm, twilio_dtmf_pause_ms=300)
    async with running_server(app) as url, twilio_call(url) as caller:
        await caller.start()
        await speak_until_reply(caller)  # the long reply is playing ...
        for _ in range(25):
            await caller.speak(tone(20, amplitude=0))
        for digit in "12#":  # ... when the caller presses keys
            await caller.dtmf(digit)
        clear = asyncio.ensure_future(caller.wait_for("clear"))
        await caller.silence_until(clear)
        await caller.wait_played_out()
        assert llm.calls[1][-1] == Message("user", "[DTMF 12#]")
        assert llm.calls[1][-2].role == "assistant" and llm.calls[1][-2].interrupted

        await caller.dtmf("0")  # a lone key is sent after the pause
        after = len(caller.received)
        reply = asyncio.ensure_future(caller.wait_for("media", after=after))
        await caller.silence_until(reply)
        assert llm.calls[2][-1] == Message("user", "[DTMF 0]")
        errors = [
            r.__dict__.get("code")
            for r in caplog.records
            if r.getMessage() == "conversation error on a twilio call"
        ]
        assert errors == []
        await caller.stop()
        assert await caller.wait_closed() == (1000, "")


async def test_dtmf_ignored_when_configured() -> None:
    llm = FakeLlm(["Hi."])
    app = fake_app(FakeAsr(["hello"]), llm, twilio_dtmf="ignore")
    async with running_server(app) as url, twilio_call(url) as caller:
        await caller.start()
        for digit in "1#":
            await caller.dtmf(digit)
        for _ in range(20):
            await caller.speak(tone(20, amplitude=0))
        await caller.stop()
        assert await caller.wait_closed() == (1000, "")
    assert llm.calls == []
    assert caller.of_event("media") == []


async def test_stop_mid_reply_ends_the_session_cleanly() -> None:
    app = fake_app(FakeAsr(["hi"]), FakeLlm([LONG_REPLY]), tts=FakeTts(delay_s=0.001))
    async with running_server(app) as url:
        baseline = len(asyncio.all_tasks())
        async with twilio_call(url) as caller:
            await caller.start()
            await speak_until_reply(caller)
            await caller.stop()
            assert await caller.wait_closed() == (1000, "")
        await no_session_left(url, baseline)


async def test_hang_up_without_stop_ends_the_session_cleanly() -> None:
    app = fake_app(FakeAsr(["hi"]), FakeLlm([LONG_REPLY]))
    async with running_server(app) as url:
        baseline = len(asyncio.all_tasks())
        async with twilio_call(url) as caller:
            await caller.start()
            await speak_until_reply(caller)
        await no_session_left(url, baseline)


def start_with(**changes: Any) -> dict[str, Any]:
    message = TwilioCaller.start_message_for("MZ00000000000000000000000000000001")
    message["start"].update(changes)
    return message


MEDIA_OK = {"event": "media", "streamSid": "MZ00000000000000000000000000000001", "media": {"payload": "//8="}}


@pytest.mark.parametrize(
    ("frames", "code", "reason"),
    [
        ([b"\x00\x01"], 1003, "binary frames"),
        (["start", b"\x00\x01"], 1003, "binary frames"),
        (["{not json"], 1008, "not valid JSON"),
        (['{"no_event": 1}'], 1008, "no string 'event'"),
        (["connected", MEDIA_OK], 1008, "media before start"),
        (["start", {**MEDIA_OK, "media": {"payload": "@@not base64@@"}}], 1008, "base64"),
        (["start", {**MEDIA_OK, "media": {}}], 1008, "media.payload"),
        (["start", {**MEDIA_OK, "streamSid": "MZ-someone-else"}], 1008, "streamSid"),
        (["start", "start"], 1008, "second start"),
        (
            [start_with(mediaFormat={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})],
            1008,
            "media format",
        ),
        (
            ["start", {"event": "dtmf", "streamSid": MEDIA_OK["streamSid"], "dtmf": {"digit": "x"}}],
            1008,
            "not a key",
        ),
        ([start_with(customParameters={"greeting": "Hello. " * 200})], 1008, "greeting"),
        # tolerated: Twilio adds events; a mark we never sent; stop before start
        (["start", {"event": "something-new", "x": 1}, MEDIA_OK, "stop"], 1000, ""),
        (
            ["start", {"event": "mark", "streamSid": MEDIA_OK["streamSid"], "mark": {"name": "x"}}, "stop"],
            1000,
            "",
        ),
        (["connected", "stop"], 1000, ""),
    ],
)
async def test_bad_input_gets_a_clear_close_and_a_clean_end(
    frames: list[dict[str, Any] | str | bytes], code: int, reason: str
) -> None:
    app = fake_app(FakeAsr(["hi"]), FakeLlm(["Hello."]))
    async with running_server(app) as url:
        baseline = len(asyncio.all_tasks())
        async with twilio_call(url) as caller:
            for frame in frames:
                if frame == "start":
                    await caller.send(caller.start_message())
                elif frame == "connected":
                    await caller.connected()
                elif frame == "stop":
                    await caller.stop()
                else:
                    await caller.send(frame)
            got_code, got_reason = await caller.wait_closed()
            assert got_code == code
            assert reason in (got_reason or "")
        await no_session_left(url, baseline)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(url + "/metrics")).text
        if code != 1000:
            assert 'voxgate_errors_total{code="' in metrics


async def test_signature_is_required_when_an_auth_token_is_configured() -> None:
    app = fake_app(twilio_auth_token="test-auth-token")
    async with running_server(app) as url:
        signed_url = url.replace("http://", "wss://") + "/v1/twilio"
        for bad in (
            {},
            {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
            {"X-Twilio-Signature": compute_signature("other", signed_url)},
        ):
            with pytest.raises(websockets.InvalidStatus) as info:
                async with twilio_call(url, headers=bad):
                    pass
            assert info.value.response.status_code == 403

        good = {"X-Twilio-Signature": compute_signature("test-auth-token", signed_url)}
        async with twilio_call(url, headers=good) as caller:
            await caller.start()
            await caller.stop()
            assert await caller.wait_closed() == (1000, "")


async def test_signature_over_the_configured_public_url_behind_a_proxy() -> None:
    public = "wss://voice.example.com/phone/v1/twilio"
    app = fake_app(twilio_auth_token="test-auth-token", twilio_stream_url=public)
    async with running_server(app) as url:
        local = url.replace("http://", "wss://") + "/v1/twilio"
        with pytest.raises(websockets.InvalidStatus):
            async with twilio_call(
                url, headers={"X-Twilio-Signature": compute_signature("test-auth-token", local)}
            ):
                pass
        signature = compute_signature("test-auth-token", public)
        async with twilio_call(url, headers={"X-Twilio-Signature": signature}) as caller:
            await caller.start()
            await caller.stop()
            assert await caller.wait_closed() == (1000, "")


GOFORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw")


@pytest.mark.slow
@pytest.mark.skipif(not GOFORWARD.exists(), reason="needs Debian package pocketsphinx-testdata")
async def test_a_call_with_real_speech_and_real_models() -> None:
    """A human recording ("go forward ten meters") at 8 kHz mu-law through pocketsphinx, the
    rule-based responder and espeak-ng; the reply comes back as mu-law the phone can play."""
    events: list[AgentEvent] = []

    async def on_event(event: AgentEvent) -> None:
        events.append(event)

    speech = PcmFrame.from_bytes(await asyncio.to_thread(GOFORWARD.read_bytes), 16_000)
    app = create_app(Settings(asr="pocketsphinx", llm="rules", tts="espeak", vad="webrtc"), on_event=on_event)
    async with running_server(app) as url, twilio_call(url) as caller:
        await caller.start({"caller": "+15550100"})
        await caller.speak(speech)
        first = asyncio.ensure_future(caller.wait_for("media"))
        await caller.silence_until(first, timeout_s=30)
        await caller.wait_played_out(quiet_s=0.5, timeout_s=30)
        await caller.stop()
        assert await caller.wait_closed() == (1000, "")
    # the rule-based responder repeats what it heard when no rule matches
    [reply] = [e for e in events if isinstance(e, AssistantTurn)]
    assert "forward" in reply.text and reply.status == "completed"
    [started] = [e for e in events if isinstance(e, SessionStarted)]
    assert started.metadata["caller"] == "+15550100" and started.metadata["call_sid"] == caller.call_sid
    assert [e for e in events if isinstance(e, TurnLatency)]
    audio = caller.played_audio()
    assert audio.duration_ms > 300
    assert np.sqrt(np.mean(audio.samples.astype(np.float64) ** 2)) > 300  # speech, not silence


async def test_twilio_hanging_up_right_after_stop_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """Twilio closes its socket right after `stop`, while the session may still be winding
    down (here: an embedding's event handler): no error logged, nothing left running."""

    async def slow_handler(event: AgentEvent) -> None:
        if isinstance(event, SessionEnded):
            await asyncio.sleep(0.2)

    uvicorn_errors = logging.getLogger("uvicorn.error")  # does not propagate to caplog's root handler
    uvicorn_errors.addHandler(caplog.handler)
    model = CascadeModel(FakeAsr(["hi"]), FakeLlm([LONG_REPLY]), FakeTts())
    app = create_app(Settings(), model=model, vad=EnergyClassifierFactory(), on_event=slow_handler)
    try:
        async with running_server(app) as url:
            baseline = len(asyncio.all_tasks())
            async with twilio_call(url) as caller:
                await caller.start()
                await speak_until_reply(caller)
                await caller.stop()
                await caller.ws.close()  # at once, as Twilio does
            await no_session_left(url, baseline)
    finally:
        uvicorn_errors.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
