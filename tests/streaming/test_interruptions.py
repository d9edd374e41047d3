"""Barge-in decided on words: TurnTaker timelines over a reply, and the word classifier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from server.model.base import WordSpan
from server.streaming.interruptions import (
    InterruptionPolicy,
    OverlapKind,
    VoiceLedger,
    callers_words,
    classify_overlap,
)
from server.streaming.turns import (
    AnnounceSpeechStarted,
    AnnounceSpeechStopped,
    BeginCapture,
    CancelReply,
    CommitTurn,
    DiscardNoise,
    EchoReturnMeasured,
    EndCapture,
    FrameClassified,
    IgnoreOverlap,
    InputCleared,
    ListenerWordsHeard,
    PauseReply,
    ReplyFinished,
    ReplyStarted,
    ResumeReply,
    StartReply,
    Tick,
    TurnAction,
    TurnOptions,
    TurnTaker,
    UserState,
    WordsHeard,
)
from tests.streaming.test_turns import FRAME_MS, OPTIONS, feed, kinds

# the rules that judge an overlap, with the reply paused until they have (talking on under a
# listener's words has its own tests, at the end, with the default policy)
POLICY = InterruptionPolicy(pause_after_ms=120, decide_within_ms=1000, settle_ms=150, talk_over_after_ms=0)
WORDS = replace(OPTIONS, interruption=POLICY)
TALKING = replace(OPTIONS, interruption=InterruptionPolicy())


def replying(options: TurnOptions = WORDS, reply_id: int = 5) -> TurnTaker:
    taker = TurnTaker(options)
    taker.receive(ReplyStarted(reply_id), 0)
    return taker


Step = str | WordsHeard | ListenerWordsHeard  # frames (`feed` patterns) or words


def run(taker: TurnTaker, script: Sequence[Step], start_ms: int = 0) -> list[tuple[int, TurnAction]]:
    """Frames (`feed` patterns) and words, in order; then Ticks until nothing is due."""
    out: list[tuple[int, TurnAction]] = []
    now = start_ms
    for step in script:
        if isinstance(step, WordsHeard | ListenerWordsHeard):
            taker.receive(step, now)
            out += [(now, a) for a in taker.actions()]
        else:
            out += feed(taker, step, now)
            now += len(step) * FRAME_MS
    return out


def feed_masked(taker: TurnTaker, frames: int, start_ms: int) -> list[tuple[int, TurnAction]]:
    """Frames the echo gate took for the reply's echo although the VAD heard a voice."""
    out: list[tuple[int, TurnAction]] = []
    for i in range(frames):
        begin = start_ms + i * FRAME_MS
        taker.receive(FrameClassified(begin, FRAME_MS, 0.0, masked=True), begin + FRAME_MS)
        out += [(begin + FRAME_MS, a) for a in taker.actions()]
    return out


def test_backchannel_pauses_then_resumes_the_reply_without_announcing() -> None:
    taker = replying()
    timeline = run(taker, ["." * 5 + "S" * 8, WordsHeard("yeah"), "S" * 7 + "." * 20])
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]
    pause_at = next(t for t, a in timeline if isinstance(a, PauseReply))
    assert pause_at == 100 + 120  # onset + pause_after_ms
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored == IgnoreOverlap(
        OverlapKind.BACKCHANNEL, "yeah", 100, 400, paused_reply=5, keeps_capture=True
    )
    resume_at = next(t for t, a in timeline if isinstance(a, IgnoreOverlap))
    assert resume_at == 560  # the voice's end + settle_ms (550), on the next frame's edge
    assert taker.active_reply == 5
    assert taker.state is UserState.LISTENING


def test_real_interruption_cancels_on_its_first_words() -> None:
    """A word that takes the floor counts once the recogniser has moved past it (its last word
    is a guess that changes); the reply stays paused meanwhile."""
    taker = replying()
    timeline = run(taker, ["S" * 14, WordsHeard("wait"), "S" * 3, WordsHeard("wait i"), "S" * 20])
    assert kinds(timeline)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    cancel_at = next(t for t, a in timeline if isinstance(a, CancelReply))
    assert cancel_at == 17 * FRAME_MS  # when the next word arrived, after barge_in_min_ms
    assert next(a for _, a in timeline if isinstance(a, AnnounceSpeechStarted)).audio_start_ms == 0
    assert taker.state is UserState.USER_SPEAKING
    assert taker.active_reply is None


def test_words_before_barge_in_min_wait_for_it() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 8, WordsHeard("stop it"), "S" * 10])
    cancel_at = next(t for t, a in timeline if isinstance(a, CancelReply))
    assert cancel_at == 260  # the first frame at or past barge_in_min_ms (250)


def test_speech_past_decide_within_is_an_interruption_without_words() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 60])
    cancel_at = next(t for t, a in timeline if isinstance(a, CancelReply))
    assert cancel_at == 1000
    assert AnnounceSpeechStarted in kinds(timeline)


def test_many_unknown_words_are_an_interruption() -> None:
    taker = replying()
    script: list[str | WordsHeard] = [
        "S" * 15,
        WordsHeard("the blue shirt"),
        "S" * 5,
        WordsHeard("the blue shirt is"),
        "S" * 5,
    ]
    timeline = run(taker, script)
    assert CancelReply in kinds(timeline)


def test_a_word_count_waits_for_the_last_word_to_settle() -> None:
    """Over a speakerphone's echo the recogniser's running guess for slt's "mm-hmm" held three
    of the caller's words ("tell him i'm") on its way to two ("it's albumin"): the count rule
    waits until a later word follows (or the voice stops); the paused reply costs the caller
    nothing more meanwhile."""
    taker = replying()
    script: list[str | WordsHeard] = [
        "S" * 15,
        WordsHeard("you tell him"),
        "S" * 3,
        WordsHeard("it's albumin"),
        "." * 20,
    ]
    timeline = run(taker, script)
    assert CancelReply not in kinds(timeline)
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.BACKCHANNEL


def test_short_noise_over_the_reply_never_pauses_it() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 4 + "." * 20])  # 80 ms click < pause_after_ms
    assert kinds(timeline) == [BeginCapture, DiscardNoise]


def test_cough_pauses_then_resumes_as_noise() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 10 + "." * 20])  # 200 ms: pauses, too short for an overlap
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.NOISE


def test_wordless_overlap_resumes_after_settling_as_noise() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 20 + "." * 20])
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]
    assert next(a for _, a in timeline if isinstance(a, IgnoreOverlap)).kind is OverlapKind.NOISE


