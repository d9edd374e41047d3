"""Is the caller interrupting, or only saying "uh-huh"? Decided on their words (no I/O).

When the caller talks over a reply in `words` barge-in mode (turns.py), the reply's audio
pauses and the recogniser's words decide what the overlap was:

- an **interruption**: a word that takes the floor ("wait", "stop", "no", "actually",
  "what"), once the recogniser has moved past it to another word or the voice has stopped
  (its last word is a guess: "uh-huh" passes through "but" on its way to "the flood"), or
  more words than a backchannel holds (one of them not a listener's), counted the same way
  (over a speakerphone's echo, slt's "mm-hmm" held three of the caller's words, "tell him
  i'm", on its way to "it's albumin"), or voice that goes on past `decide_within_ms`: the
  reply is cancelled and the caller's speech is a turn. Waiting for a word to settle costs
  the caller no stale audio: the reply is paused meanwhile;
- a **backchannel**: only listener words ("uh-huh", "yeah", "right", "okay", "mm-hmm"), or
  a few unclear ones in a short burst: the reply resumes where it paused (or has already:
  while the words heard are a listener's tokens, it talks on under them, `talk_over_after_ms`);
- **noise**: no words at all (a cough, a door, a keyboard): the reply resumes;
- **echo**: words the reply itself has been saying (its own voice came back through a
  speakerphone or a phone line's echo, past the echo canceller): the reply resumes. The
  server knows what it said, so its own words cannot take the floor from it; while they are
  heard, voice going on past `decide_within_ms` is not an interruption either.

Over a speakerphone the recogniser hears the reply's echo beside the caller, and makes words of
it: an "uh-huh" over the echo came out as three or four words ("isa op", "each of a duo"),
which the count rule took for an interruption. Where the recogniser places its words
(`WordSpan`, a TimesWords recogniser) and the room has been heard to echo (the gate masked
voice before the caller began: `echo_heard_ms`), only the caller's are judged: a word is the
echo's when the echo gate (echo_gate.py) took for the echo more of the voice heard over it
than it passed as the caller's (`VoiceLedger`, `callers_words`). The gate decides frame by frame,
on energy, so a caller's word keeps the frames where their voice is louder than the echo
could be; the recogniser itself hears the audio whole. In such a room the words it makes of a
listener's "uh-huh" blended with the echo ("oh hello", "you don't": `ECHO_UNSURE_WORDS`) do
not take the floor alone, and more words than a backchannel holds take it by their count only
over as much of the caller's own voice as a sentence has (`count_voice_ms`): the recogniser
made three words of a listener's "yeah" and the echo around it ("eat at all"), and three of the
echo that passed the gate after a resume, judged with the "yeah" they followed ("yeah i on").

A caller who goes on after a pause inside their sentence ("four ... queen of clubs") has had the
turn ended by the silence, and the reply to "four" has begun: a voice that began by
`going_on_within_ms` after the reply started (before the caller can have heard much of it; a
listener's "uh-huh" answers something heard) is judged as theirs going on (`going_on`), where
any word but a listener's takes the floor. Live, "queen of clubs" was otherwise two unclear words, a
backchannel: the reply to "four" played on and the caller's words were lost.

Why unclear short bursts resume rather than cancel: PocketSphinx's language model has no
"mm-hmm" and holds "uh-huh" as a word as rare as "dakota" (unigram log-probability -123481
against -70269 for "okay"), so it hears them as one or two unrelated words ("ahead", "the
flood", "aha" in our measurements, loadtests/bench_barge_in.py), while a caller who really wants
the floor keeps talking, which `decide_within_ms` and the word count catch, or uses one of
the words that take it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from server.model.base import WordSpan

BACKCHANNEL_WORDS = frozenset(
    {
        # listener tokens as a recogniser spells them, and what it hears for them
        "uh", "huh", "uhhuh", "uh-huh", "aha", "ah", "oh", "um", "umm", "hm", "hmm", "mm", "mmm",
        "mhm", "mm-hmm", "mmhmm", "yeah", "yea", "yes", "yep", "yup", "ya", "right", "okay", "ok",
        "alright", "all", "sure", "i", "see", "got", "it", "cool", "nice", "great", "wow",
        "really", "true", "exactly", "indeed", "fine", "good", "perfect", "thanks", "thank",
        "you", "uhuh", "gotcha", "makes", "sense", "interesting", "totally", "absolutely",
        "definitely", "of", "course", "a", "the",
    }
)  # fmt: skip

INTERRUPTION_WORDS = frozenset(
    {
        # words that take the floor, even alone
        "wait", "stop", "no", "nope", "hold", "hang", "sorry", "excuse", "pardon", "actually",
        "but", "what", "why", "how", "where", "please", "hello", "hey", "listen", "repeat",
        "again", "cancel", "enough", "not", "don't", "didn't", "isn't", "wrong", "never",
        "question",
    }
)  # fmt: skip

# the words a reply talks on under while an overlap is judged: a listener's tokens, and what the
# recogniser makes of a hum's start ("oh", "ah"); not "i", "the", "you", with which sentences
# begin as often
TALK_OVER_WORDS = frozenset(
    {
        "okay", "ok", "yeah", "yep", "yup", "yes", "right", "alright", "sure", "uh-huh", "uhhuh",
        "mm-hmm", "mmhmm", "mhm", "hmm", "mm", "mmm", "hm", "aha", "oh", "ah",
    }
)  # fmt: skip

# ... except where the room has been heard to echo: the recogniser makes these of a listener's
# "uh-huh" over the reply's echo ("oh hello", "well" then "hello", "you don't" at -12 dB in
# measure_overlaps: espeak's held-out voices and flite's awb; live, with the words logged,
# "aha where" for espeak's "uh-huh", "what i" for awb's "yeah", "the soviet where" for kal's
# "okay"). In a quiet room no listener's word was heard as them, and they keep the floor: with
# "hello" and "don't" dropped everywhere, one quiet-room "how do I reset my password" was resumed
# as a one-word burst before it was cancelled (live; the word not logged). Over the echo a
# caller's "what ..." or "where ..." still takes the floor by its count, a word or two later
ECHO_UNSURE_WORDS = frozenset({"hello", "don't", "what", "where"})

_WORD = re.compile(r"[a-z']+(?:-[a-z']+)*")


class OverlapKind(Enum):
    INTERRUPTION = "interruption"
    BACKCHANNEL = "backchannel"
    NOISE = "noise"
    ECHO = "echo"


@dataclass(frozen=True, slots=True)
class InterruptionPolicy:
    """How speech over a reply is judged (`words` barge-in mode).

    `pause_after_ms`: voiced time before the reply's audio pauses (the client's buffer, at most
    the playout lead, plays on meanwhile, so shorter clicks are never heard as a gap);
    `decide_within_ms`: voiced time after which speech still going on is an interruption
    whatever its words; `settle_ms`: after the voice stops, how long the recogniser's last
    words are awaited; `words_wait_ms`: ... and, when the recogniser lags behind the audio (a
    busy machine), how long after the voice its decoding is awaited to reach `settle_ms` past
    the voice's end (the reply stays paused meanwhile); `rejoin_within_ms`: a voice that starts
    this soon after a backchannel's or a noise's voice ended continues it (the words from its
    onset on are judged: "thank you ... that is all" takes the floor; after a backchannel the
    reply pauses at the new voice's onset); `going_on_within_ms`: a voice that began by this
    long after the reply started, before the caller can have heard much of it (the silence
    ended their turn on a pause inside the sentence, "four ... queen of clubs"), is them going
    on: any word but a listener's takes the floor; `max_backchannel_words`: more words than
    this, one of them not a listener's, is an interruption."""

    pause_after_ms: int = 120
    decide_within_ms: int = 1000
    settle_ms: int = 150
    words_wait_ms: int = 500
    rejoin_within_ms: int = 800
    going_on_within_ms: int = 250  # the reply's first audio reaches the caller ~0-300 ms after its start
    max_backchannel_words: int = 2
    # ... and, in a room heard to echo, only once the caller's own voice (what the echo gate
    # passed, since the overlap's onset) has lasted this long: the recogniser makes words of
    # the echo around a listener's short word, three of them over 320-576 ms of espeak's
    # "yeah" and "mm-hmm" ("eat at all", "on a tom"), while the sentences it counted had
    # 640 ms or more (measure_overlaps --greeting, BENCHMARKS.md)
    count_voice_ms: int = 600
    # in a room heard to echo, a voice that starts this soon after a backchannel too short for
    # an overlap is the rest of its word: the VAD splits "o ... kay" and "mm ... hmm" (live:
    # 100-220 ms gaps), and the recogniser makes words of the echo around the second syllable
    # ("dakota where i'm" for flite kal's "okay" at -12 dB) ...
    word_gap_ms: int = 300
    word_rest_max_ms: int = 400  # ... if it stops within this much voice (live: "kay" 240 ms)
    # while an overlap is undecided, the paused reply talks on under the caller's words once
    # its voice has lasted this long, as long as they are all `talk_over_words` (0: off; see
    # TurnTaker._talk_over)
    talk_over_after_ms: int = 250
    talk_over_words: frozenset[str] = field(default=TALK_OVER_WORDS)
    # ... not where the echo gate has learned an echo louder than this (dB relative to the
    # reply; the bench's -6 dB room reads about -12, its -12 dB room -18: measure_overlaps)
    talk_over_max_echo_return_db: float = -15.0
    # ... and in a room heard to echo, the listener's recogniser naming only these is not
    # enough: its model makes "ah" of a sentence's first vowel and "oh" of the echo around a
    # hum (espeak's "what do you ..." talked over for 300 ms at -9 dB; kal16's "mm-hmm" heard
    # as "oh", talked over, then "oh how to" took the floor at -20 dB: measure_overlaps)
    echo_unsure_listener_words: frozenset[str] = frozenset({"oh", "ah"})
    echo_min_words: int = 2  # words heard before they can be judged an echo of the reply
    echo_share: float = 0.6  # ... and the share of them among the reply's latest words
    echo_window_words: int = 40  # the reply's latest words (text runs ahead of the audio)
    # a placed word is the caller's when at least this share of the voice heard over it passed
    # the echo gate (no voice at all: the caller's, as any word a recogniser cannot place)
    caller_word_share: float = 0.5
    # ... once the room is known to echo: the gate masked this much voice before the overlap,
    # not counting the last `echo_heard_before_ms` before its onset (a quiet caller's first
    # syllables, masked until the gate let them through; the capture's padding). Until then
    # the masking is the gate's caution about an echo it has not heard (a quiet caller early
    # in a session's first reply, with no echo at all, is masked too), and every word counts
    echo_heard_ms: int = 150
    echo_heard_before_ms: int = 300
    backchannel_words: frozenset[str] = field(default=BACKCHANNEL_WORDS)
    interruption_words: frozenset[str] = field(default=INTERRUPTION_WORDS)
    echo_unsure_words: frozenset[str] = field(default=ECHO_UNSURE_WORDS)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class VoiceLedger:
    """Whose voice the latest voiced frames held, on the input's clock: the caller's (the VAD
    heard a voice and the echo gate passed it) or the reply's echo (the VAD heard a voice the
    gate took for the echo). Silent frames are not kept; the oldest go first."""

    def __init__(self, max_frames: int = 1024) -> None:  # about half a minute of voice
        self._frames: deque[tuple[int, int, bool]] = deque(maxlen=max_frames)  # start, end, caller's

    def add(self, start_ms: int, duration_ms: int, *, callers: bool) -> None:
        self._frames.append((start_ms, start_ms + duration_ms, callers))

    def voice_ms(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """The caller's voice and the echo's over [start_ms, end_ms), in ms."""
        callers = echo = 0
        for frame_start, frame_end, is_callers in reversed(self._frames):
            if frame_end <= start_ms:
                break  # the frames are in order: none older reaches the span
            overlap = min(frame_end, end_ms) - max(frame_start, start_ms)
            if overlap > 0:
                if is_callers:
                    callers += overlap
                else:
                    echo += overlap
        return callers, echo


def callers_words(spans: Sequence[WordSpan], voices: VoiceLedger, policy: InterruptionPolicy) -> str:
    """The words of `spans` the caller said, as text: those over which the echo gate passed
    at least `caller_word_share` of the voice heard (or heard none: the VAD is not a word
    aligner, and a word it heard no voice in is kept, as without spans)."""
    kept = []
    for span in spans:
        callers, echo = voices.voice_ms(span.start_ms, span.end_ms)
        if callers + echo == 0 or callers >= policy.caller_word_share * (callers + echo):
            kept.append(span.word)
    return " ".join(kept)


def echoes_reply(text: str, reply_text: str, policy: InterruptionPolicy) -> bool:
    """Whether the words heard are mostly the reply's own latest words."""
    words = words_of(text)
    if len(words) < policy.echo_min_words:
        return False
    recent = set(words_of(reply_text)[-policy.echo_window_words :])
    return sum(word in recent for word in words) >= policy.echo_share * len(words)


def classify_overlap(
    text: str,
    policy: InterruptionPolicy,
    *,
    final: bool,
    reply_text: str = "",
    going_on: bool = False,
    over_echo: bool = False,
    callers_voice_ms: int | None = None,
) -> OverlapKind | None:
    """What the words heard over the reply (whose text so far is `reply_text`) make of the
    overlap; None while undecided (`final`: the voice has stopped and its words have
    settled, so it is decided). `going_on`: the voice began just as a reply to the caller's own
    turn started (the silence ended it on a pause inside their sentence): any word but a
    listener's takes the floor, as one that takes it always does. `over_echo`: the room has
    been heard to echo, and `echo_unsure_words` no longer take the floor alone;
    `callers_voice_ms` (there): the caller's own voice so far, which more words than a
    backchannel holds must fill `count_voice_ms` of to take the floor by their count."""
    words = words_of(text)
    floor_words = (
        policy.interruption_words - policy.echo_unsure_words if over_echo else policy.interruption_words
    )
    # a listener's words the reply happens to have said too ("thank you") are the caller's:
    # either way the reply resumes, but a caller who goes on is then heard as going on
    listener_only = bool(words) and all(word in policy.backchannel_words for word in words)
    if not listener_only and echoes_reply(text, reply_text, policy):
        return OverlapKind.ECHO if final else None
    # the recogniser's last word is its guess so far: a listener's "uh-huh" passes through
    # "the", "but", "of" on its way to "the flood"; a word that takes the floor, or one more
    # than a backchannel holds, counts once a later word follows it, or when the voice has
    # stopped (the reply stays paused meanwhile)
    settled = words if final else words[:-1]
    if any(word in floor_words for word in settled):
        return OverlapKind.INTERRUPTION
    if going_on and any(word not in policy.backchannel_words for word in settled):
        return OverlapKind.INTERRUPTION
    unknown = [word for word in settled if word not in policy.backchannel_words]
    voiced = callers_voice_ms is None or callers_voice_ms >= policy.count_voice_ms
    if unknown and len(settled) > policy.max_backchannel_words and voiced:
        return OverlapKind.INTERRUPTION
    if not final:
        return None
    return OverlapKind.BACKCHANNEL if words else OverlapKind.NOISE
