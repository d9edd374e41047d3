"""TurnTaker timelines: frames of known speech/silence in, actions out. No loop, no clock."""

from __future__ import annotations

from dataclasses import replace

from server.streaming.turns import (
    AbandonPreparedReply,
    AnnounceSpeechStarted,
    AnnounceSpeechStopped,
    BeginCapture,
    CancelReply,
    CommitTurn,
    DiscardNoise,
    FrameClassified,
    PrepareReply,
    ReplyFinished,
    ReplyStarted,
    ReportIdle,
    StartReply,
    Tick,
    TurnAction,
    TurnOptions,
    TurnTaker,
    UserState,
)

FRAME_MS = 20
OPTIONS = TurnOptions(
    min_speech_ms=120, barge_in_min_ms=250, silence_duration_ms=300, vad_hangover_ms=90, vad_min_voiced_ms=60
)


def feed(taker: TurnTaker, pattern: str, start_ms: int = 0) -> list[tuple[int, TurnAction]]:
    """`pattern` is one char per 20 ms frame: 'S' speech, '.' silence, 'E' a voice the echo
    gate took for the reply's echo (silence to the TurnTaker, masked)."""
    out: list[tuple[int, TurnAction]] = []
    for i, c in enumerate(pattern):
        begin = start_ms + i * FRAME_MS
        frame = FrameClassified(begin, FRAME_MS, 1.0 if c == "S" else 0.0, masked=c == "E")
        taker.receive(frame, begin + FRAME_MS)
        out += [(begin + FRAME_MS, a) for a in taker.actions()]
    return out


def kinds(timeline: list[tuple[int, TurnAction]]) -> list[type]:
    return [type(a) for _, a in timeline]


def test_speech_then_silence_is_one_turn_with_exact_times() -> None:
    taker = TurnTaker(OPTIONS)
    timeline = feed(taker, "." * 10 + "S" * 40 + "." * 20)
    assert kinds(timeline) == [
        BeginCapture,
        AnnounceSpeechStarted,
        AnnounceSpeechStopped,
        CommitTurn,
        StartReply,
    ]
    at = dict((type(a), (t, a)) for t, a in timeline)
    assert at[BeginCapture][1] == BeginCapture(from_ms=200)
    assert at[AnnounceSpeechStarted] == (320, AnnounceSpeechStarted(audio_start_ms=200))
    assert at[AnnounceSpeechStopped] == (1300, AnnounceSpeechStopped(audio_end_ms=1000))
    assert taker.state is UserState.LISTENING


def test_short_pause_inside_a_turn_does_not_end_it() -> None:
    taker = TurnTaker(OPTIONS)
    timeline = feed(taker, "S" * 20 + "." * 12 + "S" * 20 + "." * 20)  # a 240 ms pause
    assert kinds(timeline).count(CommitTurn) == 1
    commit = next(a for _, a in timeline if isinstance(a, CommitTurn))
    assert commit.audio_end_ms == (20 + 12 + 20) * FRAME_MS


def test_cough_is_discarded_without_a_turn() -> None:
    taker = TurnTaker(OPTIONS)
    timeline = feed(taker, "." * 5 + "S" * 5 + "." * 30)  # 100 ms burst < min_speech_ms
    assert kinds(timeline) == [BeginCapture, DiscardNoise]
    assert timeline[1][1] == DiscardNoise(start_ms=100, end_ms=200)


def test_cough_during_reply_does_not_interrupt() -> None:
    taker = TurnTaker(OPTIONS)
    taker.receive(ReplyStarted(7), 0)
    timeline = feed(taker, "S" * 10 + "." * 20)  # 200 ms: a turn when idle, not a barge-in
    assert CancelReply not in kinds(timeline)
    assert AnnounceSpeechStarted not in kinds(timeline)
    assert taker.active_reply == 7


def test_same_burst_without_reply_is_a_turn() -> None:
    taker = TurnTaker(OPTIONS)
    timeline = feed(taker, "S" * 10 + "." * 20)
    assert AnnounceSpeechStarted in kinds(timeline)


def test_speech_during_reply_interrupts_after_barge_in_min() -> None:
    taker = TurnTaker(OPTIONS)
    taker.receive(ReplyStarted(3), 0)
    timeline = feed(taker, "." * 10 + "S" * 30)
    cancel_at, cancel = next((t, a) for t, a in timeline if isinstance(a, CancelReply))
    assert cancel == CancelReply(3, reason="turn_detected")
    assert cancel_at == 200 + 260  # onset + barge_in_min_ms, rounded up to whole 20 ms frames
    assert kinds(timeline).index(CancelReply) < kinds(timeline).index(AnnounceSpeechStarted)
    assert taker.active_reply is None


def test_interrupt_response_false_announces_but_keeps_reply() -> None:
    taker = TurnTaker(TurnOptions(interrupt_response=False))
    taker.receive(ReplyStarted(1), 0)
    timeline = feed(taker, "S" * 30 + "." * 20)
    assert CancelReply not in kinds(timeline)
    assert AnnounceSpeechStarted in kinds(timeline)
    assert taker.active_reply == 1