def test_interruption_words_after_the_voice_stopped_end_the_turn_normally() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 20 + "." * 5, WordsHeard("no"), "." * 20])
    assert kinds(timeline) == [
        BeginCapture,
        PauseReply,
        CancelReply,
        AnnounceSpeechStarted,
        AnnounceSpeechStopped,
        CommitTurn,
        StartReply,
    ]
    stopped = next(a for _, a in timeline if isinstance(a, AnnounceSpeechStopped))
    assert stopped.audio_end_ms == 400


def test_voice_resuming_while_settling_goes_on_judging() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 15 + "." * 5 + "S" * 10, WordsHeard("yeah yeah"), "." * 20])
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]


def test_an_answer_over_the_replys_last_words_is_a_turn_once_it_has_ended() -> None:
    """The reply ends (it had sent everything) while the caller's "yes" is judged: a listener's
    word after the reply's question is an answer."""
    taker = replying()
    run(taker, ["S" * 15])
    taker.receive(ReplyFinished(5), 300)
    assert taker.actions() == []  # still judged as an overlap
    timeline = run(taker, [WordsHeard("yes"), "S" * 5 + "." * 30], start_ms=300)
    assert kinds(timeline)[:1] == [AnnounceSpeechStarted]
    assert CommitTurn in kinds(timeline) and CancelReply not in kinds(timeline)


def test_the_replys_echo_outlasting_it_is_no_turn() -> None:
    """Wordless voice (the echo's tail, leaking past the gate) that began over the reply and
    goes on after it ended is judged as the overlap it was, not taken for a turn."""
    taker = replying()
    run(taker, ["S" * 10])
    taker.receive(ReplyFinished(5), 200)
    timeline = run(taker, ["S" * 5 + "." * 30], start_ms=200)
    assert AnnounceSpeechStarted not in kinds(timeline)
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.NOISE and ignored.paused_reply is None


def test_clearing_the_input_resumes_a_paused_reply() -> None:
    taker = replying()
    run(taker, ["S" * 8])
    taker.receive(InputCleared(), 160)
    assert taker.actions() == [ResumeReply(5)]
    assert taker.state is UserState.LISTENING


def test_interrupt_response_false_neither_pauses_nor_cancels() -> None:
    taker = replying(replace(WORDS, interrupt_response=False))
    timeline = run(taker, ["S" * 30 + "." * 20])
    assert PauseReply not in kinds(timeline)
    assert CancelReply not in kinds(timeline)
    assert AnnounceSpeechStarted in kinds(timeline)


def test_without_a_reply_speech_is_a_turn_as_in_voice_mode() -> None:
    taker = TurnTaker(WORDS)
    timeline = run(taker, ["S" * 20 + "." * 20])
    assert kinds(timeline) == [
        BeginCapture,
        AnnounceSpeechStarted,
        AnnounceSpeechStopped,
        CommitTurn,
        StartReply,
    ]


def test_pause_is_issued_once_per_overlap_and_resume_matches_it() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 10 + "." * 20 + "S" * 10 + "." * 20])
    order = [a for _, a in timeline if isinstance(a, PauseReply | IgnoreOverlap)]
    assert [type(a) for a in order] == [PauseReply, IgnoreOverlap, PauseReply, IgnoreOverlap]
    assert all(a.paused_reply == 5 for a in order if isinstance(a, IgnoreOverlap))


def test_settle_deadline_is_reported_and_ticks_decide() -> None:
    taker = replying()
    run(taker, ["S" * 20 + "." * 5])
    assert taker.state is UserState.OVERLAP_ENDING
    deadline = taker.next_deadline()
    assert deadline is not None
    taker.receive(Tick(), deadline)
    assert [type(a) for a in taker.actions()] == [IgnoreOverlap]


@pytest.mark.parametrize(
    ("words", "final", "kind"),
    [
        ("yeah", True, OverlapKind.BACKCHANNEL),
        ("uh huh", True, OverlapKind.BACKCHANNEL),
        ("okay right", True, OverlapKind.BACKCHANNEL),
        ("ahead", True, OverlapKind.BACKCHANNEL),  # what the recogniser hears for "uh-huh"
        ("the flood", True, OverlapKind.BACKCHANNEL),
        ("", True, OverlapKind.NOISE),
        ("", False, None),
        ("yeah", False, None),
        ("wait", False, None),  # the last word may still change
        ("wait", True, OverlapKind.INTERRUPTION),
        ("wait i", False, OverlapKind.INTERRUPTION),
        ("the but", False, None),  # what "uh-huh" sounds like half way
        ("but the", False, OverlapKind.INTERRUPTION),
        ("No.", True, OverlapKind.INTERRUPTION),
        ("what about the refund", False, OverlapKind.INTERRUPTION),
        ("the blue shirt", False, None),  # its last word may still go: "uh-huh" passes through three
        ("the blue shirt", True, OverlapKind.INTERRUPTION),
        ("the blue shirt now", False, OverlapKind.INTERRUPTION),
        ("oh hello", True, OverlapKind.INTERRUPTION),  # in a room not heard to echo
        ("i need the other one", False, OverlapKind.INTERRUPTION),
    ],
)
def test_classify_overlap(words: str, final: bool, kind: OverlapKind | None) -> None:
    assert classify_overlap(words, POLICY, final=final) is kind


@pytest.mark.parametrize(
    ("words", "kind"),
    [
        # what the recogniser made of "uh-huh" over a -12 dB echo (measure_overlaps)
        ("oh hello", OverlapKind.BACKCHANNEL),
        ("you don't", OverlapKind.BACKCHANNEL),
        # ... and, live, of "uh-huh", "yeah", "okay" (the caller's share of the words)
        ("aha where", OverlapKind.BACKCHANNEL),
        ("what i", OverlapKind.BACKCHANNEL),
        ("soviet where", OverlapKind.BACKCHANNEL),
        ("where is my order", OverlapKind.INTERRUPTION),  # a caller's question: by its count
        ("hello there", OverlapKind.BACKCHANNEL),  # two words: a burst too short to be sure
        ("hello can you hear me", OverlapKind.INTERRUPTION),  # more than a backchannel holds
        ("wait", OverlapKind.INTERRUPTION),  # the other floor words keep it over the echo
    ],
)
def test_over_an_echo_words_made_of_a_listener_do_not_take_the_floor(words: str, kind: OverlapKind) -> None:
    assert classify_overlap(words, POLICY, final=True, over_echo=True) is kind
    assert classify_overlap(words, POLICY, final=True) is OverlapKind.INTERRUPTION


REPLY_TEXT = "Thank you. Your order left our warehouse this morning and should arrive on Thursday"


