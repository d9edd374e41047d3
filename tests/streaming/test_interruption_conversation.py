"""Barge-in decided on words, through a whole conversation on the virtual clock (fake models,
named as such): a backchannel or a cough pauses the reply and it goes on exactly where it
stopped; a real interruption cancels it, and what the caller heard stops at the pause."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest

from server.audio import PcmFrame
from server.errors import BackendError
from server.events import AgentEvent, FalseInterruption, Interrupted
from server.model.base import TranscriptionOptions
from server.model.fakes import FakeAsr, FakeAsrStream, FakeListeningAsr, FakeLlm, tone
from server.privacy import PrivacyOptions
from server.streaming.conversation import Conversation
from server.streaming.interruptions import InterruptionPolicy
from server.streaming.outputs import ItemTruncated, ResponseAudio, ResponseEnded, SpeechStarted
from server.streaming.session_config import ConversationOptions
from tests.streaming.memory_port import MemoryPort, caller_conversation
from tests.streaming.test_conversation import LONG_REPLY, silence
from tests.streaming.virtual_time import run_virtual

POLICY = InterruptionPolicy()
WORDS = ConversationOptions()
WORDS = replace(WORDS, turn=replace(WORDS.turn, interruption=POLICY))
PAUSING = replace(WORDS, turn=replace(WORDS.turn, interruption=replace(POLICY, talk_over_after_ms=0)))


def converse_words(
    script: object, asr: FakeAsr, llm: FakeLlm, options: ConversationOptions = WORDS
) -> tuple[MemoryPort, list[AgentEvent]]:
    events: list[AgentEvent] = []

    async def on_event(event: AgentEvent) -> None:
        events.append(event)

    async def main() -> MemoryPort:
        port = MemoryPort()
        conversation = caller_conversation(port, asr, llm, options=options, on_event=on_event)
        running = asyncio.create_task(conversation.run())
        await asyncio.sleep(0)
        try:
            await script(port, conversation)  # type: ignore[operator]
        finally:
            port.hang_up()
            await asyncio.wait_for(running, 5)
        return port

    return run_virtual(main), events


def interrupting(
    speech_ms: int, times: dict[str, float] | None = None
) -> Callable[[MemoryPort, Conversation], Awaitable[None]]:
    """A question; 800 ms into its reply, `speech_ms` of speech that must cancel the reply;
    then the answer to it. `times` gets the first reply audio's and the speech's start."""
    times = {} if times is None else times

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        first = await port.stream_until(ResponseAudio)
        times["first_audio_s"] = first.at_s
        await port.stream(silence(800))
        times["onset_s"] = asyncio.get_running_loop().time()
        await port.stream(tone(speech_ms))
        cancelled = await port.stream_until(ResponseEnded)
        assert isinstance(cancelled.output, ResponseEnded)
        assert (cancelled.output.status, cancelled.output.reason) == ("cancelled", "turn_detected")
        await port.stream_until(ResponseEnded, after=port.index(cancelled) + 1)

    return script


def reply_audio(port: MemoryPort, response_id: str) -> list[tuple[float, float]]:
    """(sent at, duration ms) of each chunk of the response."""
    return [
        (s.at_s, s.output.duration_ms)
        for s in port.sent
        if isinstance(s.output, ResponseAudio) and s.output.response_id == response_id
    ]


def longest_gap_ms(chunks: list[tuple[float, float]]) -> float:
    return max((b[0] - a[0]) * 1000 for a, b in zip(chunks, chunks[1:], strict=False))


def listened_over(
    listener_ms: int, word: str, options: ConversationOptions, asr: FakeAsr | None = None
) -> tuple[MemoryPort, list[AgentEvent], FakeAsr, dict[str, float]]:
    """A question; 800 ms into its long reply, `listener_ms` of a listener's `word`, which must
    not stop it: checked against the same question's reply undisturbed. Returns the port, the
    events, the recogniser (`asr`: one that hears "where is my order" then `word`) and when
    the word began and ended (`onset_s`, `end_s`)."""
    llm = FakeLlm([LONG_REPLY])
    spoken: dict[str, float] = {}

    async def script(port: MemoryPort, _: Conversation) -> None:
        loop = asyncio.get_running_loop()
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)
        await port.stream(silence(800))
        spoken["onset_s"] = loop.time()
        await port.stream(tone(listener_ms))  # the word, over the reply
        spoken["end_s"] = loop.time()
        done = await port.stream_until(ResponseEnded)
        assert isinstance(done.output, ResponseEnded)
        assert done.output.status == "completed"

    async def undisturbed(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        await port.stream_until(ResponseEnded)

    alone, _ = converse_words(undisturbed, FakeAsr(["where is my order"]), FakeLlm([LONG_REPLY]), options)
    asr = asr or FakeAsr(["where is my order", word])
    port, events = converse_words(script, asr, llm, options)
    # nothing was lost or repeated: the audio sent is the whole reply, once, as without the word
    assert [a.audio for a in port.all(ResponseAudio)] == [a.audio for a in alone.all(ResponseAudio)]
    assert len(llm.calls) == 1  # the word never reached the language model
    assert len(port.all(SpeechStarted)) == 1  # the backchannel was never announced
    assert port.all(ItemTruncated) == []
    assert not any(isinstance(e, Interrupted) for e in events)
    return port, events, asr, spoken


def test_backchannel_pauses_the_reply_and_it_goes_on_where_it_stopped() -> None:
    """With the reply paused until the backchannel is judged (`talk_over_after_ms` 0; talking
    on under it: the next test)."""
    port, events, asr, spoken = listened_over(400, "yeah", PAUSING)
    (response_id,) = {a.response_id for a in port.all(ResponseAudio)}
    # the "yeah"'s capture stayed open for a voice that might continue it, and no longer:
    # padding, the "yeah", its hangover and settling, then rejoin_within_ms (a frame's slack)
    assert asr.streams[1].pushed_ms <= 300 + 400 + 90 + POLICY.settle_ms + POLICY.rejoin_within_ms + 40
    chunks = reply_audio(port, response_id)
    # the pause: nothing sent from pause_after_ms into the overlap until it was judged
    paused = [at for at, _ in chunks if spoken["onset_s"] + 0.2 < at < spoken["end_s"]]
    assert paused == []
    assert longest_gap_ms(chunks) >= 400
    (false,) = [e for e in events if isinstance(e, FalseInterruption)]
    assert (false.kind, false.transcript) == ("backchannel", "yeah")
    # the caller heard silence from when their buffer (<= the playout lead) ran dry to the
    # resumption: the voice's end + settle_ms, at most
    assert 0 < false.silence_ms <= 400 + 90 + POLICY.settle_ms


def test_the_reply_talks_on_under_a_listeners_long_okay() -> None:
    """A 700 ms "okay" (flite kal's): the reply pauses at pause_after_ms, resumes once the voice
    has lasted talk_over_after_ms with a listener's word heard, and plays on under it; the
    backchannel is judged as ever, and the caller heard no silence (the client's buffer
    outlasted the pause)."""
    port, events, _, spoken = listened_over(700, "okay", WORDS)
    (response_id,) = {a.response_id for a in port.all(ResponseAudio)}
    chunks = reply_audio(port, response_id)
    talk_over_s = (POLICY.talk_over_after_ms + 40) / 1000
    under = [at for at, _ in chunks if spoken["onset_s"] + talk_over_s < at < spoken["end_s"]]
    assert under  # sent while the caller's "okay" still sounded
    (false,) = [e for e in events if isinstance(e, FalseInterruption)]
    assert (false.kind, false.transcript) == ("backchannel", "okay")
    assert false.silence_ms == 0  # resumed before the client's buffered lead ran out


def test_the_reply_talks_on_under_a_hum_that_only_the_listeners_recogniser_names() -> None:
    """A 550 ms "mm-hmm" the turn's (fake) recogniser hears as "bump them": a recogniser
    that can decode for a listener's words (a fake one, HearsListeners) is asked to, from the
    overlap's start, and its "mm-hmm" lets the reply talk on under the voice; the overlap is
    judged a backchannel on the turn's words as ever. Without it the reply stays paused."""
    asr = FakeListeningAsr(["where is my order", "bump them"], listener_script=["mm-hmm"])
    port, events, _, spoken = listened_over(550, "bump them", WORDS, asr)
    (listener,) = asr.listener_streams  # one stream, for the one overlap
    assert listener.pushed_ms >= 300 + 550  # from the capture's start: padding, then the hum
    (response_id,) = {a.response_id for a in port.all(ResponseAudio)}
    talk_over_s = (POLICY.talk_over_after_ms + 40) / 1000
    under = [
        at
        for at, _ in reply_audio(port, response_id)
        if spoken["onset_s"] + talk_over_s < at < spoken["end_s"]
    ]
    assert under  # sent while the hum still sounded
    (false,) = [e for e in events if isinstance(e, FalseInterruption)]
    assert (false.kind, false.transcript) == ("backchannel", "bump them")

    port, events, _, spoken = listened_over(550, "bump them", WORDS)  # no listener's recogniser
    (response_id,) = {a.response_id for a in port.all(ResponseAudio)}
    under = [
        at
        for at, _ in reply_audio(port, response_id)
        if spoken["onset_s"] + talk_over_s < at < spoken["end_s"]
    ]
    assert under == []


def test_a_cough_with_no_words_pauses_and_resumes_as_noise() -> None:
    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)
        await port.stream(silence(600))
        await port.stream(tone(200))
        done = await port.stream_until(ResponseEnded)
        assert isinstance(done.output, ResponseEnded) and done.output.status == "completed"

    port, events = converse_words(script, FakeAsr(["where is my order", ""]), FakeLlm([LONG_REPLY]))
    (false,) = [e for e in events if isinstance(e, FalseInterruption)]
    assert false.kind == "noise"
    assert len(port.all(SpeechStarted)) == 1


