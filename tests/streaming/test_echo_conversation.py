"""The reply's echo in the caller's microphone, through a whole conversation on the virtual
clock: a FAKE caller plays the reply audio as it arrives and its microphone hears it back,
delayed and quieter. Without echo cancellation the reply interrupts itself; with it, the reply
plays to the end. (Fake models, named as such: the reply is a 220 Hz tone.)"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
import pytest

from server.audio import PcmFrame
from server.model.base import TranscriptionOptions, WordSpan
from server.model.fakes import FakeAsr, FakeAsrStream, FakeLlm, tone
from server.streaming.conversation import Conversation
from server.streaming.interruptions import InterruptionPolicy
from server.streaming.outputs import ResponseAudio, ResponseEnded, SpeechStarted
from server.streaming.session_config import ConversationOptions
from tests.streaming.memory_port import MemoryPort
from tests.streaming.test_conversation import LONG_REPLY, converse

RATE = 24_000
FRAME_MS = 20


class EchoingCaller:
    """Plays reply audio back to back as it arrives; the microphone hears it `delay_ms` later
    at `level_db`."""

    def __init__(self, port: MemoryPort, delay_ms: int, level_db: float) -> None:
        self._port = port
        self._delay = RATE * delay_ms // 1000
        self._gain = 10 ** (level_db / 20)
        self._played = np.zeros(RATE * 60, dtype=np.float64)  # what the speaker played, by sample
        self._seen = 0  # outputs of the port already placed on the speaker
        self._play_end = 0
        self._start_s = asyncio.get_running_loop().time()

    @classmethod
    async def asking(cls, port: MemoryPort, delay_ms: int, level_db: float) -> EchoingCaller:
        """A caller who has asked a question (600 ms) and hears the reply's first audio."""
        caller = cls(port, delay_ms, level_db)
        await caller.listen(600, speech=tone(600))
        while not port.all(ResponseAudio):
            await caller.listen(20)
        return caller

    def _place_new_audio(self) -> None:
        for sent in self._port.sent[self._seen :]:
            if isinstance(sent.output, ResponseAudio):
                samples = np.frombuffer(sent.output.audio, dtype="<i2").astype(np.float64)
                arrival = round((sent.at_s - self._start_s) * RATE)
                start = max(arrival, self._play_end)
                self._played[start : start + len(samples)] = samples
                self._play_end = start + len(samples)
        self._seen = len(self._port.sent)

    async def listen(self, ms: int, speech: PcmFrame | None = None) -> None:
        """`ms` of microphone audio at real time: the echo, plus `speech` if given."""
        step = RATE * FRAME_MS // 1000
        for k in range(ms // FRAME_MS):
            await asyncio.sleep(FRAME_MS / 1000)
            self._place_new_audio()
            end = round((asyncio.get_running_loop().time() - self._start_s) * RATE)
            heard_end = max(0, end - self._delay)
            mic = self._played[max(0, heard_end - step) : heard_end] * self._gain
            mic = np.pad(mic, (step - len(mic), 0))
            if speech is not None and k * step < speech.sample_count:
                part = speech.samples[k * step : (k + 1) * step].astype(np.float64)
                mic[: len(part)] += part
            frame = PcmFrame(np.clip(mic, -32768, 32767).astype(np.int16), RATE)
            await self._port.stream(frame)


def run_with_echo(
    echo_cancellation: bool, words: bool = False, echo_gate: bool = False, barge_in: PcmFrame | None = None
) -> tuple[MemoryPort, list[str]]:
    """A question, then the reply's echo at -6 dB, 100 ms late; `barge_in` said over it 1.5 s in."""
    statuses: list[str] = []

    async def script(port: MemoryPort, _: Conversation) -> None:
        caller = await EchoingCaller.asking(port, delay_ms=100, level_db=-6)
        if barge_in is not None:
            await caller.listen(1500)
            await caller.listen(barge_in.sample_count * 1000 // RATE, speech=barge_in)
        while not port.all(ResponseEnded) and caller._play_end < RATE * 30:
            await caller.listen(200)
        await caller.listen(1000)
        statuses.extend(e.status for e in port.all(ResponseEnded))

    options = replace(ConversationOptions(), echo_cancellation=echo_cancellation, echo_gate=echo_gate)
    if words:
        options = replace(options, turn=replace(options.turn, interruption=InterruptionPolicy()))
    port = converse(
        script, FakeAsr(["where is my order", "your order left"]), FakeLlm([LONG_REPLY, "Ok."]), options
    )
    return port, statuses


@pytest.mark.parametrize(
    ("echo_cancellation", "echo_gate", "interrupted"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_the_replys_echo_interrupts_it_only_without_echo_handling(
    echo_cancellation: bool, echo_gate: bool, interrupted: bool
) -> None:
    port, statuses = run_with_echo(echo_cancellation, echo_gate=echo_gate)
    assert statuses[0] == ("cancelled" if interrupted else "completed")
    assert (len(port.all(SpeechStarted)) > 1) is interrupted


def test_behind_the_echo_gate_a_caller_louder_than_the_echo_still_interrupts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="server.streaming.conversation"):
        port, statuses = run_with_echo(False, echo_gate=True, barge_in=tone(800, amplitude=16000))
    assert statuses[0] == "cancelled"
    assert len(port.all(SpeechStarted)) == 2
    # the debug trace of the gate's voiced frames: the echo's under its limit, the caller's over
    traced = [r for r in caplog.records if r.getMessage() == "echo gate frame"]
    masked = [r for r in traced if r.__dict__["masked"]]
    passed = [r for r in traced if not r.__dict__["masked"]]
    assert masked and passed
    assert all(r.__dict__["mic_db"] <= r.__dict__["limit_db"] for r in masked)
    assert all(r.__dict__["mic_db"] > r.__dict__["limit_db"] - 0.1 for r in passed)


def test_without_echo_cancellation_the_echo_guard_keeps_the_reply_in_words_mode() -> None:
    """The recogniser hears the reply's own words ("your order left"): an echo, never an
    interruption; the reply pauses while it rings, and goes on to the end. (What the guard
    cannot do: the echo's tail after the reply has ended is heard as a turn of the caller's;
    only the canceller removes that.)"""
    port, statuses = run_with_echo(echo_cancellation=False, words=True)
    assert statuses[0] == "completed"
    first_reply = port.all(ResponseAudio)[0].response_id
    chunks = [
        s.at_s
        for s in port.sent
        if isinstance(s.output, ResponseAudio) and s.output.response_id == first_reply
    ]
    assert max(b - a for a, b in zip(chunks, chunks[1:], strict=False)) > 0.2  # it paused while its echo rang


@pytest.mark.parametrize(("noise_reduction", "speech_started"), [(None, True), ("far_field", False)])
def test_noise_reduction_keeps_steady_noise_from_passing_for_speech(
    noise_reduction: str | None, speech_started: bool
) -> None:
    """A hum of white noise loud enough for the FAKE energy VAD to call speech: with the
    session's noise reduction on, it is suppressed before the VAD hears it."""
    rng = np.random.default_rng(7)
    noise = PcmFrame(np.clip(rng.normal(0, 900, RATE * 4), -32768, 32767).astype(np.int16), RATE)

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(noise)

    options = replace(ConversationOptions(), noise_reduction=noise_reduction)
    port = converse(script, FakeAsr(["hello"]), FakeLlm(["Hi."]), options)
    assert bool(port.all(SpeechStarted)) is speech_started


def test_a_caller_who_talks_early_over_the_first_reply_is_not_taken_for_its_echo() -> None:
    """No echo path (a headset), the echo gate on, `words` mode: the caller talks 300 ms into
    the session's first reply, for 2.5 s, and the recogniser hears a listener's word. The
    reply pauses and resumes (a backchannel), and the caller, still talking, must still be
    heard: the gate holds the frames of a voice until it is decided, and forgets the caller's,
    so they are not learned as the echo's level (which silenced the caller until the reply
    ended) and the voice, going on, takes the floor."""
    statuses: list[str] = []

    async def script(port: MemoryPort, _: Conversation) -> None:
        caller = await EchoingCaller.asking(port, delay_ms=100, level_db=-80)
        await caller.listen(300)
        # "yeah" (judged a backchannel: the reply resumes), a breath, then the caller goes on
        first, rest = tone(700, amplitude=16000), tone(1800, amplitude=16000)
        speech = np.concatenate([first.samples, np.zeros(RATE * 250 // 1000, np.int16), rest.samples])
        await caller.listen(2750, speech=PcmFrame(speech, RATE))
        while not port.all(ResponseEnded) and caller._play_end < RATE * 30:
            await caller.listen(200)
        statuses.extend(e.status for e in port.all(ResponseEnded))

    options = replace(ConversationOptions(), echo_gate=True)
    options = replace(options, turn=replace(options.turn, interruption=InterruptionPolicy()))
    converse(script, FakeAsr(["where is my order", "yeah"]), FakeLlm([LONG_REPLY, "Ok."]), options)
    assert statuses[0] == "cancelled"


def test_bursts_dismissed_as_noise_do_not_teach_the_gate_the_callers_level() -> None:
    """Over a -20 dB echo, the caller makes a dozen short loud sounds (100 ms each: too short
    to count, dismissed as noise), then talks. Live, such bursts were the caller's sentence
    chopped by the gate; learned as the echo's level, they taught it that the echo was as loud
    as the caller, and the sentence that followed was gated to the end of the reply. A burst
    no words show to be the reply's echo teaches nothing: the caller is heard and interrupts."""
    statuses: list[str] = []

    async def script(port: MemoryPort, _: Conversation) -> None:
        caller = await EchoingCaller.asking(port, delay_ms=100, level_db=-20)
        await caller.listen(1000)
        for _burst in range(12):
            await caller.listen(100, speech=tone(100, amplitude=16000))
            await caller.listen(160)
        await caller.listen(1500, speech=tone(1500, amplitude=4000))  # 6 dB below the reply
        while not port.all(ResponseEnded) and caller._play_end < RATE * 30:
            await caller.listen(200)
        statuses.extend(e.status for e in port.all(ResponseEnded))

    options = replace(ConversationOptions(), echo_gate=True)
    reply = f"{LONG_REPLY} {LONG_REPLY}"  # still playing when the caller talks
    converse(script, FakeAsr(["where is my order", "hmm"]), FakeLlm([reply, "Ok."]), options)
    assert statuses[0] == "cancelled"


def test_a_client_that_stops_sending_while_the_reply_plays_is_heard_when_it_speaks_again() -> None:
    """A half-duplex client (its microphone muted while the reply plays: no echo, and no audio
    at all) asks, waits for the whole reply in silence, then asks again, 8 dB below the reply's
    level. The input's clock stood still while the reply played; read by sample count alone,
    the new question would line up with the reply's start, and the gate, which has learned
    nothing yet, would take it for the reply's echo and never hear it."""

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(PcmFrame.silence(200, RATE))
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)  # the microphone is muted from the reply's start
        await port.wait_until(ResponseEnded)
        await asyncio.sleep(0.5)
        asked = len(port.sent)
        await port.stream(tone(1000, amplitude=3000))
        await port.stream_until(ResponseEnded, after=asked)

    options = replace(ConversationOptions(), echo_gate=True)
    port = converse(
        script, FakeAsr(["where is my order", "and the invoice"]), FakeLlm([LONG_REPLY, "Ok."]), options
    )
    assert len(port.all(SpeechStarted)) == 2
    assert [e.status for e in port.all(ResponseEnded)] == ["completed", "completed"]


class PlacingAsrStream(FakeAsrStream):
    """A FAKE recogniser that places its scripted words (TimesWords) as PocketSphinx placed
    "isa on them" for an "uh-huh" over the echo: the first word in the capture's first 240 ms
    (its padding before the caller's voice: the echo), the others spread over the rest."""

    @property
    def word_spans(self) -> tuple[WordSpan, ...]:
        first, *rest = self.hypothesis.split() or [""]
        if not first:
            return ()
        end_ms = max(int(self.pushed_ms), 400)
        step_ms = (end_ms - 300) // max(1, len(rest))
        spans = [WordSpan(first, 0, 240)]
        spans += [WordSpan(word, 300 + i * step_ms, 300 + (i + 1) * step_ms) for i, word in enumerate(rest)]
        return tuple(spans)


class PlacingAsr(FakeAsr):
    def open_stream(self, transcription: TranscriptionOptions | None = None) -> FakeAsrStream:
        index = min(len(self.streams), len(self.script) - 1)
        stream = PlacingAsrStream(self.script[index], self.delay_s)
        self.streams.append(stream)
        return stream


@pytest.mark.parametrize(("asr_kind", "status"), [(PlacingAsr, "completed"), (FakeAsr, "cancelled")])
def test_words_the_recogniser_made_of_the_echo_do_not_take_the_floor(
    asr_kind: type[FakeAsr], status: str
) -> None:
    """Over a -6 dB echo, behind the echo gate, the caller draws out an "uh-huh" (700 ms,
    voice enough for three words) and the recogniser hears "isa on them": three unclear words,
    an interruption by the count. A recogniser that places its words shows "isa" lying in the
    echo before the caller's voice (the frames the gate masked): the caller said two, and the
    reply goes on."""
    statuses: list[str] = []

    async def script(port: MemoryPort, _: Conversation) -> None:
        caller = await EchoingCaller.asking(port, delay_ms=100, level_db=-6)
        await caller.listen(1500)
        await caller.listen(700, speech=tone(700, amplitude=16000))
        while not port.all(ResponseEnded) and caller._play_end < RATE * 30:
            await caller.listen(200)
        statuses.extend(e.status for e in port.all(ResponseEnded))

    options = replace(ConversationOptions(), echo_gate=True)
    options = replace(options, turn=replace(options.turn, interruption=InterruptionPolicy()))
    asr = asr_kind(["where is my order", "isa on them"])
    converse(script, asr, FakeLlm([LONG_REPLY, "Ok."]), options)
    assert statuses[0] == status


@pytest.mark.parametrize(("level_db", "talks_over"), [(-6.0, False), (-20.0, True)])
def test_the_reply_talks_on_under_a_listeners_okay_only_over_a_quiet_echo(
    level_db: float, talks_over: bool
) -> None:
    """A 700 ms "okay" over the reply's echo: the gate tells the TurnTaker the echo's level as
    it learns it; over a quiet echo the reply talks on under the word, over a loud one (where
    its echo would come back into the capture) it stays paused until the word is judged."""
    sent_under: list[bool] = []

    async def script(port: MemoryPort, conversation: Conversation) -> None:
        caller = await EchoingCaller.asking(port, delay_ms=100, level_db=level_db)
        await caller.listen(1500)
        before = len(port.all(ResponseAudio))
        onset_s = asyncio.get_running_loop().time()
        await caller.listen(300, speech=tone(700, amplitude=16000))
        talk_over_s = onset_s + (InterruptionPolicy().talk_over_after_ms + 60) / 1000
        await caller.listen(400, speech=tone(400, amplitude=16000))
        sent = [s for s in port.sent if isinstance(s.output, ResponseAudio)][before:]
        sent_under.append(any(talk_over_s < s.at_s for s in sent))
        learned_db = conversation._turns._echo_return_db  # white box: what the gate told it
        assert learned_db is not None and abs(learned_db - level_db) <= 3
        while not port.all(ResponseEnded) and caller._play_end < RATE * 30:
            await caller.listen(200)

    options = replace(ConversationOptions(), echo_cancellation=False, echo_gate=True)
    options = replace(options, turn=replace(options.turn, interruption=InterruptionPolicy()))
    converse(script, FakeAsr(["where is my order", "okay"]), FakeLlm([LONG_REPLY]), options)
    assert sent_under == [talks_over]