@pytest.mark.parametrize(
    ("words", "final", "kind"),
    [
        ("should arrive on thursday", True, OverlapKind.ECHO),
        ("should arrive on thursday", False, None),  # not an interruption while it rings on
        ("our warehouse this morning but", True, OverlapKind.ECHO),
        ("what about the refund", False, OverlapKind.INTERRUPTION),
        ("thursday", True, OverlapKind.BACKCHANNEL),  # one word is too few to call it an echo
        # a listener's words are the caller's, even when the reply said them too
        ("thank you", True, OverlapKind.BACKCHANNEL),
    ],
)
def test_the_replys_own_words_are_an_echo(words: str, final: bool, kind: OverlapKind | None) -> None:
    assert classify_overlap(words, POLICY, final=final, reply_text=REPLY_TEXT) is kind


def test_an_overlap_hears_the_echo_once_the_gate_masked_frames_of_it() -> None:
    """Frames the echo gate masked (the VAD heard a voice it took for the echo) between the
    caller's syllables: the overlap hears the reply's echo (the debug log reports it); one
    without them does not, nor does the next overlap for the masked frames of an earlier one."""
    taker = replying()
    run(taker, ["S" * 8])
    assert not taker.overlap_hears_echo
    feed_masked(taker, 3, 160)  # between the syllables, the echo
    assert taker.overlap_hears_echo
    run(taker, ["S" * 6, WordsHeard("yeah"), "." * 40], start_ms=220)
    run(taker, ["S" * 8], start_ms=1240)
    assert not taker.overlap_hears_echo


def test_an_echo_of_the_reply_resumes_it_even_past_decide_within() -> None:
    taker = replying()
    timeline = run(
        taker, ["S" * 30, WordsHeard("should arrive on thursday", REPLY_TEXT), "S" * 30 + "." * 20]
    )
    assert CancelReply not in kinds(timeline)
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.ECHO and ignored.paused_reply == 5


def test_a_floor_word_the_recogniser_takes_back_does_not_cancel() -> None:
    """Half way through a listener's "uh-huh" the recogniser guesses "but"; then it hears "the
    flood": the reply resumes (the guess never counted)."""
    taker = replying()
    timeline = run(
        taker,
        ["S" * 10, WordsHeard("the"), "S" * 2, WordsHeard("but"), "S" * 4, WordsHeard("the flood"), "." * 15],
    )
    assert CancelReply not in kinds(timeline)
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.BACKCHANNEL


def test_a_voice_soon_after_a_backchannel_continues_it() -> None:
    """ "okay ... but where is my order": the caller goes on within rejoin_within_ms of a
    resumed backchannel, so the reply pauses at the new voice's onset (not 120 ms into it),
    the capture starts again at the backchannel's onset and the words are judged together."""
    taker = replying()
    first = run(taker, ["S" * 15, WordsHeard("okay"), "." * 20])
    assert kinds(first) == [BeginCapture, PauseReply, IgnoreOverlap]  # resumed at 300 + 150
    second = run(taker, ["." * 5 + "S" * 3], start_ms=700)
    assert kinds(second) == [BeginCapture, PauseReply]
    assert second[0][1] == BeginCapture(from_ms=0)  # the backchannel's onset
    assert second[1][0] == second[0][0]  # paused as the onset is heard
    rest = run(taker, ["S" * 10, WordsHeard("okay but where"), "S" * 5], start_ms=860)
    assert kinds(rest)[:2] == [CancelReply, AnnounceSpeechStarted]
    assert next(a for _, a in rest if isinstance(a, AnnounceSpeechStarted)).audio_start_ms == 0


def test_a_voice_after_the_rejoin_window_is_a_new_overlap() -> None:
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("okay"), "." * 20])
    timeline = run(taker, ["." * 25 + "S" * 8], start_ms=700)  # voice at 1200: 900 ms after "okay"
    assert kinds(timeline) == [EndCapture, BeginCapture, PauseReply]
    assert timeline[0][0] == 300 + 800  # the window's end: the "okay"'s capture is dropped
    assert timeline[1][1] == BeginCapture(from_ms=1200)
    assert timeline[2][0] == 1200 + 120


def test_two_backchannels_in_a_row_both_resume() -> None:
    """ "yeah ... yeah yeah": the second joins the first, but `decide_within_ms` counts from
    its own onset, so a listener's second word is no interruption for being late."""
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("yeah"), "." * 20])
    timeline = run(taker, ["." * 5 + "S" * 30, WordsHeard("yeah yeah"), "." * 20], start_ms=700)
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.BACKCHANNEL and ignored.paused_reply == 5
    assert taker.active_reply == 5


def test_a_voice_after_wordless_noise_continues_it_but_waits_to_pause() -> None:
    """After a cough the next voice is judged with it (its capture starts at the cough), but
    pauses the reply only pause_after_ms into it, as any voice: a cough is no sentence start.
    An echo is never continued, and a new reply forgets the last one's overlaps."""
    taker = replying()
    run(taker, ["S" * 15 + "." * 20])  # wordless: noise
    timeline = run(taker, ["." * 5 + "S" * 8], start_ms=700)
    assert timeline[0][1] == BeginCapture(from_ms=0) and timeline[1][0] == 800 + 120
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("should arrive on thursday", REPLY_TEXT), "." * 20])  # an echo
    timeline = run(taker, ["." * 5 + "S" * 8], start_ms=700)
    assert timeline[0][1] == BeginCapture(from_ms=800) and timeline[1][0] == 800 + 120
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("okay"), "." * 20])
    taker.receive(ReplyFinished(5), 700)
    assert taker.actions() == []  # the "okay"'s capture, kept for a rejoin, even now
    taker.receive(ReplyStarted(6), 700)
    assert taker.actions() == [EndCapture()]  # ... but not into the next reply
    timeline = run(taker, ["." * 5 + "S" * 8], start_ms=700)
    assert timeline[0][1] == BeginCapture(from_ms=800) and timeline[1][0] == 800 + 120


def test_a_sentence_chopped_into_short_bursts_is_judged_as_one() -> None:
    """The echo gate (or the VAD's dips) can leave "yes my package arrived damaged" as bursts
    of 120-220 ms, each too short for an overlap: each used to resume the reply as noise. Now
    a burst that follows another is judged on all the words since the first."""
    taker = replying()
    run(taker, ["S" * 11 + "." * 20])  # 220 ms: paused, then noise
    timeline = run(taker, ["S" * 10 + "." * 2, WordsHeard("yes my package"), "." * 20], start_ms=620)
    assert kinds(timeline)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    assert timeline[0][1] == BeginCapture(from_ms=0)
    assert next(a for _, a in timeline if isinstance(a, AnnounceSpeechStarted)).audio_start_ms == 0