def test_a_real_interruption_cancels_and_the_caller_heard_up_to_the_pause() -> None:
    llm = FakeLlm([LONG_REPLY, "Of course."])
    times: dict[str, float] = {}

    script = interrupting(900, times)
    port, events = converse_words(script, FakeAsr(["where is my order", "wait I need the blue one"]), llm)
    first_response = port.all(ResponseAudio)[0].response_id
    chunks = reply_audio(port, first_response)
    # the last stale chunk left when the reply paused: pause_after_ms of voice (one 20 ms
    # frame of framing) after the interruption began, never at the cancel
    last_sent_s = chunks[-1][0]
    assert last_sent_s - times["onset_s"] <= (POLICY.pause_after_ms + 40) / 1000
    (truncated,) = port.all(ItemTruncated)
    sent_ms = sum(d for _, d in chunks)
    assert sent_ms - WORDS.playout.lead_ms - 40 <= truncated.audio_end_ms <= sent_ms
    assert [e.heard_ms for e in events if isinstance(e, Interrupted)] == [truncated.audio_end_ms]
    assert not any(isinstance(e, FalseInterruption) for e in events)
    assistant = [m for m in llm.calls[1] if m.role == "assistant"]
    assert assistant[0].interrupted and LONG_REPLY.startswith(assistant[0].text)
    assert [m.text for m in llm.calls[1] if m.role == "user"] == [
        "where is my order",
        "wait I need the blue one",
    ]
    started = port.all(SpeechStarted)
    assert len(started) == 2


