"""The cascade session decodes the uncommitted input for a listener's words only when asked
(fake recognisers and language model, named as such)."""

from __future__ import annotations

from server.audio import PcmFrame
from server.model.base import HearsListenerWords, SessionOptions
from server.model.cascade import CascadeModel, CascadeSession
from server.model.fakes import FakeAsr, FakeListeningAsr, FakeLlm, FakeTts

FRAME = PcmFrame.silence(20, 16_000)


def session_of(asr: FakeAsr) -> CascadeSession:
    return CascadeSession(CascadeModel(asr, FakeLlm(), FakeTts()), SessionOptions())


async def test_listening_starts_on_request_from_the_inputs_start_and_follows_it() -> None:
    asr = FakeListeningAsr(["bump them"], listener_script=["mm-hmm"])
    session = session_of(asr)
    assert isinstance(session, HearsListenerWords)
    for _ in range(3):
        session.push_audio(FRAME)
    assert session.listener_words_so_far() is None and asr.listener_streams == []  # not asked
    heard = [FRAME] * 3  # what the conversation captured of this input
    assert session.listen_for_listener_words(heard)
    assert session.listen_for_listener_words(heard)  # already listening: the same stream
    (listener,) = asr.listener_streams
    assert listener.pushed_ms == 60  # replayed from the input's start
    session.push_audio(FRAME)
    assert listener.pushed_ms == 80  # ... and fed with it
    assert session.listener_words_so_far() == ("mm-hmm", None)  # the fake places no words
    assert session.words_so_far() == "bump them"  # the turn's words are the general stream's
    await session.aclose()


async def test_clearing_or_committing_the_input_stops_listening() -> None:
    asr = FakeListeningAsr(["thank you", "that is all"], listener_script=["oh"])
    session = session_of(asr)
    session.push_audio(FRAME)
    assert session.listen_for_listener_words([FRAME])
    await session.clear_audio()
    assert session.listener_words_so_far() is None
    session.push_audio(FRAME)
    assert session.listen_for_listener_words([FRAME])
    assert len(asr.listener_streams) == 2  # a new input, a new stream
    finals = [d.text async for d in session.commit_audio() if d.is_final]
    assert finals == ["that is all"]  # the turn's transcript is never the listener's
    assert session.listener_words_so_far() is None
    await session.aclose()


async def test_a_recogniser_without_a_listeners_model_declines() -> None:
    session = session_of(FakeAsr(["hello"]))
    session.push_audio(FRAME)
    assert not session.listen_for_listener_words([FRAME])
    assert session.listener_words_so_far() is None
    await session.aclose()
