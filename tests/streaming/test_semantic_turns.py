"""Semantic end of turn (semantic_vad): the silence that ends a turn follows the score of the
caller's words. TurnTaker timelines with scores fed by hand; no loop, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.streaming.end_of_turn import POLICIES, semantic_policy
from server.streaming.turns import (
    SEMANTIC_PREPARE_LEAD_MS,
    AbandonPreparedReply,
    AnnounceSpeechStopped,
    CommitTurn,
    CompletionScored,
    DiscardNoise,
    PrepareReply,
    ReplyStarted,
    ScoreCompletion,
    StartReply,
    Tick,
    TurnAction,
    TurnTaker,
    UserState,
)
from tests.streaming.test_turns import FRAME_MS, OPTIONS, feed, kinds

MEDIUM = semantic_policy("medium")
SEMANTIC = replace(OPTIONS, semantic=MEDIUM, speculative_silence_ms=0)


def silence_until(taker: TurnTaker, start_ms: int, end_ms: int) -> list[tuple[int, TurnAction]]:
    """Silent frames from `start_ms` until the clock reaches `end_ms` (or the frame after)."""
    return feed(taker, "." * -(-(end_ms - start_ms) // FRAME_MS), start_ms)


def test_policy_waits_longer_the_less_complete_the_words() -> None:
    assert (
        MEDIUM.silence_ms(0.9) == MEDIUM.silence_ms(MEDIUM.complete_probability) == MEDIUM.complete_silence_ms
    )
    waits = [MEDIUM.silence_ms(p) for p in (0.19, 0.05, 0.01, 0.002, 0.0)]
    assert waits == sorted(waits)
    assert MEDIUM.uncertain_silence_ms <= waits[0] < waits[1] < waits[2] < waits[3] == MEDIUM.max_silence_ms
    assert MEDIUM.silence_ms(None) == MEDIUM.unscored_silence_ms
    assert semantic_policy("auto") == replace(MEDIUM, eagerness="auto")
    assert [POLICIES[e].max_silence_ms for e in ("low", "medium", "high")] == [8000, 3000, 1500]
    with pytest.raises(ValueError, match="eagerness"):
        semantic_policy("eager")


def test_the_voice_offset_asks_for_a_score_after_one_unvoiced_frame() -> None:
    taker = TurnTaker(SEMANTIC)
    timeline = feed(taker, "S" * 20 + "..")  # 400 ms of speech, one silent frame
    assert timeline[-1] == (440, ScoreCompletion(voice_end_ms=400))
    assert taker.state is UserState.ENDPOINTING


def test_complete_words_end_the_turn_after_the_short_silence_with_the_reply_prepared_at_once() -> None:
    taker = TurnTaker(SEMANTIC)
    feed(taker, "S" * 20 + "..")
    taker.receive(CompletionScored(voice_end_ms=400, probability=0.8), now_ms=460)
    assert taker.actions() == [PrepareReply(audio_end_ms=400)]
    assert taker.next_deadline() == 400 + MEDIUM.complete_silence_ms
    timeline = silence_until(taker, 440, 400 + MEDIUM.complete_silence_ms)
    assert kinds(timeline) == [AnnounceSpeechStopped, CommitTurn, StartReply]
    assert timeline[0][0] == 400 + MEDIUM.complete_silence_ms


def test_incomplete_words_wait_through_a_long_pause_and_the_caller_goes_on() -> None:
    taker = TurnTaker(SEMANTIC)
    feed(taker, "S" * 20 + "..")
    taker.receive(CompletionScored(voice_end_ms=400, probability=0.003), now_ms=460)
    assert taker.actions() == []
    assert taker.end_silence_ms() == MEDIUM.silence_ms(0.003) > 800
    timeline = silence_until(taker, 440, 1200)  # an 800 ms pause in the middle of a sentence
    timeline += feed(taker, "S" * 20 + "..", 1200)
    assert CommitTurn not in kinds(timeline) and PrepareReply not in kinds(timeline)
    assert timeline[-1][1] == ScoreCompletion(voice_end_ms=1600)  # the next pause is scored anew
    assert taker.next_deadline() == 1600 + MEDIUM.unscored_silence_ms


def test_incomplete_words_prepare_the_reply_shortly_before_the_long_silence_ends() -> None:
    taker = TurnTaker(SEMANTIC)
    feed(taker, "S" * 20 + "..")
    taker.receive(CompletionScored(voice_end_ms=400, probability=0.05), now_ms=460)
    end_ms = 400 + MEDIUM.silence_ms(0.05)
    timeline = silence_until(taker, 440, end_ms + FRAME_MS)
    prepared = [t for t, a in timeline if isinstance(a, PrepareReply)]
    committed = [t for t, a in timeline if isinstance(a, CommitTurn)]
    assert prepared and prepared[0] >= end_ms - SEMANTIC_PREPARE_LEAD_MS and prepared[0] < end_ms
    assert committed and end_ms <= committed[0] < end_ms + FRAME_MS


def test_a_late_or_stale_score_changes_nothing() -> None:
    taker = TurnTaker(SEMANTIC)
    feed(taker, "S" * 20 + "." * 2 + "S" * 10 + "..")  # a short dip, speech, a new pause at 640
    taker.receive(CompletionScored(voice_end_ms=400, probability=0.99), now_ms=680)  # the dip's
    assert taker.actions() == []
    assert taker.next_deadline() == 640 + MEDIUM.unscored_silence_ms
    taker.receive(CompletionScored(voice_end_ms=640, probability=0.001), now_ms=680)
    assert taker.end_silence_ms() == MEDIUM.max_silence_ms
    taker.receive(CompletionScored(voice_end_ms=640, probability=0.99), now_ms=780)  # the last word came in
    assert taker.actions() == [PrepareReply(audio_end_ms=640)]
    taker.receive(CompletionScored(voice_end_ms=640, probability=0.001), now_ms=785)  # prepared: words final
    assert taker.next_deadline() == 640 + MEDIUM.complete_silence_ms
    assert taker.scoring_pause_ms is None


def test_an_unscorable_turn_ends_like_server_vad_with_the_unscored_silence() -> None:
    taker = TurnTaker(SEMANTIC)
    feed(taker, "S" * 20 + "..")
    taker.receive(CompletionScored(voice_end_ms=400, probability=None), now_ms=460)
    assert taker.actions() == [PrepareReply(audio_end_ms=400)]  # speculative_silence_ms=0, as server VAD
    timeline = silence_until(taker, 440, 400 + MEDIUM.unscored_silence_ms)
    assert kinds(timeline) == [AnnounceSpeechStopped, CommitTurn, StartReply]


def test_no_score_in_time_ends_the_turn_after_the_unscored_silence() -> None:
    taker = TurnTaker(SEMANTIC)
    timeline = feed(taker, "S" * 20 + "." * -(-MEDIUM.unscored_silence_ms // FRAME_MS))
    assert kinds(timeline)[-3:] == [AnnounceSpeechStopped, CommitTurn, StartReply]
    assert PrepareReply not in kinds(timeline)


def test_voice_resuming_after_a_prepared_reply_abandons_it() -> None:
    taker = TurnTaker(SEMANTIC)
    feed(taker, "S" * 20 + "..")
    taker.receive(CompletionScored(voice_end_ms=400, probability=0.9), now_ms=460)
    assert taker.actions() == [PrepareReply(audio_end_ms=400)]
    timeline = feed(taker, "." * 2 + "S" * 10, 440)
    assert AbandonPreparedReply in kinds(timeline)
    assert taker.state is UserState.USER_SPEAKING


def test_onsets_and_barge_in_bridge_gaps_as_server_vad_does() -> None:
    """The short offset hangover is for pauses after speech; a voiced run still too short
    to be an onset keeps the 90 ms gap bridging, so a barge-in with a 40 ms dip is taken."""
    for options in (OPTIONS, SEMANTIC):
        taker = TurnTaker(options)
        taker.receive(ReplyStarted(reply_id=7), now_ms=0)
        timeline = feed(taker, "S" * 6 + ".." + "S" * 8)
        assert DiscardNoise not in kinds(timeline), options.semantic
        assert taker.state is UserState.USER_SPEAKING


def test_server_vad_never_asks_for_a_score() -> None:
    taker = TurnTaker(OPTIONS)
    timeline = feed(taker, "S" * 20 + "." * 20)
    assert ScoreCompletion not in kinds(timeline)
    taker.receive(Tick(), now_ms=2000)
    assert taker.actions() == []