def test_voice_mode_cancels_a_backchannel_as_before() -> None:
    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)
        await port.stream(silence(800))
        await port.stream(tone(400))
        ended = await port.stream_until(ResponseEnded)
        assert isinstance(ended.output, ResponseEnded) and ended.output.status == "cancelled"

    converse_words(
        script, FakeAsr(["where is my order", "yeah"]), FakeLlm([LONG_REPLY, "Ok."]), ConversationOptions()
    )


class FailingOnceAsr(FakeAsr):
    """A FAKE recogniser whose first stream fails at the end of its turn, the others not."""

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> FakeAsrStream:
        stream = super().open_stream()
        if len(self.streams) == 1:
            stream._fail_with = BackendError
        return stream


def test_a_reply_that_failed_while_prepared_leaves_no_reply_to_talk_over() -> None:
    """The turn's transcript fails while its reply is prepared (speculation); the reply is
    adopted already finished. The next turn must be a turn, not an overlap of that reply."""
    options = replace(WORDS, turn=replace(WORDS.turn, speculative_silence_ms=0))

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        failed = await port.stream_until(ResponseEnded)
        assert isinstance(failed.output, ResponseEnded) and failed.output.status == "failed"
        await port.stream(silence(300))
        await port.stream(tone(600))
        answered = await port.stream_until(ResponseEnded, after=port.index(failed) + 1)
        assert isinstance(answered.output, ResponseEnded) and answered.output.status == "completed"

    converse_words(script, FailingOnceAsr(["where is my order", "okay"]), FakeLlm(["Hi."]), options)


