"""TurnTaker: who has the floor, decided without I/O and without a clock.

The conversation loop feeds it classified audio frames and reply lifecycle events, each with
`now_ms` on the *input stream's* clock (sample count of audio received), drains `actions()`
after every `receive()`, and executes them. Silence timeouts are deadlines: the loop asks
`next_deadline()` and sends `Tick()` once its clock reaches it.

User states (the assistant's reply is tracked separately, as the id of the active reply):

    LISTENING --voice onset--> VOICE_PENDING --voiced >= required--> USER_SPEAKING
        ^                         |  (announce speech_started;              |
        |  voice ends too soon    |   cancel the active reply if allowed)   | voice offset
        +---(noise, discarded)----+                                         v
        +<--silence >= silence_duration_ms (speech_stopped, commit, reply)-- ENDPOINTING
                                     voice resumes: back to USER_SPEAKING --+

`required` is `min_speech_ms`, or `barge_in_min_ms` while a reply is active and may be
interrupted: a cough during the reply does not cut the assistant off.

Speculation: after `speculative_silence_ms` of ENDPOINTING silence (when no reply is active
and one would be created), PrepareReply lets the loop finish the transcript and start the
reply without sending anything; if the voice resumes, AbandonPreparedReply throws that work
away unheard; at the end of the turn StartReply adopts it.

Semantic end of turn (`TurnOptions.semantic`, OpenAI's `semantic_vad`): the silence that
ends the turn depends on the caller's words (end_of_turn.py). The voice's offset is called
after one unvoiced frame (`semantic_hangover_ms`) instead of the hangover, and ENDPOINTING
begins with ScoreCompletion: the loop scores the words heard so far and answers with
CompletionScored (None if it cannot score); it may score the pause again when the recogniser's
words change (its last word often arrives after the voice stopped), the newest score winning
until the reply is prepared. Until the score arrives the turn ends after the
policy's unscored silence; complete words end it after the short silence, and their reply is
prepared at once; incomplete ones wait longer, their reply prepared `SEMANTIC_PREPARE_LEAD_MS`
before the wait ends. Onsets bridge gaps as in server VAD (`vad_hangover_ms`), so barge-in and
noise rejection are the same in both modes.

Interruptions decided on words (`TurnOptions.interruption`, the `words` barge-in mode; see
interruptions.py). While a reply is active and may be interrupted, a voice that has been
voiced for `pause_after_ms` pauses the reply's audio (PauseReply); at `barge_in_min_ms` it is
an OVERLAP, judged by the recogniser's words (WordsHeard, fed by the loop whenever they
or the audio they cover change) and its length. Once its voice stops, the words are final
`settle_ms` later, or, when the recogniser lags behind the audio, once it has decoded that far
(at most `words_wait_ms` after the voice); a voice starting again meanwhile, its onset not yet
complete, holds the judgement until the onset is made (the overlap goes on) or fails:

    VOICE_PENDING --voiced >= barge_in_min_ms--> OVERLAP --voice offset--> OVERLAP_ENDING
          | too short, no words: noise              |  interruption words, or     | settle_ms later:
          v                                         |  voice past decide_within   | words judged
    IgnoreOverlap (resumes the reply)               v                             v
                                   CancelReply + AnnounceSpeechStarted   backchannel / noise:
                                   (then USER_SPEAKING / ENDPOINTING)    IgnoreOverlap

While an overlap is undecided the paused reply talks on under a listener's word ("okay" lasts
up to 700 ms): ResumeReply(under_voice=True) once the voice has lasted `talk_over_after_ms` and
every word heard so far is one of `talk_over_words`, PauseReply again as soon as one is not
(`_talk_over`); the judgement is the same either way. Where a second recogniser decodes the
same speech with a model that expects a listener's short words (ListenerWordsHeard, fed when
`wants_listener_words`), either's words may say it: the general model makes "bump them" of a
hummed "mm-hmm", and "the auto" of "uh-huh" over the echo; the listener's makes "the okay" of
flite slt's "okay", which the general model names.
A burst too short for an overlap that holds words (or may: the recogniser has not decoded its
end yet) is judged on them as an overlap that ended. A voice resuming in OVERLAP_ENDING goes
back to OVERLAP. If the reply ends while the overlap is undecided (it had sent all its audio),
the overlap is still judged as one (the reply's echo outlasts it), except that a backchannel is
then a turn: "yes" answers the reply's question (not a short burst's one listener word: as
often the tail of the reply's own echo). Nothing is announced before the decision, so a
client that stops its playback on `speech_started` never does so for a backchannel. A voice
that began by `going_on_within_ms` after the reply started (before the caller can have heard
much of it: the silence ended their turn on a pause inside the sentence, "four ... queen of
clubs") is the caller going on over the reply to their first words: any word but a
listener's takes the floor. A voice
that starts within `rejoin_within_ms` of a backchannel's end continues it ("okay ... but where
is my order"): the reply pauses at its onset, the capture goes on from the backchannel's onset
(kept open since the reply resumed, so the recogniser hears on instead of decoding it all
again; EndCapture drops it if no voice comes within the window), and the words are judged
together, a burst too short for an overlap included (`decide_within_ms` still counts from the
new voice's own onset, so "yeah ... yeah" stays a backchannel); if the reply has ended
meanwhile, the new voice is a turn from that onset. After wordless noise the same
holds, except that the reply pauses `pause_after_ms` into the new voice as usual: a sentence
the echo gate chopped into short bursts is judged as one. One exception, in a room heard to
echo: a voice that starts within `word_gap_ms` of a backchannel too short for an overlap, and
stops within `word_rest_max_ms` of voice, is the rest of that word (the VAD split "o ...
kay"): once settled it resumes the reply, whatever words the recogniser made of it with the
echo; a voice going on meanwhile, or a further burst, is judged with all the words. In the
`voice` mode (interruption None) any voice of `barge_in_min_ms` cancels.

Turns detected by the model (`TurnOptions.model_detects_turns`: the realtime profile with the
upstream's VAD). The loop feeds no frames; the model's ModelSpeechStarted / ModelSpeechStopped
drive the same announcements: LISTENING --started--> USER_SPEAKING (cancel the active reply if
allowed: any speech the model hears over it is an interruption) --stopped--> LISTENING (speech
stopped, commit, reply). No capture, no speculation, no overlap judging: the model decided.

Invariants:
- A paused reply is resumed (IgnoreOverlap, or ResumeReply when the input is cleared) or
  cancelled (CancelReply) or ends by itself. PauseReply is issued once per overlap, and again
  only after a ResumeReply(under_voice=True) in the same overlap.
- Every AnnounceSpeechStopped follows an AnnounceSpeechStarted of the same turn.
- CancelReply is issued at most once per reply, and only for the active reply.
- All times are input-stream milliseconds; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from server.errors import TurnStateError
from server.model.base import WordSpan
from server.streaming.end_of_turn import SemanticPolicy
from server.streaming.interruptions import (
    InterruptionPolicy,
    OverlapKind,
    VoiceLedger,
    callers_words,
    classify_overlap,
    echoes_reply,
    words_of,
)
from server.vad.detector import DetectorOptions, SpeechDetector, VoiceStarted, VoiceStopped


class UserState(Enum):
    LISTENING = "listening"
    VOICE_PENDING = "voice_pending"
    USER_SPEAKING = "user_speaking"
    ENDPOINTING = "endpointing"
    PREPARED = "prepared"  # still endpointing, and a reply is being prepared speculatively
    OVERLAP = "overlap"  # talking over the paused reply; interruption or backchannel undecided
    OVERLAP_ENDING = "overlap_ending"  # ... the voice stopped; its last words are awaited


@dataclass(frozen=True, slots=True)
class TurnOptions:
    threshold: float = 0.5
    min_speech_ms: int = 120
    barge_in_min_ms: int = 250
    silence_duration_ms: int = 300
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    speculative_silence_ms: int | None = None
    vad_hangover_ms: int = 90
    vad_min_voiced_ms: int = 60
    semantic: SemanticPolicy | None = None  # semantic end of turn; silence_duration_ms unused
    semantic_hangover_ms: int = 30  # one VAD frame: the pause is scored as soon as it begins
    interruption: InterruptionPolicy | None = None  # `words` barge-in mode; None: `voice`
    model_detects_turns: bool = False  # the model's VAD: ModelSpeechStarted/Stopped, no frames

    def detector_options(self, *, user_speaking: bool = False) -> DetectorOptions:
        """The VAD hysteresis; in semantic mode the offset of a turn's speech is called
        after `semantic_hangover_ms` (`user_speaking`), while onsets (noise, barge-in) keep
        the server-VAD hangover."""
        if self.semantic is not None:
            hangover_ms = self.semantic_hangover_ms if user_speaking else self.vad_hangover_ms
        else:
            hangover_ms = min(self.vad_hangover_ms, self.silence_duration_ms)
        return DetectorOptions(
            threshold=self.threshold, min_voiced_ms=self.vad_min_voiced_ms, hangover_ms=hangover_ms
        )


# semantic mode: an incomplete turn's reply is prepared this long before its silence ends
SEMANTIC_PREPARE_LEAD_MS = 300


# --- inputs (past tense) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameClassified:
    """One VAD frame [start_ms, start_ms + duration_ms) with its speech probability."""

    start_ms: int
    duration_ms: int
    probability: float
    # the echo gate took the frame for the reply's echo although the VAD heard a voice in it
    # (its probability is then 0): the reply's echo is in the caller's audio
    masked: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock reached `now_ms` (sent when a deadline is due)."""