def test_a_short_burst_that_continues_a_backchannel_is_judged_on_its_words() -> None:
    """Over an echo the gate leaves a caller's "I want to cancel my subscription" in short
    bursts: one too short for an overlap of its own, continuing a backchannel, is judged on
    all the words since the backchannel began rather than dismissed as noise."""
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("i want"), "." * 20])  # taken for a listener's
    timeline = run(
        taker, ["." * 5 + "S" * 6 + "." * 2, WordsHeard("i want to cancel"), "." * 20], start_ms=700
    )
    assert kinds(timeline)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    assert taker.active_reply is None
    # alone, the same burst is noise: the reply resumes
    taker = replying()
    timeline = run(taker, ["." * 5 + "S" * 6 + "." * 20], start_ms=700)
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]
    assert next(a for _, a in timeline if isinstance(a, IgnoreOverlap)).kind is OverlapKind.NOISE


@pytest.mark.parametrize("echo_first", [True, False])
def test_a_voice_just_after_a_short_backchannel_over_the_echo_finishes_its_word(echo_first: bool) -> None:
    """Over a -12 dB echo the VAD split flite kal's "okay" into "o" (160 ms) and "kay" (190 ms,
    220 ms later); the recogniser made "dakota where i'm" of both with the echo
    (measure_overlaps), and "where", settled by "i'm", took the floor. In a room heard to
    echo, a voice that starts within word_gap_ms of a backchannel too short for an overlap,
    and stops within word_rest_max_ms, is the rest of its word: the reply resumes once it
    settles. Once: a third burst is judged with all the words, so a caller who goes on still
    takes the floor. In a quiet room the words are judged as ever."""
    taker = replying()
    room = ("E" if echo_first else ".") * 37  # the reply's echo heard for 740 ms, or silence
    first = run(taker, [room + "S" * 8, WordsHeard("okay"), "." * 10])
    assert kinds(first)[-1] is IgnoreOverlap and taker.active_reply == 5
    tail = run(taker, ["S" * 9, WordsHeard("dakota where i'm"), "." * 20], start_ms=1100)  # 200 ms on
    if not echo_first:
        assert kinds(tail)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
        return
    assert kinds(tail) == [BeginCapture, PauseReply, IgnoreOverlap]
    assert tail[1][0] == 1100 + OPTIONS.vad_min_voiced_ms  # paused as the onset is heard ...
    assert tail[2][0] == 1280 + 160  # ... resumed once settled (settle_ms; the next frame's tick)
    resumed = tail[2][1]
    assert isinstance(resumed, IgnoreOverlap) and resumed.kind is OverlapKind.BACKCHANNEL
    assert (resumed.start_ms, resumed.end_ms, resumed.paused_reply) == (740, 1280, 5)
    # a third burst: the word was finished, so all the words since "o" are judged (and the
    # caller's voice, 640 ms, holds four: count_voice_ms)
    third = run(taker, ["S" * 15, WordsHeard("dakota where i'm going"), "." * 20], start_ms=1580)
    assert kinds(third)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    # ... and a burst later than word_gap_ms after a backchannel is judged on its words ("but"
    # takes the floor; "dakota where i'm" would not over these 340 ms of voice, count_voice_ms)
    for start_ms, cancelled in ((1300, True), (1100, False)):  # 400 ms on; 200 ms on: its rest
        taker = replying()
        run(taker, [room + "S" * 8, WordsHeard("okay"), "." * (20 if start_ms == 1300 else 10)])
        late = run(taker, ["S" * 9, WordsHeard("dakota but i'm"), "." * 20], start_ms=start_ms)
        assert (CancelReply in kinds(late)) is cancelled
    # live, "kay" lasted 240 ms, an overlap's length: up to word_rest_max_ms it is still the rest
    # of the word; longer, the caller goes on, and the words are judged
    for rest_frames, cancelled in ((15, False), (25, True)):
        taker = replying()
        run(taker, [room + "S" * 8, WordsHeard("okay"), "." * 10])
        rest = run(taker, ["S" * rest_frames, WordsHeard("the soviet where"), "." * 20], start_ms=1100)
        assert (CancelReply in kinds(rest)) is cancelled and (IgnoreOverlap in kinds(rest)) is not cancelled
    # ... as is a voice that goes on before the rest of the word has settled (a human's "the
    # eight ... of spades ... four of clubs", in bursts over a -20 dB echo)
    taker = replying()
    run(taker, [room + "S" * 8, WordsHeard("okay"), "." * 10])
    going_on = run(
        taker, ["S" * 9 + "." * 5 + "S" * 15, WordsHeard("a they eight of spades"), "." * 20], 1100
    )
    assert CancelReply in kinds(going_on) and IgnoreOverlap not in kinds(going_on)
    # ... as is one after a backchannel of an overlap's length: no syllable (a caller's "why
    # was", heard as "won", went on "my card", heard as "want my")
    taker = replying()
    run(taker, [room + "S" * 15, WordsHeard("won"), "." * 10])
    after_overlap = run(taker, ["S" * 16, WordsHeard("won want my"), "." * 20], start_ms=1240)
    assert CancelReply in kinds(after_overlap)


def test_words_are_final_only_once_the_recogniser_has_decoded_past_the_voice() -> None:
    """A busy recogniser lags the audio: "ten of clubs" judged at settle_ms with the words
    decoded so far ("") would be noise. The judgement waits until the words cover settle_ms
    past the voice's end, then the caller's words take the floor."""
    taker = replying()
    timeline = run(taker, ["S" * 15, WordsHeard("", through_ms=100), "." * 20])  # voice ends at 300
    assert kinds(timeline) == [BeginCapture, PauseReply]  # not judged at 300 + 150
    assert taker.state is UserState.OVERLAP_ENDING
    behind = run(taker, [WordsHeard("ten", through_ms=440), "." * 2], start_ms=700)
    assert kinds(behind) == []  # 440 < 450: the last word may still be coming
    caught_up = run(taker, [WordsHeard("ten of clubs", through_ms=460)], start_ms=740)
    assert kinds(caught_up)[:2] == [CancelReply, AnnounceSpeechStarted]
    assert caught_up[0][0] == 740


def test_a_recogniser_that_stays_behind_is_awaited_words_wait_ms_at_most() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 15, WordsHeard("", through_ms=100), "." * 40])
    assert kinds(timeline) == [
        BeginCapture,
        PauseReply,
        IgnoreOverlap,
        EndCapture,
    ]  # the noise's capture, kept 800 ms
    resumed_at = next(t for t, a in timeline if isinstance(a, IgnoreOverlap))
    assert resumed_at == 300 + POLICY.words_wait_ms  # the voice's end + the longest wait
    assert next(a for _, a in timeline if isinstance(a, IgnoreOverlap)).kind is OverlapKind.NOISE