def test_okay_then_more_words_soon_after_is_one_interruption_from_the_okay() -> None:
    """ "okay ... but where is my order": the "okay" resumes the reply, the words that follow
    within `rejoin_within_ms` pause it at their onset and take the floor, and the turn's audio
    (and so its transcript) starts at the "okay", which the preroll still held."""
    llm = FakeLlm([LONG_REPLY, "Let me check."])
    # the "okay"'s capture: 300 ms of padding, the "okay", 300 ms, then the rest from ~900 ms on
    asr = TimedWordsAsr([[(0, "where is my order")], [(0, "okay"), (950, "okay but where is my order")]])
    times: dict[str, float] = {}

    async def script(port: MemoryPort, _: Conversation) -> None:
        loop = asyncio.get_running_loop()
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)
        await port.stream(silence(800))
        await port.stream(tone(300))  # "okay"
        await port.stream(silence(300))
        times["rejoin_s"] = loop.time()
        await port.stream(tone(900))  # "but where is my order"
        cancelled = await port.stream_until(ResponseEnded)
        assert isinstance(cancelled.output, ResponseEnded)
        assert (cancelled.output.status, cancelled.output.reason) == ("cancelled", "turn_detected")
        await port.stream_until(ResponseEnded, after=port.index(cancelled) + 1)

    port, events = converse_words(script, asr, llm)
    (false,) = [e for e in events if isinstance(e, FalseInterruption)]
    assert false.transcript == "okay"
    first_response = port.all(ResponseAudio)[0].response_id
    # paused as the new voice's onset was heard (vad_min_voiced_ms), not pause_after_ms into it
    last_sent_s = reply_audio(port, first_response)[-1][0]
    onset_ms = WORDS.turn.vad_min_voiced_ms
    assert last_sent_s - times["rejoin_s"] <= (onset_ms + 20) / 1000 < POLICY.pause_after_ms / 1000
    # the interruption's capture is the "okay"'s, kept open: it holds the "okay", the gap and
    # the rest, heard once (no second stream decoding it all again)
    assert len(asr.streams) == 2  # the question's; the "okay" and what followed it
    assert asr.streams[1].pushed_ms >= 300 + 300 + 900
    started = port.all(SpeechStarted)
    assert len(started) == 2
    assert [m.text for m in llm.calls[1] if m.role == "user"][-1] == "okay but where is my order"


class TimedWordsStream(FakeAsrStream):
    """A FAKE recogniser whose words follow the audio pushed: each (pushed_ms, text) step is
    heard once that much audio has been pushed."""

    def __init__(self, steps: list[tuple[int, str]]) -> None:
        super().__init__(steps[0][1], delay_s=0.0)
        self._steps = steps

    def push_audio(self, frame: PcmFrame) -> None:
        self.pushed_ms += frame.duration_ms
        self._text = self.hypothesis = [text for at_ms, text in self._steps if at_ms <= self.pushed_ms][-1]