@dataclass(frozen=True, slots=True)
class ReplyStarted:
    reply_id: int


@dataclass(frozen=True, slots=True)
class ReplyFinished:
    """The reply ended (completed, failed or cancelled) and its audio has been played out."""

    reply_id: int


@dataclass(frozen=True, slots=True)
class InputCleared:
    """The client cleared or committed the input buffer itself: forget the current turn."""


@dataclass(frozen=True, slots=True)
class CompletionScored:
    """The answer to ScoreCompletion(voice_end_ms): the probability that the caller's words
    end their turn, or None if they cannot be scored."""

    voice_end_ms: int
    probability: float | None


@dataclass(frozen=True, slots=True)
class WordsHeard:
    """The recogniser's words for the caller's current speech, or the audio they cover,
    changed (fed while the caller talks over a reply, `TurnTaker.wants_words`); `reply_text`:
    the reply's text so far; `through_ms`: the input position the recogniser has decoded up
    to (None: it cannot say); `spans`: the same words placed on the input's clock (None: the
    recogniser does not place them), so that the words it made of the reply's echo are not
    taken for the caller's (interruptions.py)."""

    words: str
    reply_text: str = ""
    through_ms: int | None = None
    spans: tuple[WordSpan, ...] | None = None


@dataclass(frozen=True, slots=True)
class EchoReturnMeasured:
    """The echo gate's learned echo return changed: the reply's echo in the microphone, dB
    relative to the reply (None: not learned yet). A loud echo keeps the reply from talking on
    under a voice (`InterruptionPolicy.talk_over_max_echo_return_db`)."""

    return_db: float | None