def test_a_recogniser_that_kept_up_is_judged_after_settle_ms() -> None:
    taker = replying()
    timeline = run(taker, ["S" * 15, WordsHeard("yeah", through_ms=290), "." * 8])
    assert kinds(timeline) == [BeginCapture, PauseReply]  # its words do not yet cover 450
    late = run(taker, [WordsHeard("yeah", through_ms=470), "." * 10], start_ms=460)
    assert kinds(late) == [IgnoreOverlap]
    assert late[0][0] == 460  # at once: 470 is past the voice's end + settle_ms


def test_a_short_burst_with_words_is_judged_on_them() -> None:
    """Over an echo the gate can leave a caller's "what are your" as a 200 ms burst, too short
    for an overlap: its words take the floor instead of the burst passing for noise."""
    taker = replying()
    timeline = run(taker, ["S" * 10, WordsHeard("what are your", through_ms=200), "." * 20])
    assert kinds(timeline)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    cancel_at = next(t for t, a in timeline if isinstance(a, CancelReply))
    assert cancel_at == 300  # as the voice's end is called: "what", a later word after it


def test_a_wordless_burst_is_noise_at_once_unless_the_recogniser_is_behind() -> None:
    caught_up = replying()
    timeline = run(caught_up, ["S" * 10, WordsHeard("", through_ms=200), "." * 20])
    assert kinds(timeline) == [BeginCapture, PauseReply, IgnoreOverlap]
    assert (
        next(t for t, a in timeline if isinstance(a, IgnoreOverlap)) == 300
    )  # when the voice ends (hangover)
    behind = replying()
    timeline = run(behind, ["S" * 10, WordsHeard("", through_ms=60), "." * 10])
    assert kinds(timeline) == [BeginCapture, PauseReply]  # its words may be coming
    later = run(behind, [WordsHeard("", through_ms=400)], start_ms=400)
    assert kinds(later) == [IgnoreOverlap] and later[0][1].kind is OverlapKind.NOISE  # type: ignore[union-attr]


def test_a_voice_starting_again_as_the_words_settle_keeps_the_overlap() -> None:
    """ "thank you ... that is all": the caller goes on just before the words of "thank you"
    are final, but the new voice's onset is not yet complete (it takes vad_min_voiced_ms). The
    judgement waits for it instead of resuming the reply for a frame or two and pausing it again."""
    taker = replying()
    timeline = run(taker, ["S" * 15, WordsHeard("thank you", through_ms=10_000), "." * 7 + "S" * 10])
    assert kinds(timeline) == [BeginCapture, PauseReply]
    assert taker.state is UserState.OVERLAP


def test_a_short_burst_with_one_listener_word_is_no_answer_when_the_reply_ends() -> None:
    """The tail of the reply's own echo, as the reply ends, can come through as a 200 ms burst
    the recogniser hears as "oh": a longer overlap whose reply ended would be an answer ("yes"),
    but a burst too short for an overlap is dropped, as a short burst always was."""
    taker = replying()
    timeline = run(taker, ["S" * 10, WordsHeard("oh", through_ms=200), "." * 3])
    taker.receive(ReplyFinished(5), 260)
    timeline += run(taker, ["." * 5, WordsHeard("oh", through_ms=400), "." * 10], start_ms=260)
    assert AnnounceSpeechStarted not in kinds(timeline)
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert ignored.kind is OverlapKind.BACKCHANNEL and ignored.paused_reply is None


def test_a_caller_who_goes_on_after_the_reply_ended_keeps_their_first_words() -> None:
    """ "four ... queen of clubs" (live, a short reply): "four" was taken for a listener's
    word and the reply resumed with little left; it ended before the caller went on. The
    turn starts at "four": its capture was kept through the rejoin window, not dropped when
    the reply ended, so the recogniser hears "four queen of clubs"."""
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("four"), "." * 10])  # resumed at 450
    taker.receive(ReplyFinished(5), 560)
    assert taker.actions() == []
    timeline = run(taker, ["." * 5 + "S" * 20 + "." * 20], start_ms=560)
    assert kinds(timeline)[:2] == [BeginCapture, AnnounceSpeechStarted]
    assert timeline[0][1] == BeginCapture(from_ms=0)
    assert timeline[1][1] == AnnounceSpeechStarted(audio_start_ms=0)
    assert CommitTurn in kinds(timeline)
    # after the window, a voice is a turn of its own, and the kept capture was dropped
    taker = replying()
    run(taker, ["S" * 15, WordsHeard("four"), "." * 10])
    taker.receive(ReplyFinished(5), 560)
    timeline = run(taker, ["." * 40 + "S" * 20], start_ms=560)
    assert kinds(timeline)[:3] == [EndCapture, BeginCapture, AnnounceSpeechStarted]
    assert timeline[0][0] == 300 + POLICY.rejoin_within_ms
    assert timeline[1][1] == BeginCapture(from_ms=1360)


def test_a_caller_going_on_over_the_reply_to_their_pause_takes_the_floor() -> None:
    """ "four ... queen of clubs" (live, seed 212 trial 1): the silence after "four" ended the
    turn and its reply started just after the caller went on; "of clubs" alone was two unclear
    words, a backchannel, and "queen of clubs" was never answered. A voice that began before
    the caller can have heard much of the reply is them going on: a word not a listener's
    takes the floor."""

    def over_the_reply_to_a_pause(onset_after_start_ms: int) -> list[tuple[int, TurnAction]]:
        taker = TurnTaker(WORDS)
        timeline = run(taker, ["S" * 20 + "." * 16])  # voice end 400, committed at 700
        assert kinds(timeline)[-2:] == [CommitTurn, StartReply]
        taker.receive(ReplyStarted(5), 720)
        start_ms = 720 + onset_after_start_ms
        return run(taker, ["S" * 15, WordsHeard("of clubs"), "." * 20], start_ms=start_ms)

    going_on = over_the_reply_to_a_pause(POLICY.going_on_within_ms)
    assert kinds(going_on)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    # the same words once the caller has heard some of the reply are a listener's burst
    later = over_the_reply_to_a_pause(POLICY.going_on_within_ms + FRAME_MS)
    assert kinds(later) == [BeginCapture, PauseReply, IgnoreOverlap]