def test_create_response_false_commits_without_reply() -> None:
    taker = TurnTaker(TurnOptions(create_response=False))
    timeline = feed(taker, "S" * 20 + "." * 30)
    assert CommitTurn in kinds(timeline)
    assert StartReply not in kinds(timeline)


def test_finished_reply_is_not_cancelled() -> None:
    taker = TurnTaker(OPTIONS)
    taker.receive(ReplyStarted(1), 0)
    taker.receive(ReplyFinished(1), 100)
    timeline = feed(taker, "S" * 20, start_ms=200)
    assert CancelReply not in kinds(timeline)
    assert AnnounceSpeechStarted in kinds(timeline)


def test_end_of_turn_by_tick_when_audio_stops() -> None:
    taker = TurnTaker(OPTIONS)
    feed(taker, "S" * 20 + "." * 5)  # voice ends at 400; hangover passes at 480
    assert taker.state is UserState.ENDPOINTING
    assert taker.next_deadline() == 700
    taker.receive(Tick(), 699)
    assert taker.actions() == []
    taker.receive(Tick(), 700)
    assert kinds([(0, a) for a in taker.actions()]) == [AnnounceSpeechStopped, CommitTurn, StartReply]


def test_idle_timeout_after_reply() -> None:
    taker = TurnTaker(TurnOptions(idle_timeout_ms=1000))
    taker.receive(ReplyStarted(1), 0)
    taker.receive(ReplyFinished(1), 500)
    assert taker.next_deadline() == 1500
    taker.receive(Tick(), 1500)
    assert taker.actions() == [ReportIdle(audio_ms=1500)]
    assert taker.next_deadline() is None


SPECULATIVE = TurnOptions(
    min_speech_ms=120,
    silence_duration_ms=300,
    speculative_silence_ms=100,
    vad_hangover_ms=60,
    vad_min_voiced_ms=60,
)


def test_speculation_prepares_during_the_silence_then_commits() -> None:
    taker = TurnTaker(SPECULATIVE)
    timeline = feed(taker, "S" * 20 + "." * 20)  # voice ends at 400
    assert kinds(timeline) == [
        BeginCapture,
        AnnounceSpeechStarted,
        PrepareReply,
        AnnounceSpeechStopped,
        CommitTurn,
        StartReply,
    ]
    times = {type(a): t for t, a in timeline}
    assert times[PrepareReply] == 500  # voice end + speculative_silence_ms
    assert times[CommitTurn] == 700  # voice end + silence_duration_ms


def test_speculation_abandoned_when_the_user_goes_on() -> None:
    taker = TurnTaker(SPECULATIVE)
    timeline = feed(taker, "S" * 20 + "." * 8 + "S" * 20 + "." * 20)  # a 160 ms pause
    assert kinds(timeline) == [
        BeginCapture,
        AnnounceSpeechStarted,
        PrepareReply,
        AbandonPreparedReply,
        PrepareReply,
        AnnounceSpeechStopped,
        CommitTurn,
        StartReply,
    ]


def test_no_speculation_while_a_reply_plays_or_without_auto_response() -> None:
    taker = TurnTaker(replace(SPECULATIVE, interrupt_response=False))
    taker.receive(ReplyStarted(1), 0)
    timeline = feed(taker, "S" * 20 + "." * 20)
    assert PrepareReply not in kinds(timeline)  # the reply goes on playing: nothing to prepare
    quiet = TurnTaker(TurnOptions(create_response=False, speculative_silence_ms=100))
    assert PrepareReply not in kinds(feed(quiet, "S" * 20 + "." * 20))


def test_one_tick_past_both_deadlines_prepares_and_commits() -> None:
    taker = TurnTaker(SPECULATIVE)
    feed(taker, "S" * 20 + "." * 3)  # voice ends at 400, hangover passes at 460
    taker.receive(Tick(), 5000)
    assert [type(a) for a in taker.actions()] == [PrepareReply, AnnounceSpeechStopped, CommitTurn, StartReply]


def test_a_deadline_may_be_acted_on_before_audio_too_short_for_an_onset_is_classified() -> None:
    """What the asyncio layer checks before it sends a Tick ahead of unclassified frames."""
    taker = TurnTaker(OPTIONS)
    feed(taker, "S" * 20 + "." * 13)  # voice ends at 400; its deadline (700) is 40 ms away
    assert taker.may_end_before(40)  # 40 ms can't hold the 60 ms an onset needs
    assert not taker.may_end_before(60)
    assert feed(taker, "S", start_ms=660) == []  # a voiced frame: a run has begun
    assert taker.may_end_before(20) and not taker.may_end_before(40)
    # the Tick first, then the frames it did not wait for: the turn ended, and they are the
    # next turn's audio
    taker.receive(Tick(), 720)
    assert kinds([(0, a) for a in taker.actions()]) == [AnnounceSpeechStopped, CommitTurn, StartReply]
    timeline = feed(taker, "..", start_ms=680)
    assert timeline == [] and taker.state is UserState.LISTENING
