"""The cascade starts the reply on the recogniser's hypothesis and keeps it only if the final
transcript agrees (server/model/cascade.py, "Anticipation"). Fakes throughout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from server.audio import PcmFrame
from server.model.base import (
    AudioChunk,
    Message,
    ResponseOptions,
    SessionOptions,
    TextDelta,
    Transcript,
    TranscriptionOptions,
)
from server.model.cascade import CascadeModel, CascadeSession
from server.model.fakes import FakeLlm, FakeTts


class ScriptedAsrStream:
    """A fake recogniser: after end_input, yields the scripted partials, then the final."""

    def __init__(self, partials: Sequence[str], final: str) -> None:
        self._partials = list(partials)
        self._final = final
        self._ended = asyncio.Event()
        self.hypothesis = ""
        self.decoded_ms: int | None = None  # a fake: it cannot say

    def push_audio(self, frame: PcmFrame) -> None:
        pass

    def end_input(self) -> None:
        self._ended.set()

    async def _results(self) -> AsyncIterator[Transcript]:
        await self._ended.wait()
        for partial in self._partials:
            yield Transcript(partial, is_final=False)
            await asyncio.sleep(0.01)  # the recogniser works on; the anticipated reply runs
        yield Transcript(self._final, is_final=True)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._results()

    async def aclose(self) -> None:
        self._ended.set()


class ScriptedAsr:
    """A fake: each stream gets the next (partials, final) of the script."""

    sample_rate_hz = 16_000

    def __init__(self, script: Sequence[tuple[Sequence[str], str]]) -> None:
        self._script = list(script)

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> ScriptedAsrStream:
        partials, final = self._script.pop(0)
        return ScriptedAsrStream(partials, final)


class RecordingLlm(FakeLlm):
    """FakeLlm that also counts requests that were closed before their end (cancelled)."""

    cancelled: int = 0

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        finished = False
        try:
            async for piece in super().complete(history, options):
                yield piece
            finished = True
        finally:
            if not finished:
                self.cancelled += 1


async def _turn(session: CascadeSession) -> tuple[str, str]:
    session.push_audio(PcmFrame.silence(200, 16_000))
    final = ""
    async for delta in session.commit_audio():
        if delta.is_final:
            final = delta.text
    reply = ""
    async for event in session.respond(ResponseOptions(with_audio=False)):
        if isinstance(event, TextDelta):
            reply += event.text
    return final, reply


def _session(asr: ScriptedAsr, llm: FakeLlm, *, anticipate: bool = True) -> CascadeSession:
    model = CascadeModel(asr, llm, FakeTts(), anticipate=anticipate)
    return CascadeSession(model, SessionOptions(anticipate_reply=True))


async def test_a_right_guess_is_kept_and_the_model_asked_once() -> None:
    llm = RecordingLlm(["Your order ships today."], delay_s=0.005)
    session = _session(ScriptedAsr([(["where is my order"], "Where is my order")]), llm)
    final, reply = await _turn(session)
    assert final == "Where is my order"
    assert reply == "Your order ships today."
    assert [[m.text for m in call] for call in llm.calls] == [["where is my order"]]
    assert session.timings.anticipated is True
    assert session.timings.llm_first_token_ms is not None
    assert [(m.role, m.text) for m in session.history()] == [
        ("user", "Where is my order"),
        ("assistant", "Your order ships today."),
    ]


async def test_a_wrong_guess_is_discarded_and_the_reply_follows_the_final_transcript() -> None:
    llm = RecordingLlm(["Wrong answer to a guess.", "Right answer."], delay_s=0.005)
    session = _session(ScriptedAsr([(["where is"], "where is my refund")]), llm)
    final, reply = await _turn(session)
    assert final == "where is my refund"
    assert [call[-1].text for call in llm.calls] == ["where is", "where is my refund"]
    assert llm.cancelled == 1
    assert reply == "Right answer."
    assert session.timings.anticipated is False
    assert [m.text for m in session.history() if m.role == "user"] == ["where is my refund"]


async def test_each_new_hypothesis_restarts_the_guess() -> None:
    llm = RecordingLlm(["First.", "Second."], delay_s=0.02)
    session = _session(ScriptedAsr([(["cancel", "cancel my order"], "cancel my order")]), llm)
    _, reply = await _turn(session)
    assert [call[-1].text for call in llm.calls] == ["cancel", "cancel my order"]
    assert reply == "Second."
    assert session.timings.anticipated is True


async def test_no_guess_without_the_model_flag_or_the_session_option() -> None:
    for anticipate, option in ((False, True), (True, False)):
        llm = RecordingLlm(["Hello."])
        model = CascadeModel(ScriptedAsr([(["hi there"], "hi there")]), llm, FakeTts(), anticipate=anticipate)
        session = CascadeSession(model, SessionOptions(anticipate_reply=option))
        await _turn(session)
        assert len(llm.calls) == 1
        assert session.timings.anticipated is None


async def test_a_guess_made_before_a_rollback_is_never_adopted() -> None:
    llm = RecordingLlm(["Guess reply.", "Real reply."], delay_s=0.01)
    asr = ScriptedAsr([(["hello"], "hello"), ([], "hello")])
    session = _session(asr, llm)
    checkpoint = session.checkpoint()
    session.push_audio(PcmFrame.silence(200, 16_000))
    async for _ in session.commit_audio():
        pass
    session.rollback(checkpoint)  # the user went on talking: the turn is undone
    final, reply = await _turn(session)
    assert final == "hello"
    assert reply == "Real reply."
    assert len(llm.calls) == 2


async def test_closing_the_session_cancels_a_pending_guess() -> None:
    llm = RecordingLlm(["A long reply that is never asked for."], delay_s=0.05)
    session = _session(ScriptedAsr([(["hello"], "hello")]), llm)
    session.push_audio(PcmFrame.silence(200, 16_000))
    async for _ in session.commit_audio():
        pass
    await session.aclose()
    assert llm.cancelled == 1
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "cascade-anticipation"]


def test_only_local_models_beside_a_light_recogniser_anticipate() -> None:
    from server.http.app import build_catalog
    from server.model.profiles import ModelCatalog, Profile
    from server.settings import Settings

    provided = {
        ("speech-to-text", "fake-asr"): ScriptedAsr([]),
        ("language model", "gemma"): FakeLlm(),
        ("language model", "hosted"): FakeLlm(),
        ("text-to-speech", "fake-tts"): FakeTts(),
    }
    profiles = {
        "local": Profile("local", "fake-asr", "gemma", "fake-tts"),
        "remote": Profile("remote", "fake-asr", "hosted", "fake-tts"),
    }
    catalog = ModelCatalog(
        profiles,
        "local",
        provided=provided,
        anticipates=lambda p: isinstance(p, Profile) and p.llm == "gemma",
    )
    local, remote = catalog.model("local"), catalog.model("remote")
    assert isinstance(local, CascadeModel) and local.anticipate
    assert isinstance(remote, CascadeModel) and not remote.anticipate
    assert not ModelCatalog(profiles, "local", provided=provided)._anticipates(profiles["local"])

    # the server's rule: the fast profile does, the quality one (Whisper) does not; nothing
    # when turned off or with a brain
    server = build_catalog(Settings())
    assert server._anticipates(server.profiles["fast"])
    assert not server._anticipates(server.profiles["quality"])
    off = build_catalog(Settings(anticipate_replies=False))
    assert not off._anticipates(off.profiles["fast"])
    brain = build_catalog(Settings(), brain=FakeLlm())
    assert not any(brain._anticipates(p) for p in brain.profiles.values())


async def test_a_reply_given_its_words_speaks_them_without_the_model_or_a_guess() -> None:
    """ResponseOptions.say (a session's greeting): the words are the reply's as they are, in
    the session's history for the model's next reply; the model is not asked, and a guess made
    from the caller's words is not taken for it."""
    greeting = "Thank you for calling. How can I help you today?"
    llm = RecordingLlm(["Your order ships today."])
    session = _session(ScriptedAsr([(["where is my order"], "where is my order")]), llm)
    text, audio_ms = "", 0.0
    async for event in session.respond(ResponseOptions(say=greeting)):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, AudioChunk):
            audio_ms += event.frame.duration_ms
    assert text == greeting and audio_ms > 0
    assert llm.calls == [] and session.timings.llm_first_token_ms is None
    _, reply = await _turn(session)
    assert reply == "Your order ships today."
    assert [(m.role, m.text) for m in session.history()] == [
        ("assistant", greeting),
        ("user", "where is my order"),
        ("assistant", "Your order ships today."),
    ]
    # a guess is running from the caller's words: a reply given its words does not adopt it
    asr_session = _session(ScriptedAsr([(["hello"], "hello")]), RecordingLlm(["Hi."], delay_s=0.01))
    asr_session.push_audio(PcmFrame.silence(200, 16_000))
    async for _ in asr_session.commit_audio():
        pass
    said = ""
    async for event in asr_session.respond(ResponseOptions(with_audio=False, say="One moment.")):
        if isinstance(event, TextDelta):
            said += event.text
    assert said == "One moment."