@pytest.mark.parametrize(
    ("words", "final", "kind"),
    [
        ("of clubs", True, OverlapKind.INTERRUPTION),
        ("of clubs", False, None),  # "clubs" is the recogniser's guess so far
        ("queen of", False, OverlapKind.INTERRUPTION),
        ("okay", True, OverlapKind.BACKCHANNEL),  # a listener's word is still a listener's
        ("", True, OverlapKind.NOISE),
    ],
)
def test_classify_a_caller_going_on(words: str, final: bool, kind: OverlapKind | None) -> None:
    assert classify_overlap(words, POLICY, final=final, going_on=True) is kind


def placed(*words: tuple[str, int, int]) -> tuple[WordSpan, ...]:
    return tuple(WordSpan(word, start_ms, end_ms) for word, start_ms, end_ms in words)


# "uh-huh" over the reply's echo, as PocketSphinx heard it in measure_overlaps --echo-db -12:
# the echo before the caller's voice (the capture's padding, masked by the gate) came out as
# "isa", the caller's voice as "on them"; the reply's echo was heard for 500 ms before that
ISA_ON_THEM = placed(("isa", 500, 740), ("on", 740, 900), ("them", 900, 1060))


@pytest.mark.parametrize(
    ("spans", "kind"),
    [
        (ISA_ON_THEM, OverlapKind.BACKCHANNEL),  # "isa" is the echo's: two words, a listener's
        (None, OverlapKind.INTERRUPTION),  # unplaced: three unclear words, the floor taken
    ],
)
def test_words_the_recogniser_made_of_the_echo_are_not_the_callers(
    spans: tuple[WordSpan, ...] | None, kind: OverlapKind
) -> None:
    taker = replying()
    # a listener's word drawn out to 640 ms, voice enough for three words (count_voice_ms)
    frames = "E" * 25 + "E" * 12 + "S" * 32
    timeline = run(taker, [frames, WordsHeard("isa on them", spans=spans), "E" * 4 + "." * 20])
    decided = [a for _, a in timeline if isinstance(a, (IgnoreOverlap, CancelReply))]
    assert taker.overlap_callers_words == ("on them" if spans else "isa on them")
    if kind is OverlapKind.INTERRUPTION:
        assert isinstance(decided[0], CancelReply)
    else:
        assert decided == [IgnoreOverlap(kind, "on them", 740, 1380, paused_reply=5, keeps_capture=True)]


@pytest.mark.parametrize(("echo_first", "cancelled"), [(True, False), (False, True)])
def test_hello_takes_the_floor_only_in_a_room_not_heard_to_echo(echo_first: bool, cancelled: bool) -> None:
    """Over the reply's echo, the recogniser heard espeak's "uh-huh" as "oh hello": once the
    gate has masked the echo before the voice, that is a listener's burst, and the reply
    resumes; where no echo was heard, "hello" takes the floor as before."""
    taker = replying()
    spans = placed(("oh", 740, 840), ("hello", 840, 1060))
    frames = ("E" if echo_first else ".") * 37 + "S" * 16
    timeline = run(taker, [frames, WordsHeard("oh hello", spans=spans), "." * 20])
    assert (CancelReply in kinds(timeline)) is cancelled
    if not cancelled:
        assert next(a for _, a in timeline if isinstance(a, IgnoreOverlap)).kind is OverlapKind.BACKCHANNEL


def test_a_quiet_caller_in_a_room_never_heard_to_echo_keeps_every_word() -> None:
    """No echo before the caller began, only their own first syllables masked (a quiet caller
    early in a session's first reply: the gate masks what it takes for an echo it has not
    heard yet). Live, dropping those words lost the human "ten of clubs" (two words left, a
    listener's; the caller was never answered): here every word counts, and it takes the floor."""
    taker = replying()
    spans = placed(("ten", 500, 740), ("of", 740, 900), ("clubs", 900, 1060))
    frames = "." * 25 + "E" * 12 + "S" * 16
    timeline = run(taker, [frames, WordsHeard("ten of clubs", spans=spans), "." * 20])
    assert taker.overlap_callers_words == "ten of clubs"
    assert CancelReply in kinds(timeline)


def test_a_caller_talking_over_the_echo_still_takes_the_floor() -> None:
    """Over an echo the gate masks the caller's quieter syllables too ("my", two frames of
    five): the words over the voice it passed are still the caller's, and take the floor."""
    taker = replying()
    spans = placed(
        ("yet", 0, 200), ("where", 200, 400), ("is", 400, 500), ("my", 500, 600), ("order", 600, 800)
    )
    # the echo heard for 500 ms first; the caller's voice, 640 ms of it passed, holds four words
    frames = "E" * 25 + "E" * 10 + "S" * 15 + "EE" + "S" * 17
    spans = tuple(WordSpan(s.word, s.start_ms + 500, s.end_ms + 500) for s in spans)
    timeline = run(taker, [frames, WordsHeard("yet where is my order", spans=spans), "." * 20])
    assert kinds(timeline)[:4] == [BeginCapture, PauseReply, CancelReply, AnnounceSpeechStarted]
    assert next(a for _, a in timeline if isinstance(a, AnnounceSpeechStarted)).audio_start_ms == 700
    assert taker.overlap_callers_words == "where is my order"


def test_voice_ledger_splits_a_span_between_the_caller_and_the_echo() -> None:
    voices = VoiceLedger()
    for start_ms in range(0, 200, 20):
        voices.add(start_ms, 20, callers=start_ms >= 100)  # the echo, then the caller
    assert voices.voice_ms(50, 150) == (50, 50)
    assert voices.voice_ms(200, 400) == (0, 0)  # nothing heard there
    spans = placed(("the", 0, 90), ("audio", 90, 200), ("later", 300, 400))
    # "the": all echo; "audio": 10 ms echo, 100 ms the caller's; "later": no voice, kept
    assert callers_words(spans, voices, POLICY) == "audio later"
    stricter = replace(POLICY, caller_word_share=0.95)
    assert callers_words(spans, voices, stricter) == "later"


def test_voice_ledger_forgets_its_oldest_frames() -> None:
    voices = VoiceLedger(max_frames=4)
    for start_ms in range(0, 200, 20):
        voices.add(start_ms, 20, callers=False)
    assert voices.voice_ms(0, 200) == (0, 80)