class TimedWordsAsr(FakeAsr):
    """Each stream's steps are the next of `steps` (the last repeats)."""

    def __init__(self, steps: list[list[tuple[int, str]]]) -> None:
        super().__init__()
        self.steps = steps

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> FakeAsrStream:
        stream = TimedWordsStream(self.steps[min(len(self.streams), len(self.steps) - 1)])
        self.streams.append(stream)
        return stream


class LaggingAsrStream(FakeAsrStream):
    """A FAKE recogniser `lag_ms` of audio behind what it was pushed (a busy machine): its
    words are the scripted ones once it has decoded to the end of the loud audio, else none."""

    def __init__(self, text: str, lag_ms: int) -> None:
        super().__init__(text, delay_s=0.0)
        self._lag_ms = lag_ms
        self._loud_until_ms = 0.0

    def push_audio(self, frame: PcmFrame) -> None:
        self.pushed_ms += frame.duration_ms
        if frame.sample_count and int(np.abs(frame.samples).max()) > 1000:
            self._loud_until_ms = self.pushed_ms
        heard = self._loud_until_ms and self.decoded_ms >= self._loud_until_ms
        self.hypothesis = self._text if heard else ""

    @property
    def decoded_ms(self) -> int:
        return max(0, int(self.pushed_ms) - self._lag_ms)


@dataclass
class LaggingAsr(FakeAsr):
    lag_ms: int = 300

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> FakeAsrStream:
        index = min(len(self.streams), len(self.script) - 1)
        stream = LaggingAsrStream(self.script[index], self.lag_ms)
        self.streams.append(stream)
        return stream


def test_a_short_interruption_waits_for_a_lagging_recogniser_and_takes_the_floor() -> None:
    """ "ten of clubs" in 300 ms over the reply, heard by a recogniser 300 ms behind: judged
    settle_ms after the voice, its words would be none (noise: the reply resumes and the caller
    is never answered). The judgement waits until the words cover the end of the speech."""
    llm = FakeLlm([LONG_REPLY, "Ten of clubs, noted."])
    port, events = converse_words(interrupting(300), LaggingAsr(["where is my order", "ten of clubs"]), llm)
    assert not any(isinstance(e, FalseInterruption) for e in events)
    assert [m.text for m in llm.calls[1] if m.role == "user"] == ["where is my order", "ten of clubs"]


@pytest.mark.parametrize(
    ("privacy", "logged"),
    [
        (PrivacyOptions(), None),  # counts only: what the caller said stays out of the logs
        (PrivacyOptions(log_transcripts=True), "call me on 415 555 0100"),
        (PrivacyOptions(log_transcripts=True, redact_transcripts=True), "call me on [phone]"),
    ],
)
def test_overlap_words_are_logged_only_with_log_transcripts(
    privacy: PrivacyOptions, logged: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The debug line that shows what the rules judged over the reply: an operator asking why a
    reply was cancelled sees the words only where transcripts may be logged, redacted as they
    are."""
    caplog.set_level(logging.DEBUG, logger="server.streaming.conversation")
    asr = FakeAsr(["where is my order", "call me on 415 555 0100", "thanks"])
    converse_words(interrupting(1200), asr, FakeLlm([LONG_REPLY, "Sure."]), replace(WORDS, privacy=privacy))
    lines = [r for r in caplog.records if r.getMessage() == "overlap words"]
    assert lines, "no overlap words were logged"
    assert all(isinstance(getattr(r, "word_count", None), int) for r in lines)
    if logged is None:
        assert not any(hasattr(r, "words") or hasattr(r, "callers_words") for r in lines)
    else:
        assert lines[-1].words == logged  # type: ignore[attr-defined]
        assert lines[-1].callers_words == logged  # type: ignore[attr-defined]