@dataclass(frozen=True, slots=True)
class ListenerWordsHeard:
    """A second recogniser's words for the same speech as WordsHeard, from a model that
    expects a listener's short words ("mm-hmm", "okay"; `pocketsphinx_listener`), changed.
    They only say whether the paused reply may talk on under the voice (`_talk_over`), as the
    turn's recogniser's may. `spans`: as WordsHeard's."""

    words: str
    spans: tuple[WordSpan, ...] | None = None


@dataclass(frozen=True, slots=True)
class ModelSpeechStarted:
    """The model's own VAD heard the caller start at `audio_start_ms` (model_detects_turns)."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class ModelSpeechStopped:
    """... and stop at `audio_end_ms`; the model has committed the turn."""

    audio_end_ms: int


TurnInput = (
    FrameClassified
    | Tick
    | ReplyStarted
    | ReplyFinished
    | InputCleared
    | CompletionScored
    | WordsHeard
    | ListenerWordsHeard
    | EchoReturnMeasured
    | ModelSpeechStarted
    | ModelSpeechStopped
)


# --- outputs (imperative) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeginCapture:
    """A voice onset at `from_ms`: start feeding the model audio (it may yet be noise)."""

    from_ms: int


@dataclass(frozen=True, slots=True)
class AnnounceSpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class AnnounceSpeechStopped:
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class CommitTurn:
    """Commit the input buffer as the user's turn (it ended at `audio_end_ms`)."""

    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class StartReply:
    pass


@dataclass(frozen=True, slots=True)
class ScoreCompletion:
    """Semantic mode: the voice stopped at `voice_end_ms`; score the words heard so far and
    answer with CompletionScored(voice_end_ms, ...)."""

    voice_end_ms: int


@dataclass(frozen=True, slots=True)
class PrepareReply:
    """The turn has probably ended at `audio_end_ms`: start the reply, but send nothing yet."""

    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class AbandonPreparedReply:
    """The user went on talking: discard the prepared reply without a sound."""


@dataclass(frozen=True, slots=True)
class CancelReply:
    reply_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PauseReply:
    """The caller is talking over the reply: stop sending its audio, keep the rest queued
    (again, after a `ResumeReply(under_voice=True)`, once their words are not a listener's)."""

    reply_id: int


@dataclass(frozen=True, slots=True)
class ResumeReply:
    """Send the paused reply's audio again from where it stopped: the client cleared the
    input, or (`under_voice`) the caller's words so far are a listener's and the reply talks
    on under them while the overlap is judged (`InterruptionPolicy.talk_over_after_ms`)."""

    reply_id: int
    under_voice: bool = False


@dataclass(frozen=True, slots=True)
class IgnoreOverlap:
    """Speech over the reply in [start_ms, end_ms) was a backchannel or noise, not a turn:
    drop its audio (nothing was announced) and resume `paused_reply` where it stopped.
    `keeps_capture`: a voice may yet continue it (rejoin): the capture goes on, its audio
    still heard by the recogniser, until EndCapture or that voice's BeginCapture."""

    kind: OverlapKind
    words: str
    start_ms: int
    end_ms: int
    paused_reply: int | None
    keeps_capture: bool = False


@dataclass(frozen=True, slots=True)
class DiscardNoise:
    """A voiced burst too short to be a turn (cough, click); nothing was announced.
    `keeps_capture`: as IgnoreOverlap's (a click between an overlap and its continuation)."""

    start_ms: int
    end_ms: int
    keeps_capture: bool = False


@dataclass(frozen=True, slots=True)
class EndCapture:
    """The capture an IgnoreOverlap or DiscardNoise kept was not continued: drop its audio."""


@dataclass(frozen=True, slots=True)
class ReportIdle:
    """No speech for idle_timeout_ms after the assistant finished."""

    audio_ms: int


TurnAction = (
    BeginCapture
    | AnnounceSpeechStarted
    | AnnounceSpeechStopped
    | CommitTurn
    | StartReply
    | ScoreCompletion
    | PrepareReply
    | AbandonPreparedReply
    | CancelReply
    | PauseReply
    | ResumeReply
    | IgnoreOverlap
    | DiscardNoise
    | EndCapture
    | ReportIdle
)


@dataclass(frozen=True, slots=True)
class _Rejoin:
    """An overlap that resumed the reply as a backchannel or noise: a voice starting by
    `until_ms` continues it, judged from `onset_ms`, pausing the reply at its onset if
    `pause_at_once` (after words; after noise it waits `pause_after_ms` as any voice)."""

    until_ms: int
    onset_ms: int
    pause_at_once: bool
    voice_end_ms: int  # where that overlap's voice stopped
    syllable: bool  # ... one burst too short for an overlap: perhaps a word's first syllable


_END_OF_INPUT_MS = 2**62  # later than any input position: "from then on"


