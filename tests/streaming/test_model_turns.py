"""TurnTaker timelines when the model detects the turns (the upstream's VAD): its speech
signals in, the same announcements out. No loop, no clock."""

from __future__ import annotations

import pytest

from server.errors import TurnStateError
from server.streaming.turns import (
    AnnounceSpeechStarted,
    AnnounceSpeechStopped,
    CancelReply,
    CommitTurn,
    FrameClassified,
    InputCleared,
    ModelSpeechStarted,
    ModelSpeechStopped,
    ReplyFinished,
    ReplyStarted,
    ReportIdle,
    StartReply,
    Tick,
    TurnOptions,
    TurnTaker,
    UserState,
)

MODEL = TurnOptions(model_detects_turns=True, idle_timeout_ms=5000)


def state(taker: TurnTaker) -> UserState:
    return taker.state


def test_the_models_speech_signals_make_one_turn_with_its_times() -> None:
    taker = TurnTaker(MODEL)
    taker.receive(ModelSpeechStarted(1200), now_ms=1500)
    assert taker.actions() == [AnnounceSpeechStarted(audio_start_ms=1200)]
    assert state(taker) is UserState.USER_SPEAKING
    assert taker.next_deadline() is None  # the model, not a silence of ours, ends the turn
    taker.receive(ModelSpeechStopped(2600), now_ms=3200)
    assert taker.actions() == [
        AnnounceSpeechStopped(audio_end_ms=2600),
        CommitTurn(audio_end_ms=2600),
        StartReply(),
    ]
    assert state(taker) is UserState.LISTENING


def test_without_create_response_the_turn_is_committed_but_not_answered() -> None:
    taker = TurnTaker(TurnOptions(model_detects_turns=True, create_response=False))
    taker.receive(ModelSpeechStarted(0), now_ms=300)
    taker.receive(ModelSpeechStopped(900), now_ms=1500)
    assert [type(a) for a in taker.actions()] == [AnnounceSpeechStarted, AnnounceSpeechStopped, CommitTurn]


def test_speech_the_model_hears_over_a_reply_cancels_it_at_once() -> None:
    """The model's VAD has judged the speech already: no pause, no overlap judging here."""
    taker = TurnTaker(MODEL)
    taker.receive(ReplyStarted(7), now_ms=0)
    taker.receive(ModelSpeechStarted(400), now_ms=700)
    assert taker.actions() == [
        CancelReply(7, reason="turn_detected"),
        AnnounceSpeechStarted(audio_start_ms=400),
    ]
    assert taker.active_reply is None


def test_with_interrupt_response_false_the_reply_plays_on() -> None:
    taker = TurnTaker(TurnOptions(model_detects_turns=True, interrupt_response=False))
    taker.receive(ReplyStarted(7), now_ms=0)
    taker.receive(ModelSpeechStarted(400), now_ms=700)
    assert taker.actions() == [AnnounceSpeechStarted(audio_start_ms=400)]
    assert taker.active_reply == 7


def test_repeated_and_stray_signals_are_ignored() -> None:
    """A reconnected upstream hears the replayed turn again (a second start); a stop whose
    start the client cleared, or that came before we listened, makes no turn."""
    taker = TurnTaker(MODEL)
    taker.receive(ModelSpeechStopped(100), now_ms=200)
    assert taker.actions() == []
    taker.receive(ModelSpeechStarted(300), now_ms=500)
    taker.receive(ModelSpeechStarted(310), now_ms=900)
    assert taker.actions() == [AnnounceSpeechStarted(audio_start_ms=300)]
    taker.receive(InputCleared(), now_ms=1000)
    taker.receive(ModelSpeechStopped(1100), now_ms=1400)
    assert taker.actions() == []
    assert state(taker) is UserState.LISTENING


def test_a_stop_before_its_start_is_clamped_to_the_start() -> None:
    taker = TurnTaker(MODEL)
    taker.receive(ModelSpeechStarted(800), now_ms=900)
    taker.receive(ModelSpeechStopped(700), now_ms=1000)
    assert CommitTurn(audio_end_ms=800) in taker.actions()


def test_idle_timeout_still_counts_from_the_end_of_the_reply() -> None:
    taker = TurnTaker(MODEL)
    taker.receive(ReplyStarted(1), now_ms=0)
    taker.receive(ReplyFinished(1), now_ms=2000)
    assert taker.next_deadline() == 7000
    taker.receive(Tick(), now_ms=7000)
    assert taker.actions() == [ReportIdle(audio_ms=7000)]
    # the caller's speech resets it
    taker.receive(ReplyStarted(2), now_ms=8000)
    taker.receive(ReplyFinished(2), now_ms=9000)
    taker.receive(ModelSpeechStarted(9500), now_ms=9800)
    assert taker.next_deadline() is None


def test_frames_are_a_bug_in_model_mode_and_signals_a_bug_in_gateway_mode() -> None:
    with pytest.raises(TurnStateError):
        TurnTaker(MODEL).receive(FrameClassified(0, 20, 1.0), now_ms=20)
    with pytest.raises(TurnStateError):
        TurnTaker(TurnOptions()).receive(ModelSpeechStarted(0), now_ms=20)