@pytest.mark.parametrize(
    ("before", "voice_frames", "cancelled"),
    [
        ("E", 16, False),  # 320 ms of the caller's voice over the echo: a listener's word
        ("E", 32, True),  # 640 ms: enough voice for three words, a sentence
        (".", 16, True),  # no echo heard: the recogniser's words are the caller's, counted as ever
    ],
)
def test_over_the_echo_a_word_count_needs_the_callers_voice_to_hold_it(
    before: str, voice_frames: int, cancelled: bool
) -> None:
    """Over the reply's echo, once the room was heard, espeak's "yeah" (320 ms of voice the
    gate passed) came out as "eat at all": three words, one not a listener's, which took the
    floor by their count. Three words need more voice than that (`count_voice_ms`)."""
    taker = replying()
    end_ms = 740 + voice_frames * FRAME_MS
    third = (end_ms - 740) // 3
    spans = placed(
        ("eat", 740, 740 + third), ("at", 740 + third, 740 + 2 * third), ("all", 740 + 2 * third, end_ms)
    )
    timeline = run(taker, [before * 37 + "S" * voice_frames, WordsHeard("eat at all", spans=spans), "." * 20])
    assert taker.overlap_callers_words == "eat at all"
    assert (CancelReply in kinds(timeline)) is cancelled
    if not cancelled:
        assert next(a for _, a in timeline if isinstance(a, IgnoreOverlap)).kind is OverlapKind.BACKCHANNEL


def test_the_echo_passing_the_gate_after_a_backchannel_does_not_make_it_a_sentence() -> None:
    """A listener's "yeah" over the echo resumed the reply; frames of the resumed reply's
    echo then passed the gate inside the rejoin window (measure_overlaps --greeting, -20 dB):
    judged with the backchannel's words, "yeah i on" was three words and cancelled the reply.
    The caller's voice in all of it is a listener's word's, too short for three."""
    taker = replying()
    yeah = placed(("yeah", 740, 1060))
    first = run(taker, ["E" * 37 + "S" * 16, WordsHeard("yeah", spans=yeah), "." * 12])
    assert next(a for _, a in first if isinstance(a, IgnoreOverlap)).kind is OverlapKind.BACKCHANNEL
    rejoined = placed(("yeah", 740, 1060), ("i", 1060, 1100), ("on", 1340, 1420))
    later = run(
        taker, ["E" * 3 + "SSS" + "E" * 3, WordsHeard("yeah i on", spans=rejoined), "." * 20], start_ms=1300
    )
    assert PauseReply in kinds(later)  # a voice just after a backchannel pauses at once
    assert CancelReply not in kinds(later)
    assert next(a for _, a in later if isinstance(a, IgnoreOverlap)).kind is OverlapKind.BACKCHANNEL


# -- talking on under a listener's words (`talk_over_after_ms`)


def test_the_reply_talks_on_under_a_listeners_word_while_it_is_judged() -> None:
    """flite kal's "okay" lasts 700 ms and is judged only once it has ended and settled: the
    reply would stop for all of it. Once the voice has lasted talk_over_after_ms and its words
    are a listener's, the reply resumes under it; the backchannel is then judged as ever."""
    taker = replying(TALKING)
    timeline = run(taker, ["S" * 10, WordsHeard("oh"), "S" * 5, WordsHeard("okay"), "S" * 20 + "." * 20])
    assert kinds(timeline) == [BeginCapture, PauseReply, ResumeReply, IgnoreOverlap]
    resumed_at, resumed = next((t, a) for t, a in timeline if isinstance(a, ResumeReply))
    assert resumed == ResumeReply(5, under_voice=True)
    assert resumed_at == 260  # the end of the first frame past talk_over_after_ms (250)
    ignored = next(a for _, a in timeline if isinstance(a, IgnoreOverlap))
    assert (ignored.kind, ignored.words, ignored.paused_reply) == (OverlapKind.BACKCHANNEL, "okay", 5)
    assert taker.active_reply == 5


def test_a_word_that_is_not_a_listeners_pauses_the_talked_over_reply_again() -> None:
    """ "okay but where is my order" said at once: the reply talks on under "okay", pauses
    again when the recogniser hears "but", and is cancelled once "but" is settled."""
    taker = replying(TALKING)
    script: list[str | WordsHeard] = [
        "S" * 15,
        WordsHeard("okay"),
        "S" * 3,
        WordsHeard("okay but"),
        "S" * 3,
        WordsHeard("okay but where"),
        "S" * 10,
    ]
    timeline = run(taker, script)
    assert kinds(timeline)[:6] == [
        BeginCapture,
        PauseReply,
        ResumeReply,
        PauseReply,
        CancelReply,
        AnnounceSpeechStarted,
    ]
    times = [t for t, _ in timeline]
    assert times[2:5] == [300, 360, 420]  # resumed at "okay", paused at "but", cancelled at "where"


def test_the_recognisers_changing_guess_resumes_and_pauses_the_reply_with_it() -> None:
    """Espeak's "yeah" was heard as "yeah", then "you", then "yes": the reply pauses while the
    guess is not a listener's token (a pause shorter than the client's lead is never heard)."""
    taker = replying(TALKING)
    script: list[str | WordsHeard] = ["S" * 15, WordsHeard("yeah"), "S" * 3, WordsHeard("you"), "S" * 3]
    script += [WordsHeard("yes"), "S" * 2 + "." * 20]
    timeline = run(taker, script)
    assert kinds(timeline) == [BeginCapture, PauseReply, ResumeReply, PauseReply, ResumeReply, IgnoreOverlap]


@pytest.mark.parametrize("words", ["i", "the", "you", "okay i", "where", ""])
def test_a_sentences_first_words_are_not_talked_over(words: str) -> None:
    """ "i", "the", "you" begin sentences as often as they end a listener's guess; no words
    yet is no listener's word either."""
    taker = replying(TALKING)
    timeline = run(taker, ["S" * 15, WordsHeard(words), "S" * 10])
    assert ResumeReply not in kinds(timeline)


def test_no_talking_over_before_the_voice_has_lasted_talk_over_after_ms() -> None:
    """A listener's word heard early ("yeah" 160 ms into the voice) waits for the voice to
    last talk_over_after_ms: a caller who says "yeah" and goes on has, by then, often begun
    their next word."""
    taker = replying(TALKING)
    timeline = run(taker, ["S" * 8, WordsHeard("yeah"), "S" * 10])
    resumed_at = next(t for t, a in timeline if isinstance(a, ResumeReply))
    assert resumed_at >= InterruptionPolicy().talk_over_after_ms
    off = replying(replace(OPTIONS, interruption=InterruptionPolicy(talk_over_after_ms=0)))
    assert ResumeReply not in kinds(run(off, ["S" * 8, WordsHeard("yeah"), "S" * 10]))