class TurnTaker:
    """Server-VAD turn-taking. See the module docstring for the state diagram."""

    def __init__(self, options: TurnOptions) -> None:
        self.options = options
        self.state = UserState.LISTENING
        self._detector = SpeechDetector(options.detector_options())
        self._detector_speaking = False  # the state the detector's options were built for
        self._actions: list[TurnAction] = []
        self._onset_ms = 0
        self._voice_end_ms = 0
        self._active_reply: int | None = None
        self._idle_since_ms: int | None = None
        self._scored = False  # semantic mode: this pause's words were scored
        self._completion: float | None = None  # ... and their score (None: cannot be scored)
        self._paused_reply: int | None = None  # the active reply, paused by this overlap
        self._talking_over = False  # ... and resumed under the caller's listener words since
        self._over_reply = False  # the caller's current voice began over a reply (it paused it)
        self._overlap_words = ""  # the recogniser's words for the speech over the reply
        self._overlap_spans: tuple[WordSpan, ...] | None = None  # ... placed (None: unplaced)
        self._listener_words: str | None = None  # a listener's recogniser's (None: none yet)
        self._listener_spans: tuple[WordSpan, ...] | None = None
        self._echo_return_db: float | None = None  # the echo gate's (EchoReturnMeasured)
        self._voices = VoiceLedger()  # the frames' voices: the caller's or the reply's echo
        self._echo_heard_for: int | None = None  # the onset of the overlap _echo_heard is for
        self._echo_heard = False  # ... the gate masked voice before it began (_room_echoes)
        self._words_through_ms: int | None = None  # ... the input they cover (None: unknown)
        self._reply_text = ""  # ... and the text of that reply so far
        self._rejoin: _Rejoin | None = None  # the overlap a new voice may continue
        self._continuing: _Rejoin | None = None  # ... the one the current voice continues
        self._voice_onset_ms = 0  # the current voice's own onset (decide_within counts from it)
        self._short_burst = False  # the overlap being judged is a burst too short for an overlap
        # ... may be the rest of a backchannel's word (`_finishes_word`): no words decide it
        self._finishing_word = False
        self._reply_requested = False  # StartReply issued, its ReplyStarted not yet received
        # when the latest reply started, if it answers a turn committed here (None: the client
        # asked for it, response.create)
        self._turn_reply_started_ms: int | None = None

    # -- public API

    @property
    def active_reply(self) -> int | None:
        return self._active_reply

    @property
    def scoring_pause_ms(self) -> int | None:
        """Semantic mode: the voice end of the pause whose words are being scored (scores
        are still taken), else None."""
        if self.options.semantic is None or self.state is not UserState.ENDPOINTING:
            return None
        return self._voice_end_ms

    @property
    def hears_voice(self) -> bool:
        """A voice is being heard, from its onset until it is dismissed or its turn ends: the
        caller may be talking."""
        return self.state is not UserState.LISTENING

    @property
    def overlap_hears_echo(self) -> bool:
        """The echo gate masked frames of the current overlap: the recogniser hears the reply's
        echo in it, beside the caller (the debug log says so with each overlap's words; where
        the recogniser places its words, those over the masked frames are not the caller's:
        `_callers_words`)."""
        _, echo_ms = self._voices.voice_ms(self._onset_ms, _END_OF_INPUT_MS)
        return echo_ms > 0

    @property
    def overlap_callers_words(self) -> str:
        """The words of the current (or last) overlap the caller said, as they are judged."""
        return self._callers_words()

    @property
    def wants_words(self) -> bool:
        """The caller is talking over a paused reply: feed WordsHeard when their words change."""
        return self._over_reply

    @property
    def wants_listener_words(self) -> bool:
        """... and the reply may talk on under a listener's word: feed ListenerWordsHeard too."""
        policy = self.options.interruption
        return self._over_reply and policy is not None and policy.talk_over_after_ms > 0

    def configure(self, options: TurnOptions) -> None:
        """New options take effect from the next frame; the current state is kept."""
        self.options = options
        self._sync_detector(force=True)

    def _sync_detector(self, *, force: bool = False) -> None:
        """The detector's hysteresis follows the state (semantic mode); rebuilt only when
        the state crosses USER_SPEAKING or the options change, not on every frame."""
        speaking = self.state is UserState.USER_SPEAKING
        if force or speaking != self._detector_speaking:
            self._detector_speaking = speaking
            self._detector.options = self.options.detector_options(user_speaking=speaking)

    def receive(self, event: TurnInput, now_ms: int) -> None:
        self._receive(event, now_ms)
        self._sync_detector()

    def _receive(self, event: TurnInput, now_ms: int) -> None:
        match event:
            case FrameClassified() if self.options.model_detects_turns:
                raise TurnStateError("frames fed while the model detects the turns")
            case FrameClassified():
                if event.masked or event.probability >= self.options.threshold:
                    self._voices.add(event.start_ms, event.duration_ms, callers=not event.masked)
                for voice in self._detector.push(event.probability, event.start_ms, event.duration_ms):
                    self._on_voice(voice, now_ms)
                self._check_pending(now_ms)
                self._check_deadlines(now_ms)
            case Tick():
                self._check_deadlines(now_ms)
            case ReplyStarted(reply_id=reply_id):
                self._active_reply = reply_id
                self._turn_reply_started_ms = now_ms if self._reply_requested else None
                self._reply_requested = False
                self._idle_since_ms = None
                self._end_rejoin()
            case ReplyFinished(reply_id=reply_id):
                if self._active_reply == reply_id:
                    self._active_reply = None
                    self._idle_since_ms = now_ms
                    # nothing left to pause; a voice that began over it is still judged as an
                    # overlap (its echo's tail is no turn), but words are then an answer. A
                    # resumed overlap's window stays open: a caller who goes on in it ("four
                    # ... queen of clubs", the reply having ended meanwhile) starts a turn
                    # at its onset, so its first words are not lost
                    self._paused_reply = None
                    self._talking_over = False
            case InputCleared():
                if self.state is UserState.PREPARED:
                    self._actions.append(AbandonPreparedReply())
                self._resume_paused()
                self._over_reply = False
                self._rejoin = None  # the client dropped that audio (the loop drops the capture)
                self.state = UserState.LISTENING
            case WordsHeard(words=words, reply_text=reply_text, through_ms=through_ms, spans=spans):
                self._overlap_words, self._reply_text = words, reply_text
                self._overlap_spans = spans
                self._words_through_ms = through_ms
                if self.state in (UserState.OVERLAP, UserState.OVERLAP_ENDING):
                    self._judge_overlap(now_ms, final=False)
                    self._check_deadlines(now_ms)
            case EchoReturnMeasured(return_db=return_db):
                self._echo_return_db = return_db  # weighed at the next judgement
            case ListenerWordsHeard(words=words, spans=spans):
                self._listener_words, self._listener_spans = words, spans
                if self.state in (UserState.OVERLAP, UserState.OVERLAP_ENDING):
                    self._judge_overlap(now_ms, final=False)
                    self._check_deadlines(now_ms)
            case CompletionScored(voice_end_ms=voice_end_ms, probability=probability):
                # a newer score of the same pause (the recogniser caught up with the last word)
                # replaces the older; once the reply is prepared, the words are final
                if self.state is UserState.ENDPOINTING and voice_end_ms == self._voice_end_ms:
                    self._scored = True
                    self._completion = probability
                    self._check_deadlines(now_ms)
            case ModelSpeechStarted(audio_start_ms=start_ms):
                self._on_model_speech_started(start_ms)
            case ModelSpeechStopped(audio_end_ms=end_ms):
                self._on_model_speech_stopped(end_ms)
            case _:
                raise TurnStateError(f"unknown turn input {event!r}")

    def actions(self) -> list[TurnAction]:
        out, self._actions = self._actions, []
        return out

    def end_silence_ms(self) -> int:
        """The silence that ends the current turn: fixed in server VAD; in semantic mode,
        the policy's for this pause's score."""
        policy = self.options.semantic
        if policy is None:
            return self.options.silence_duration_ms
        return policy.silence_ms(self._completion if self._scored else None)

    def _speculation_deadline(self) -> int | None:
        spec_ms = self.options.speculative_silence_ms
        if spec_ms is None or not self.options.create_response or self._active_reply is not None:
            return None
        silence_ms = self.end_silence_ms()
        policy = self.options.semantic
        if policy is not None and not (self._scored and self._completion is None):
            if not self._scored:
                return None  # wait for the score: complete words are prepared at once
            if not policy.is_complete(self._completion):
                spec_ms = max(spec_ms, silence_ms - SEMANTIC_PREPARE_LEAD_MS)
        if spec_ms >= silence_ms:
            return None
        return self._voice_end_ms + spec_ms

    def may_end_before(self, unclassified_ms: int) -> bool:
        """Whether a due deadline may be acted on (with a Tick) before the latest
        `unclassified_ms` of audio is classified: true when that audio cannot complete a voice
        onset, being shorter than the voiced run an onset still needs. Then its frames, fed
        after the Tick, cannot change what the deadline decided."""
        return self._detector.voiced_run_ms + unclassified_ms < self._detector.options.min_voiced_ms

    def next_deadline(self) -> int | None:
        end = self._voice_end_ms + self.end_silence_ms()
        if self.state is UserState.PREPARED:
            return end
        if self.state is UserState.ENDPOINTING:
            spec = self._speculation_deadline()
            return end if spec is None else min(spec, end)
        if self.state is UserState.OVERLAP_ENDING and self.options.interruption is not None:
            if self._detector.voiced_run_ms:
                return None  # a voice may be starting again: judged once its onset is or is not
            return self._overlap_judged_at()
        if self.state is not UserState.LISTENING:
            return None
        kept = self._rejoin.until_ms if self._rejoin is not None else None
        idle = self._idle_deadline()
        return min((d for d in (kept, idle) if d is not None), default=None)

    def _idle_deadline(self) -> int | None:
        if self._idle_since_ms is None or self.options.idle_timeout_ms is None:
            return None
        return self._idle_since_ms + self.options.idle_timeout_ms

    # -- transitions

    def _interruptible(self) -> bool:
        return self._active_reply is not None and self.options.interrupt_response

    def _barge_in_voice_ms(self) -> int:
        """Voice needed over a reply before it counts: a cough must not cut the assistant off."""
        return max(self.options.barge_in_min_ms, self.options.min_speech_ms)

    def _required_voice_ms(self) -> int:
        return self._barge_in_voice_ms() if self._interruptible() else self.options.min_speech_ms

    def _overlap_judged_at(self) -> int:
        """When the words of an overlap whose voice stopped are final: `settle_ms` after the
        voice, once the recogniser has decoded that far; a busy recogniser lags the audio, and
        words judged before it reached the end of the speech miss the last ones (or all of a
        short phrase's), so the judgement waits for it, up to `words_wait_ms` after the voice."""
        policy = self.options.interruption
        assert policy is not None
        settled_ms = self._voice_end_ms + policy.settle_ms
        through_ms = self._words_through_ms
        if through_ms is None or through_ms >= settled_ms:
            return settled_ms
        return max(settled_ms, self._voice_end_ms + policy.words_wait_ms)

    @property
    def _capture_kept(self) -> bool:
        """The capture of the overlap a new voice may continue is still open (listening, that
        overlap's audio not decoded twice); while a voice is heard, the capture is its own."""
        return self.state is UserState.LISTENING and self._rejoin is not None

    def _end_rejoin(self) -> None:
        """No voice can continue that overlap any more: its kept capture is dropped."""
        if self._capture_kept:
            self._actions.append(EndCapture())
        self._rejoin = None

    def _resume_paused(self) -> None:
        if self._paused_reply is not None and not self._talking_over:
            self._actions.append(ResumeReply(self._paused_reply))
        self._paused_reply = None
        self._talking_over = False

    def _ignore_overlap(self, kind: OverlapKind, end_ms: int) -> None:
        paused, self._paused_reply = self._paused_reply, None
        self._talking_over = False
        self._over_reply = False
        policy = self.options.interruption
        self._rejoin = None
        if paused is not None and policy is not None and kind in (OverlapKind.BACKCHANNEL, OverlapKind.NOISE):
            # words pause at once ("okay ... but"); wordless voice waits pause_after_ms as
            # ever (coughs), but a burst after it is judged with it: a voice the echo gate or
            # the VAD chopped into bursts too short for an overlap is a sentence, not noise
            at_once = kind is OverlapKind.BACKCHANNEL
            until_ms = end_ms + policy.rejoin_within_ms
            self._rejoin = _Rejoin(until_ms, self._onset_ms, at_once, end_ms, self._short_burst)
        kept = self._rejoin is not None
        self._actions.append(
            IgnoreOverlap(kind, self._callers_words(), self._onset_ms, end_ms, paused, keeps_capture=kept)
        )
        self.state = UserState.LISTENING
        if self._active_reply is None:
            self._idle_since_ms = end_ms

    def _take_floor(self, now_ms: int) -> None:
        """The speech over the reply is a turn: cancel the reply (if still active) and
        announce the speech; the turn goes on from where the voice is."""
        self._rejoin = None
        if self._interruptible():
            assert self._active_reply is not None
            self._actions.append(CancelReply(self._active_reply, reason="turn_detected"))
            self._active_reply = None
        self._paused_reply = None
        self._talking_over = False
        self._over_reply = False
        self._actions.append(AnnounceSpeechStarted(audio_start_ms=self._onset_ms))
        if self.state is UserState.OVERLAP_ENDING:
            self.state = UserState.ENDPOINTING
            self._scored, self._completion = False, None
            if self.options.semantic is not None:
                self._actions.append(ScoreCompletion(voice_end_ms=self._voice_end_ms))
        else:
            self.state = UserState.USER_SPEAKING

    def _callers_words(self) -> str:
        """The words heard over the reply that the caller said: all of them, unless the
        recogniser placed them and the room echoes (then not those it made of the echo)."""
        return self._callers_share(self._overlap_words, self._overlap_spans)

    def _callers_share(self, words: str, spans: tuple[WordSpan, ...] | None) -> str:
        """... of `words` placed as `spans` (either recogniser's)."""
        policy = self.options.interruption
        if spans is None or policy is None or not self._room_echoes(policy):
            return words
        return callers_words(spans, self._voices, policy)

    def _room_echoes(self, policy: InterruptionPolicy) -> bool:
        """The gate masked `echo_heard_ms` of voice before this overlap (its last
        `echo_heard_before_ms` aside): the room brings the reply back (once per overlap)."""
        if self._echo_heard_for != self._onset_ms:
            before_ms = self._onset_ms - policy.echo_heard_before_ms
            _, echo_ms = self._voices.voice_ms(0, before_ms)  # as far back as the ledger goes
            self._echo_heard_for, self._echo_heard = self._onset_ms, echo_ms >= policy.echo_heard_ms
        return self._echo_heard

    def _judge_overlap(self, now_ms: int, *, final: bool) -> None:
        policy = self.options.interruption
        assert policy is not None
        words, reply_text = self._callers_words(), self._reply_text
        if self._finishing_word and self._detector.voiced_run_ms > policy.word_rest_max_ms:
            self._finishing_word = False  # too long for the rest of a word: the caller goes on
        if self._finishing_word:
            # the rest of a listener's word the VAD split ("o ... kay"): over the echo the
            # recogniser makes other words of it ("dakota where i'm"); judged when settled as
            # any burst, so a voice going on meanwhile is an overlap judged on its words
            kind = OverlapKind.BACKCHANNEL if final else None
        else:
            over_echo = self._room_echoes(policy)
            kind = classify_overlap(
                words,
                policy,
                final=final,
                reply_text=reply_text,
                going_on=self._going_on(policy),
                over_echo=over_echo,
                callers_voice_ms=self._voices.voice_ms(self._onset_ms, now_ms)[0] if over_echo else None,
            )
        if (
            kind is None
            and self.state is UserState.OVERLAP
            and now_ms - self._voice_onset_ms >= policy.decide_within_ms
            and not echoes_reply(words, reply_text, policy)
        ):
            kind = OverlapKind.INTERRUPTION  # still talking: whatever the words, they want the floor
        if kind is OverlapKind.BACKCHANNEL and self._active_reply is None and not self._short_burst:
            # the reply ended meanwhile: "yes" answers it (a short burst's one listener word
            # is no answer: it is as often the tail of the reply's own echo)
            kind = OverlapKind.INTERRUPTION
        if kind is OverlapKind.INTERRUPTION:
            self._take_floor(now_ms)
        elif kind is not None:
            self._ignore_overlap(kind, self._voice_end_ms)
        else:
            self._talk_over(now_ms, words, policy)

    def _talk_over(self, now_ms: int, words: str, policy: InterruptionPolicy) -> None:
        """While the overlap is undecided, the paused reply plays on under a listener's word:
        once its voice has lasted `talk_over_after_ms`, as long as every word heard so far is
        one of `talk_over_words` ("yeah", "okay", "oh" for a hum); paused again as soon as one
        is not. A listener's "okay" lasts 500-700 ms and is judged only once it has ended and
        settled: the reply would stop for all of it. A pause or resume shorter than the
        client's buffered lead is never heard, so the recogniser's changing guesses cost
        nothing. Not for a voice that continues a backchannel or goes on over the reply's first
        words: those callers are more likely going on. Nor in a room whose echo is loud (the
        gate's learned return above `talk_over_max_echo_return_db`): the reply talked on brings
        its echo back into the capture, where the recogniser makes words of it that take the
        floor ("come on you" of "check on your" at -6 dB). Either recogniser's words may say it:
        the turn's, or a listener's recogniser's (ListenerWordsHeard), those the caller said of
        them (`_callers_share`: not those placed over the echo); in a room heard to echo, not
        the listener's bare "oh" or "ah" (`echo_unsure_listener_words`)."""
        if policy.talk_over_after_ms <= 0 or self._paused_reply is None:
            return
        guesses = [words_of(words)]
        if self._listener_words is not None:
            listeners = words_of(self._callers_share(self._listener_words, self._listener_spans))
            if not (self._room_echoes(policy) and set(listeners) <= policy.echo_unsure_listener_words):
                guesses.append(listeners)
        listening = (
            any(heard and all(word in policy.talk_over_words for word in heard) for heard in guesses)
            and now_ms - self._voice_onset_ms >= policy.talk_over_after_ms
            and (self._echo_return_db is None or self._echo_return_db <= policy.talk_over_max_echo_return_db)
            and self._continuing is None
            and not self._going_on(policy)
        )
        if listening and not self._talking_over:
            self._actions.append(ResumeReply(self._paused_reply, under_voice=True))
            self._talking_over = True
        elif not listening and self._talking_over:
            self._actions.append(PauseReply(self._paused_reply))
            self._talking_over = False

    def _finishes_word(self) -> bool:
        """The voice that just began, within `word_gap_ms` of a backchannel's voice too short
        for an overlap, in a room heard to echo, may be the second syllable of a listener's
        word the VAD split ("o ... kay", "mm ... hmm"): if it stops within `word_rest_max_ms`
        of voice, it is judged a listener's whatever words the recogniser makes of the two
        over the echo. Once: a further burst is judged with all the words since the first, so
        a sentence the gate chopped into bursts still takes the floor; and a backchannel of an
        overlap's length is no syllable (offline, a caller's "why was" heard as "won", and "the
        eight" as "a", went on in such bursts)."""
        policy, rejoin = self.options.interruption, self._continuing
        return (
            policy is not None
            and rejoin is not None
            and rejoin.pause_at_once
            and rejoin.syllable
            and self._active_reply is not None
            and self._voice_onset_ms - rejoin.voice_end_ms <= policy.word_gap_ms
            and self._room_echoes(policy)
        )

    def _going_on(self, policy: InterruptionPolicy) -> bool:
        """The overlap's voice began before the caller can have heard much of a reply to
        their own turn: they go on after a pause inside their sentence."""
        started_ms = self._turn_reply_started_ms
        return started_ms is not None and self._onset_ms <= started_ms + policy.going_on_within_ms

    def _on_voice(self, voice: VoiceStarted | VoiceStopped, now_ms: int) -> None:
        match (self.state, voice):
            case (UserState.LISTENING, VoiceStarted(at_ms=at_ms)):
                # a caller who goes on soon after a backchannel ("thank you, that is all") was
                # not done: all their words are judged together (self._rejoin is kept across a
                # discarded click; a decision clears it)
                rejoin = self._rejoin
                live = rejoin is not None and at_ms <= rejoin.until_ms
                self._continuing = rejoin if live else None
                if not live:
                    self._end_rejoin()  # else its BeginCapture goes on with the kept capture
                self._onset_ms = self._continuing.onset_ms if self._continuing is not None else at_ms
                self._voice_onset_ms = at_ms
                self._over_reply = False
                self._overlap_words = self._reply_text = ""
                self._overlap_spans = None
                self._words_through_ms = None
                self._listener_words, self._listener_spans = None, None
                self._short_burst = False
                self._finishing_word = self._finishes_word()
                self._idle_since_ms = None
                self.state = UserState.VOICE_PENDING
                self._actions.append(BeginCapture(from_ms=self._onset_ms))
            case (UserState.VOICE_PENDING, VoiceStopped(at_ms=at_ms)):
                # any words, the echo's too: a burst the gate chopped from a caller's sentence
                # may hold only the echo's so far, and waits for the sentence to go on
                heard = self._overlap_words or (
                    self._words_through_ms is not None and self._words_through_ms < at_ms
                )
                self._short_burst = self._continuing is None
                if self._over_reply and (self._continuing is not None or heard):
                    # a short burst that continues a backchannel, or that holds words (or may:
                    # the recogniser has not reached its end), is judged on its words, not
                    # dismissed as noise for its length: over an echo, the gate leaves a
                    # caller's sentence in such bursts ("what are your" ... "opening hours")
                    self._voice_end_ms = at_ms
                    self.state = UserState.OVERLAP_ENDING
                    self._judge_overlap(now_ms, final=False)
                    return
                if self._over_reply:
                    self._ignore_overlap(OverlapKind.NOISE, at_ms)
                    return
                # a click that continued an overlap leaves that overlap's capture open
                kept = self._rejoin is not None
                self._actions.append(DiscardNoise(start_ms=self._onset_ms, end_ms=at_ms, keeps_capture=kept))
                self.state = UserState.LISTENING
                if self._active_reply is None:
                    self._idle_since_ms = now_ms
            case (UserState.OVERLAP, VoiceStopped(at_ms=at_ms)):
                self._voice_end_ms = at_ms
                self.state = UserState.OVERLAP_ENDING
            case (UserState.OVERLAP_ENDING, VoiceStarted()):
                self.state = UserState.OVERLAP
                self._short_burst = self._finishing_word = False  # it goes on: an overlap like any other
            case (UserState.USER_SPEAKING, VoiceStopped(at_ms=at_ms)):
                self._voice_end_ms = at_ms
                self.state = UserState.ENDPOINTING
                self._scored, self._completion = False, None
                if self.options.semantic is not None:
                    self._actions.append(ScoreCompletion(voice_end_ms=at_ms))
            case (UserState.ENDPOINTING, VoiceStarted()):
                self.state = UserState.USER_SPEAKING  # a pause inside the turn
            case (UserState.PREPARED, VoiceStarted()):
                self._actions.append(AbandonPreparedReply())
                self.state = UserState.USER_SPEAKING
            case (UserState.LISTENING, VoiceStopped()):
                pass  # the end of voice that began before the client cleared the buffer
            case _:
                raise TurnStateError(f"{voice!r} in state {self.state.value}")

    def _on_model_speech_started(self, start_ms: int) -> None:
        if not self.options.model_detects_turns:
            raise TurnStateError("the model's speech events while the gateway detects the turns")
        if self.state is not UserState.LISTENING:
            return  # the model heard the same speech again (a replay after it reconnected)
        self._onset_ms = start_ms
        self._idle_since_ms = None
        if self._interruptible():
            assert self._active_reply is not None
            self._actions.append(CancelReply(self._active_reply, reason="turn_detected"))
            self._active_reply = None
        self._actions.append(AnnounceSpeechStarted(audio_start_ms=start_ms))
        self.state = UserState.USER_SPEAKING

    def _on_model_speech_stopped(self, end_ms: int) -> None:
        if not self.options.model_detects_turns:
            raise TurnStateError("the model's speech events while the gateway detects the turns")
        if self.state is not UserState.USER_SPEAKING:
            return  # its start was cleared by the client, or came before we listened
        self._voice_end_ms = max(end_ms, self._onset_ms)
        self._actions.append(AnnounceSpeechStopped(audio_end_ms=self._voice_end_ms))
        self._actions.append(CommitTurn(audio_end_ms=self._voice_end_ms))
        if self.options.create_response:
            self._actions.append(StartReply())
            self._reply_requested = True
        self.state = UserState.LISTENING

    def _check_pending(self, now_ms: int) -> None:
        policy = self.options.interruption
        if self.state is UserState.OVERLAP:
            self._judge_overlap(now_ms, final=False)
            return
        if self.state is not UserState.VOICE_PENDING:
            return
        voiced_ms = self._detector.voiced_run_ms
        if policy is not None and (self._interruptible() or self._over_reply):
            at_once = self._continuing is not None and self._continuing.pause_at_once
            pause_ms = 0 if at_once else policy.pause_after_ms
            if self._active_reply is not None and not self._over_reply and voiced_ms >= pause_ms:
                self._over_reply = True
                self._paused_reply = self._active_reply
                self._actions.append(PauseReply(self._active_reply))
            if voiced_ms >= self._barge_in_voice_ms():
                self.state = UserState.OVERLAP
                self._judge_overlap(now_ms, final=False)
            return
        if voiced_ms < self._required_voice_ms():
            return
        if self._interruptible():
            assert self._active_reply is not None
            self._actions.append(CancelReply(self._active_reply, reason="turn_detected"))
            self._active_reply = None
        self._actions.append(AnnounceSpeechStarted(audio_start_ms=self._onset_ms))
        self.state = UserState.USER_SPEAKING

    def _check_deadlines(self, now_ms: int) -> None:
        while (deadline := self.next_deadline()) is not None and now_ms >= deadline:
            match self.state:
                case UserState.ENDPOINTING if deadline < self._voice_end_ms + self.end_silence_ms():
                    self._actions.append(PrepareReply(audio_end_ms=self._voice_end_ms))
                    self.state = UserState.PREPARED
                case UserState.OVERLAP_ENDING:
                    self._judge_overlap(now_ms, final=True)
                case UserState.LISTENING if self._rejoin is not None and deadline == self._rejoin.until_ms:
                    self._end_rejoin()  # the window passed without a voice
                case UserState.ENDPOINTING | UserState.PREPARED:
                    self._actions.append(AnnounceSpeechStopped(audio_end_ms=self._voice_end_ms))
                    self._actions.append(CommitTurn(audio_end_ms=self._voice_end_ms))
                    if self.options.create_response:
                        self._actions.append(StartReply())
                        self._reply_requested = True
                    self.state = UserState.LISTENING
                case _:
                    self._actions.append(ReportIdle(audio_ms=now_ms))
                    self._idle_since_ms = None