def test_a_voice_that_continues_a_backchannel_is_not_talked_over() -> None:
    """ "okay ... okay but": a caller who goes on after a listener's word is more likely going
    on; the reply stays paused until the words are judged."""
    taker = replying(TALKING)
    run(taker, ["S" * 15, WordsHeard("okay"), "." * 20])
    timeline = run(taker, ["." * 5 + "S" * 20, WordsHeard("okay okay"), "S" * 5], start_ms=700)
    assert kinds(timeline)[:2] == [BeginCapture, PauseReply]
    assert ResumeReply not in kinds(timeline)


def test_a_caller_going_on_over_their_replys_first_words_is_not_talked_over() -> None:
    taker = TurnTaker(TALKING)
    run(taker, ["S" * 20 + "." * 16])  # voice end 400, committed at 700
    taker.receive(ReplyStarted(5), 720)
    timeline = run(taker, ["S" * 15, WordsHeard("yeah"), "S" * 5], start_ms=720)
    assert PauseReply in kinds(timeline) and ResumeReply not in kinds(timeline)


def test_clearing_the_input_while_talking_over_sends_no_second_resume() -> None:
    taker = replying(TALKING)
    run(taker, ["S" * 15, WordsHeard("okay"), "S" * 2])
    taker.receive(InputCleared(), 340)
    assert ResumeReply not in kinds([(340, a) for a in taker.actions()])
    assert taker.state is UserState.LISTENING and taker.active_reply == 5


# -- a listener's recogniser (`ListenerWordsHeard`): a model that expects "mm-hmm" and "okay"


def test_a_listeners_recogniser_lets_the_reply_talk_on_under_a_hum_the_turns_one_misheard() -> None:
    """flite rms's "mm-hmm": the turn's recogniser hears "bump them", the listener's model
    "mm-hmm"; the reply talks on under it, and the overlap is judged on the turn's words as
    ever. Without the listener's words, the reply stays paused."""
    script: list[str | WordsHeard | ListenerWordsHeard] = [
        "S" * 8,
        WordsHeard("bump"),
        ListenerWordsHeard("mm-hmm"),
    ]
    script += ["S" * 8, WordsHeard("bump them"), "S" * 4 + "." * 20]
    timeline = run(replying(TALKING), script)
    assert kinds(timeline)[:3] == [BeginCapture, PauseReply, ResumeReply]
    resumed_at, resumed = next((t, a) for t, a in timeline if isinstance(a, ResumeReply))
    assert resumed == ResumeReply(5, under_voice=True) and resumed_at == 260
    alone = [step for step in script if not isinstance(step, ListenerWordsHeard)]
    assert ResumeReply not in kinds(run(replying(TALKING), alone))


def test_either_recognisers_listeners_word_lets_the_reply_talk_on() -> None:
    """flite slt's "okay": the listener's model hears "the okay", the turn's "okay": either
    naming nothing but a listener's word is enough. Neither naming one (a sentence's "the
    price" and "ah the prize") keeps the reply paused."""
    script: list[Step] = ["S" * 8, ListenerWordsHeard("the okay"), WordsHeard("okay"), "S" * 10]
    assert ResumeReply in kinds(run(replying(TALKING), script))
    script = ["S" * 8, ListenerWordsHeard("ah the prize"), WordsHeard("the price"), "S" * 10]
    assert ResumeReply not in kinds(run(replying(TALKING), script))


def test_no_listeners_words_are_wanted_when_the_reply_never_talks_over() -> None:
    talking, strict = replying(TALKING), replying(WORDS)  # WORDS: talk_over_after_ms=0
    run(talking, ["S" * 8])
    run(strict, ["S" * 8])
    assert talking.wants_words and talking.wants_listener_words
    assert strict.wants_words and not strict.wants_listener_words
    run(talking, ["." * 30], start_ms=160)
    assert not talking.wants_listener_words  # the overlap is over


def test_a_listeners_words_made_of_the_echo_are_not_the_callers() -> None:
    """Over the echo, the listener's model makes "each at" of the reply's echo the capture
    began with, and "mm-hmm" of the caller: those it placed over frames the gate took for the
    echo are dropped, as the turn's recogniser's are, and the reply talks on."""
    taker = replying(TALKING)
    feed_masked(taker, 30, 0)  # 600 ms of the reply's echo: the room echoes
    spans = (WordSpan("each", 420, 500), WordSpan("at", 500, 590), WordSpan("mm-hmm", 620, 860))
    script: list[Step] = [
        "S" * 14,
        ListenerWordsHeard("each at mm-hmm", spans),
        WordsHeard("each at"),
        "S" * 3,
    ]
    timeline = run(taker, script, start_ms=600)
    assert ResumeReply(5, under_voice=True) in [a for _, a in timeline]
    unplaced = replying(TALKING)
    feed_masked(unplaced, 30, 0)
    script[1] = ListenerWordsHeard("each at mm-hmm")
    assert ResumeReply not in kinds(run(unplaced, script, start_ms=600))


@pytest.mark.parametrize(
    ("return_db", "talks_over"), [(None, True), (-18.0, True), (-15.0, True), (-12.0, False)]
)
def test_a_loud_echo_keeps_the_reply_from_talking_on(return_db: float | None, talks_over: bool) -> None:
    """Where the gate has learned a loud echo (-12 dB: the bench's -6 dB room), the reply
    talked on would bring its echo back into the capture, where the recogniser makes words of
    it that take the floor: it stays paused until the words are judged."""
    taker = replying(TALKING)
    taker.receive(EchoReturnMeasured(return_db), 0)
    timeline = run(taker, ["S" * 15, WordsHeard("okay"), "S" * 5])
    assert (ResumeReply in kinds(timeline)) is talks_over


@pytest.mark.parametrize(
    ("listener_words", "echoes", "talks_over"),
    [("oh", True, False), ("ah", True, False), ("oh mm-hmm", True, True), ("oh", False, True)],
)
def test_over_an_echo_a_bare_vowel_from_the_listeners_model_is_not_enough(
    listener_words: str, echoes: bool, talks_over: bool
) -> None:
    """The listener's model makes "ah" of a sentence's first vowel and "oh" of the echo around
    a hum: in a room heard to echo, those alone do not let the reply talk on; a hum's own token
    does, and in a quiet room so does a vowel (as the turn's recogniser's "oh" always has)."""
    taker = replying(TALKING)
    start_ms = 0
    if echoes:
        feed_masked(taker, 30, 0)  # 600 ms of the reply's echo: the room echoes
        start_ms = 600
    script: list[Step] = ["S" * 14, ListenerWordsHeard(listener_words), WordsHeard("the"), "S" * 3]
    assert (ResumeReply in kinds(run(taker, script, start_ms=start_ms))) is talks_over
