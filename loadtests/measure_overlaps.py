"""What the `words` barge-in rules make of speech over a reply, clip by clip, offline.

    python -m loadtests.measure_overlaps [--held-out] [--show] [--echo-db -12] [--lead-ms 300] [--unplaced-words]

`bench_barge_in` measures barge-in through a live server, at real time, on a loaded box; this
replays the same decisions without a clock, so that each clip's outcome depends only on the
rules, the VAD and the recogniser: for every clip the server's Silero VAD classifies the audio
frame by frame and the server's PocketSphinx configuration decodes it in 32 ms chunks as the
audio advances (in this process; the hypothesis after each chunk is taken as heard at that
point of the audio, so a loaded server hears the words later than this). The real TurnTaker
(server/streaming/turns.py, default options, `words` mode) runs over a reply that started
500 ms before the clip (`--lead-ms`: the session's first reply is all the room has been heard
to do; the live bench overlays at 300-900 ms); its actions say what happened: the reply paused,
cancelled (interruption) or resumed (backchannel / noise / echo), and when.

Clips:
- backchannels: "uh-huh", "mm-hmm", "yeah", "right", "okay" (`loadtests.overlays`) in the
  bench's voices (flite kal, awb, rms, slt; espeak-ng en-us) and, with `--held-out`, in voices
  the rules were never tuned on (espeak-ng en-gb, en-us+f3, en-us+m3, en-au and en-sc; flite
  kal16);
- interruptions: the corpus's customer-service sentences in flite's voices (as the bench) and,
  with `--held-out`, in espeak-ng en-gb and en-us+f3, plus the human recordings of
  pocketsphinx-testdata.

With `--echo-db` (and `--echo-delay-ms`), the microphone also hears the reply's echo: the
reply text below in espeak-ng's en-us voice, played from the start of the replay, paused and
resumed as the TurnTaker says (the client's buffer plays on `CLIENT_LEAD_MS` after a pause),
through `loadtests.room`'s room (RT60 0.3 s); the server's echo gate judges every frame against
what the reply played, and the recogniser's words reach the rules placed on the input's clock,
as PocketSphinx places them in the server (`--unplaced-words`: as before they were).

With `--noises N`, the bench's synthetic noises too (door slam, cough, keyboard, music; seeds
0..N-1; wanted: the reply never cancelled). `--residual-vad` (with `--echo-db`) is an experiment,
not the server's rule: a frame the gate passes counts as the echo's when Silero finds no voice
in WebRTC's echo canceller's output for it (BENCHMARKS.md, "A second VAD behind an echo
canceller").
`--asr-behind-canceller` (with `--echo-db`) is another: the recogniser hears WebRTC's echo
canceller's output instead of the microphone (BENCHMARKS.md, "Talking on under a listener's
word"). `--talk-over-after-ms 0` turns off talking on under a listener's word. As the server
with PocketSphinx (its `listener_model`, on by default), a second decoder with the listener's
model (`pocketsphinx_listener`; `--listener-share` of it for the tokens) hears the same audio
from the same capture, and its words say whether the reply talks on (`ListenerWordsHeard`);
`--no-listener-lm` leaves it out (as the server before it, or with `listener_model` off).

Reported per group: backchannels resumed (wanted: all), how long the reply was paused and the
silence the caller heard (`ClientBuffer`); for interruptions: cancelled (wanted: all) and the
reply's playing time from the clip's first voiced frame to the cancel (the stale audio a
caller hears is about this plus the transport; for listener-led clips also from the voice
after the pause). `--show` prints every clip with the words the rules saw.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pocketsphinx
import soxr
from numpy.typing import NDArray

from loadtests.bench_barge_in import voice_lag_ms
from loadtests.corpus import (
    DEFAULT_CACHE_DIR,
    SAMPLE_RATE_HZ,
    SYNTHETIC_SENTENCES,
    CorpusUnavailable,
    Utterance,
    load_human,
    make_utterance,
)
from loadtests.overlays import (
    BACKCHANNELS,
    listener_led_interruptions,
    load_backchannels,
    load_interruptions,
    noise_clips,
    spoken,
)
from loadtests.room import EchoOptions, room_impulse_response
from server.audio import PcmFrame
from server.audio_processing import ProcessingOptions, open_input_processor
from server.model.backends import pocketsphinx_asr
from server.model.backends.pocketsphinx_listener import ListenerModelOptions, write_listener_model
from server.model.base import WordSpan
from server.streaming.echo_gate import EchoGate, EchoGateOptions
from server.streaming.interruptions import InterruptionPolicy, OverlapKind
from server.streaming.playout import PlayoutOptions
from server.streaming.session_config import TurnDetectionConfig
from server.streaming.turns import (
    AnnounceSpeechStarted,
    BeginCapture,
    CancelReply,
    CommitTurn,
    DiscardNoise,
    EchoReturnMeasured,
    EndCapture,
    FrameClassified,
    IgnoreOverlap,
    ListenerWordsHeard,
    PauseReply,
    ReplyFinished,
    ReplyStarted,
    ResumeReply,
    Tick,
    TurnOptions,
    TurnTaker,
    WordsHeard,
)
from server.vad import silero

REPLY_TEXT = (
    "Let me check on your order. Could you read me the order number from your confirmation email? "
    "It is the number that starts with two letters."
)
LEAD_MS = 500  # the reply plays this long before the clip
GREETING_GAP_MS = 1000  # `--greeting`: from its end to the reply the clip overlaps
GREETING_TEXT = "Thank you for calling. How can I help you today?"
TAIL_MS = 1500  # silence after the clip
CHUNK_MS = 32  # the recogniser's chunks, one VAD frame each
PREFIX_PADDING_MS = TurnDetectionConfig().prefix_padding_ms  # the server's default
HELD_OUT_BACKCHANNEL_ESPEAK = ("en-gb", "en-us+f3", "en-us+m3", "en-au", "en-sc")
HELD_OUT_BACKCHANNEL_FLITE = ("kal16",)
HELD_OUT_INTERRUPTION_ESPEAK = ("en-gb", "en-us+f3")
REPLY_VOICE = ("espeak", "en-us")  # the reply's voice, for its echo (`--echo-db`)
CLIENT_LEAD_MS = PlayoutOptions().lead_ms  # a paused reply plays on this long (the client's buffer)


class ClientBuffer:
    """The reply audio the client holds unplayed, as the server's playout keeps it
    (server/streaming/playout.py): `lead_ms` while the reply plays, `resume_lead_ms` just after a
    resume growing back by `resume_lead_ramp` per ms, drained while the server sends nothing.
    The caller hears silence once a pause has outlasted what the buffer held."""

    def __init__(self, options: PlayoutOptions | None = None) -> None:
        self._options = options or PlayoutOptions()
        self._paused_at_ms: int | None = None
        self._held_at_pause_ms = 0.0
        self._resumed_at_ms: int | None = None
        self._held_at_resume_ms = 0.0
        self.silent_ms = 0.0  # silence heard so far

    def held_ms(self, now_ms: int) -> float:
        options = self._options
        if self._paused_at_ms is not None:
            return max(0.0, self._held_at_pause_ms - (now_ms - self._paused_at_ms))
        if self._resumed_at_ms is None:
            return float(options.lead_ms)
        since = now_ms - self._resumed_at_ms
        grown = min(float(options.lead_ms), options.resume_lead_ms + options.resume_lead_ramp * since)
        return max(grown, self._held_at_resume_ms - since)  # the server sends only below the lead

    def pause(self, now_ms: int) -> None:
        if self._paused_at_ms is None:
            self._held_at_pause_ms = self.held_ms(now_ms)
            self._paused_at_ms = now_ms

    def resume(self, now_ms: int) -> None:
        if self._paused_at_ms is None:
            return
        self.silent_ms += max(0.0, (now_ms - self._paused_at_ms) - self._held_at_pause_ms)
        self._held_at_resume_ms = self.held_ms(now_ms)
        self._paused_at_ms, self._resumed_at_ms = None, now_ms


class EchoedReply:
    """The reply as a speakerphone brings it back (`--echo-db`): the player plays the reply
    from the start of the replay, stops `CLIENT_LEAD_MS` after the server pauses it (the
    client's buffer runs out) and goes on from there when it resumes or is cancelled for
    good; the echo is what it played, through a room (`loadtests.room`: delay, level, RT60),
    in the microphone. `reference` is what it played, frame by frame, on the input's clock,
    as the server places it for the echo gate."""

    def __init__(
        self, reply: NDArray[np.int16], options: EchoOptions, rate_hz: int, length: int, starts_at: int = 0
    ) -> None:
        self._reply = reply.astype(np.float64)
        self._starts_at = starts_at  # the input sample the reply starts playing at
        self._gain = 10 ** (options.level_db / 20)
        self._response = room_impulse_response(options.rt60_s, options.direct_to_reverb_db, 0, rate_hz)
        self._delay = round(options.delay_ms * rate_hz / 1000)
        self._echo = np.zeros(length + len(self._response) + self._delay + len(self._reply))
        self._position = 0  # the reply's samples played so far
        self._rate_hz = rate_hz
        self.stops_at_ms: int | None = None  # paused: the player stops here
        self.cancelled = False

    def play(self, start: int, n: int) -> NDArray[np.int16]:
        """The reply played over input samples [start, start + n) (zeros while stopped); its
        echo is added to what `echo(start, n)` returns from then on."""
        start_ms = start * 1000 // self._rate_hz
        stopped = (
            start < self._starts_at
            or self.cancelled
            or (self.stops_at_ms is not None and start_ms >= self.stops_at_ms)
        )
        chunk = np.zeros(n)
        if not stopped:
            played = self._reply[self._position : self._position + n]
            chunk[: len(played)] = played
            self._position += len(played)
        if chunk.any():
            echo = np.convolve(chunk * self._gain, self._response)
            at = start + self._delay
            self._echo[at : at + len(echo)] += echo
        return chunk.astype(np.int16)

    def echo(self, start: int, n: int) -> NDArray[np.float64]:
        return self._echo[start : start + n]


@dataclass(frozen=True, slots=True)
class Outcome:
    clip: str
    group: str
    kind: str  # the first decision: cancelled | resumed:<kind> | nothing (never paused, no decision)
    decided_after_ms: int | None  # from the first voiced frame of the clip
    words: str
    paused_ms: int | None = None  # from PauseReply to the first decision (or an earlier resume)
    silent_ms: float | None = None  # resumed: the silence the caller heard (`ClientBuffer`)
    cancelled: bool = False  # the reply was cancelled at some point (after a resume, too)
    stale_ms: int | None = None  # cancelled: the reply's playing time after the first voiced frame
    # ... and after the voice that takes the floor (a listener-led clip's: after its pause)
    floor_stale_ms: int | None = None
    greeting_cancelled: bool = False  # `--greeting`: its own echo cancelled it (a self-interruption)


def decoder(config: dict[str, object]) -> pocketsphinx.Decoder:
    """A fresh decoder for one capture, so that no clip depends on the ones before it (a pooled
    decoder's cepstral mean adapts from utterance to utterance)."""
    return pocketsphinx.Decoder(pocketsphinx.Config(**config))


def replay(
    clip: Utterance,
    group: str,
    vad: silero.SileroVad,
    config: dict[str, object],
    asr_lag_ms: int = 0,
    policy: InterruptionPolicy | None = None,
    echo: tuple[NDArray[np.int16], EchoOptions] | None = None,
    place_words: bool = True,
    residual_vad: bool = False,
    asr_behind_canceller: bool = False,
    lead_ms: int = LEAD_MS,
    greeting: NDArray[np.int16] | None = None,
    listener_config: dict[str, object] | None = None,
) -> Outcome:
    """One clip over a reply through the VAD, the recogniser and the TurnTaker; the words of
    each point of the audio reach the rules `asr_lag_ms` later (a busy recogniser). As in the
    server, the recogniser hears the audio from a voice onset (less the prefix padding) until
    the overlap is dropped (a resumed one's capture is kept for a voice that may continue it);
    the replay goes on after a resume, so a caller who goes on talking after a pause inside
    the sentence is followed to the end of the clip. With `echo` (the reply's audio at 16 kHz
    and the room it comes back through), the microphone hears the reply's echo beside the
    clip and the server's echo gate judges every frame against what the reply played, as in
    the server: a voiced frame it takes for the echo is silence to the TurnTaker (masked).
    `place_words`: the recogniser's words reach the TurnTaker with their spans, as the
    server's PocketSphinx sends them (False: words alone, as a recogniser that cannot place
    them). `residual_vad` (with `echo`; an experiment, not the server's rule): a voiced frame the
    gate passes is still the echo's when the VAD finds no voice in WebRTC's echo canceller's
    output for it (`server.audio_processing`, AEC3), as if a second VAD listened behind a
    canceller. `asr_behind_canceller` (with `echo`; an experiment, not the server's path): the
    recogniser hears WebRTC's echo canceller's output instead of the microphone (the VAD and
    the gate still judge the microphone). `lead_ms`: how long the reply plays before the clip
    (its echo, before the caller's voice, is all the gate and the rules know of the room). `greeting` (16 kHz, with `echo`):
    the session opens with this reply, which the caller lets play out; the reply the clip
    overlaps starts `GREETING_GAP_MS` after it ends."""
    rate = silero.SAMPLE_RATE_HZ  # the VAD's and the recogniser's rate (the clips are 24 kHz)
    frame = silero.FRAME_MS * rate // 1000
    samples = soxr.resample(clip.samples, SAMPLE_RATE_HZ, rate).astype(np.int16)
    greeting_frames = 0 if greeting is None or echo is None else -(-len(greeting) // frame)
    gap_frames = -(-GREETING_GAP_MS // silero.FRAME_MS)
    reply_at_ms = 0 if not greeting_frames else (greeting_frames + gap_frames) * silero.FRAME_MS
    clip_at_ms = reply_at_ms + lead_ms  # on the replay's clock
    audio = np.concatenate(
        [np.zeros(clip_at_ms * rate // 1000, np.int16), samples, np.zeros(TAIL_MS * rate // 1000, np.int16)]
    )
    reply_at = reply_at_ms * rate // 1000
    reply = None if echo is None else EchoedReply(echo[0], echo[1], rate, len(audio), starts_at=reply_at)
    opening = None
    if greeting is not None and echo is not None:
        opening = EchoedReply(greeting, echo[1], rate, len(audio))
    greeting_stopped = False
    gate = None if echo is None else EchoGate(EchoGateOptions(), silero.FRAME_MS)
    mic = audio.copy()  # what the microphone hears: the clip, and the echo if any
    options = TurnOptions(interruption=policy or InterruptionPolicy())
    taker = TurnTaker(options)
    taker.receive(ReplyStarted(1 if opening is not None else 2), now_ms=0)  # 1: the greeting
    classifier = vad.open(0.5)
    canceller, residual_classifier = None, None
    if residual_vad and echo is not None:
        canceller = open_input_processor(ProcessingOptions(echo_cancellation=True), rate)
        residual_classifier = vad.open(0.5)
    residual = np.zeros(frame, np.int16)  # the canceller's latest frame of output
    asr_canceller = None
    if asr_behind_canceller and echo is not None:
        asr_canceller = open_input_processor(ProcessingOptions(echo_cancellation=True), rate)
    cleaned: list[NDArray[np.int16]] = []  # ... its output, frame by frame: what the recogniser hears
    asr: pocketsphinx.Decoder | None = None
    listener: pocketsphinx.Decoder | None = None  # `listener_config`'s, beside `asr`
    listened: list[tuple[int, str, tuple[WordSpan, ...]]] = []  # ... as `decoded`
    # (audio ms decoded up to, the hypothesis then, its words placed on the replay's clock)
    decoded: list[tuple[int, str, tuple[WordSpan, ...]]] = []
    capture_ms = 0  # where the recogniser's audio starts
    words = ""
    spans: tuple[WordSpan, ...] = ()
    first_voice_ms: int | None = None
    first: tuple[str, int] | None = None
    paused_at_ms: int | None = None
    resumed_at_ms: int | None = None  # the first resume after the first pause
    client = ClientBuffer()
    playing, cancelled_at_ms, played_after_voice_ms = True, None, 0
    floor_voice_ms = clip_at_ms + clip.speech_start_ms + voice_lag_ms(clip)  # (`voice_lag_ms`)
    played_after_floor_ms = 0
    for i in range(0, len(audio) - frame + 1, frame):
        start_ms = i * 1000 // rate
        end_ms = start_ms + silero.FRAME_MS
        reference = None
        if opening is not None:
            if start_ms == greeting_frames * silero.FRAME_MS:
                taker.receive(ReplyFinished(1), now_ms=start_ms)
            elif start_ms == reply_at_ms:
                taker.receive(ReplyStarted(2), now_ms=start_ms)
        if reply is not None:
            reference = reply.play(i, frame)
            mixed = audio[i : i + frame] + reply.echo(i, frame)
            if opening is not None:
                reference = reference + opening.play(i, frame)
                mixed = mixed + opening.echo(i, frame)
            mic[i : i + frame] = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
        chunk = mic[i : i + frame]
        for_asr = chunk
        if asr_canceller is not None:
            ref = reference if reference is not None else np.zeros(frame, np.int16)
            for_asr = asr_canceller.process(PcmFrame(chunk, rate), PcmFrame(ref, rate)).samples
            cleaned.append(for_asr)
        if asr is not None:
            asr.process_raw(for_asr.tobytes(), False, False)
            decoded.append((end_ms, *_hypothesis(asr, capture_ms)))
        if listener is not None:
            listener.process_raw(for_asr.tobytes(), False, False)
            listened.append((end_ms, *_hypothesis(listener, capture_ms)))
        words, spans = next(((w, p) for at, w, p in reversed(decoded) if at <= end_ms - asr_lag_ms), ("", ()))
        listener_heard = next(
            (ListenerWordsHeard(w, p) for at, w, p in reversed(listened) if at <= end_ms - asr_lag_ms), None
        )
        probability = classifier.speech_probability(PcmFrame(chunk, rate))
        if probability >= 0.5 and first_voice_ms is None and start_ms >= clip_at_ms:
            first_voice_ms = start_ms
        if playing and first_voice_ms is not None and cancelled_at_ms is None:
            played_after_voice_ms += silero.FRAME_MS
            played_after_floor_ms += silero.FRAME_MS if start_ms >= floor_voice_ms else 0
        masked = False
        if gate is not None and reference is not None:
            is_echo = gate.is_echo(PcmFrame(chunk, rate), PcmFrame(reference, rate), hold=taker.hears_voice)
            learned = gate.echo_return  # told the TurnTaker as the server does, to the dB
            taker.receive(
                EchoReturnMeasured(None if not learned else round(10 * math.log10(learned))), end_ms
            )
            if canceller is not None and residual_classifier is not None:  # (it holds back < 10 ms)
                out = canceller.process(PcmFrame(chunk, rate), PcmFrame(reference, rate)).samples
                residual = np.concatenate([residual, out])[-frame:]
                residual_voiced = residual_classifier.speech_probability(PcmFrame(residual, rate)) >= 0.5
                is_echo = is_echo or (probability >= 0.5 and not residual_voiced)
            if is_echo:
                masked, probability = probability >= 0.5, 0.0
        taker.receive(FrameClassified(start_ms, silero.FRAME_MS, probability, masked), now_ms=end_ms)
        if taker.wants_words:
            if listener_heard is not None and listener_heard.words:  # first, as the server does
                taker.receive(listener_heard, now_ms=end_ms)
            heard = WordsHeard(words, REPLY_TEXT, end_ms - asr_lag_ms, spans if place_words else None)
            taker.receive(heard, now_ms=end_ms)
        taker.receive(Tick(), now_ms=end_ms)
        for action in taker.actions():
            if isinstance(action, BeginCapture) and asr is None:  # else it goes on (a rejoin)
                asr = decoder(config)
                asr.start_utt()
                decoded = []
                capture_ms = max(0, action.from_ms - PREFIX_PADDING_MS)
                audible = mic[: i + frame] if asr_canceller is None else np.concatenate(cleaned)
                asr.process_raw(audible[capture_ms * rate // 1000 :].tobytes(), False, False)
                decoded.append((end_ms, *_hypothesis(asr, capture_ms)))
                if listener_config is not None:
                    listener = decoder(listener_config)
                    listener.start_utt()
                    listener.process_raw(audible[capture_ms * rate // 1000 :].tobytes(), False, False)
                    listened = [(end_ms, *_hypothesis(listener, capture_ms))]
            elif isinstance(action, (IgnoreOverlap, DiscardNoise)) and not action.keeps_capture:
                asr, decoded, listener, listened = None, [], None, []
            elif isinstance(action, EndCapture):
                asr, decoded, listener, listened = None, [], None, []
            if gate is not None:  # as the conversation settles the frames the gate held
                if isinstance(action, IgnoreOverlap):
                    gate.settle_held(echo=action.kind is OverlapKind.ECHO)
                elif isinstance(action, (DiscardNoise, AnnounceSpeechStarted, CommitTurn)):
                    gate.settle_held(echo=False)
            if opening is not None and _greetings(action):
                # the greeting's own echo taken for a voice: its player obeys, and the outcome
                # stays the reply's after it (`greeting_stopped` says it happened)
                if isinstance(action, PauseReply):
                    opening.stops_at_ms = end_ms + CLIENT_LEAD_MS
                elif isinstance(action, CancelReply):
                    opening.cancelled = greeting_stopped = True
                else:
                    opening.stops_at_ms = None
                continue
            if isinstance(action, PauseReply):
                paused_at_ms = end_ms if paused_at_ms is None else paused_at_ms  # the first pause
                playing = False
                if reply is not None and reply.stops_at_ms is None:
                    reply.stops_at_ms = end_ms + round(client.held_ms(end_ms))
                client.pause(end_ms)
            elif isinstance(action, ResumeReply) or (
                isinstance(action, IgnoreOverlap) and action.paused_reply is not None
            ):
                if not playing and paused_at_ms is not None and resumed_at_ms is None:
                    resumed_at_ms = end_ms
                playing = True
                client.resume(end_ms)
                if reply is not None:
                    reply.stops_at_ms = None
            if isinstance(action, CancelReply) and cancelled_at_ms is None:
                cancelled_at_ms, playing = end_ms, False
                if reply is not None:
                    reply.cancelled = True
            if first is None and isinstance(action, CancelReply):
                first = ("cancelled", end_ms)
            elif first is None and isinstance(action, IgnoreOverlap) and action.paused_reply is not None:
                first = (f"resumed:{action.kind.value}", end_ms)
    if canceller is not None:
        canceller.close()
    if asr_canceller is not None:
        asr_canceller.close()
    base = first_voice_ms if first_voice_ms is not None else clip_at_ms
    stale_ms = played_after_voice_ms if cancelled_at_ms is not None else None
    floor_stale_ms = played_after_floor_ms if cancelled_at_ms is not None else None
    if first is None:
        kind = "nothing" if paused_at_ms is None else "paused, undecided"
        return Outcome(
            clip.name,
            group,
            kind,
            None,
            words,
            cancelled=cancelled_at_ms is not None,
            stale_ms=stale_ms,
            floor_stale_ms=floor_stale_ms,
            greeting_cancelled=greeting_stopped,
        )
    resumed_ms = first[1] if resumed_at_ms is None else min(first[1], resumed_at_ms)
    paused_ms = None if paused_at_ms is None else resumed_ms - paused_at_ms
    return Outcome(
        clip.name,
        group,
        first[0],
        first[1] - base,
        words,
        paused_ms=paused_ms,
        silent_ms=client.silent_ms if paused_at_ms is not None else None,
        cancelled=cancelled_at_ms is not None,
        stale_ms=stale_ms,
        floor_stale_ms=floor_stale_ms,
        greeting_cancelled=greeting_stopped,
    )


def in_reply_voice(text: str, cache_dir: Path) -> NDArray[np.int16]:
    """`text` in the reply's voice, at the VAD's and the recogniser's rate (for `replay`'s
    `echo` and `greeting`)."""
    samples, rate = spoken(*REPLY_VOICE, text, cache_dir)
    resampled: NDArray[np.int16] = soxr.resample(samples, rate, silero.SAMPLE_RATE_HZ).astype(np.int16)
    return resampled


def _greetings(action: object) -> bool:
    """The action is about the greeting (reply 1 when `replay` has one)."""
    if isinstance(action, (PauseReply, ResumeReply, CancelReply)):
        return action.reply_id == 1
    return isinstance(action, IgnoreOverlap) and action.paused_reply == 1


def _hypothesis(asr: pocketsphinx.Decoder, capture_ms: int) -> tuple[str, tuple[WordSpan, ...]]:
    hyp = asr.hyp()
    spans = pocketsphinx_asr.placed_words(asr, hyp)  # as the server's decoders place them
    placed = tuple(WordSpan(s.word, capture_ms + s.start_ms, capture_ms + s.end_ms) for s in spans)
    return (hyp.hypstr if hyp is not None else ""), placed


def held_out_backchannels(cache_dir: Path) -> list[Utterance]:
    clips = []
    for word, text in BACKCHANNELS.items():
        voices = [("espeak", v) for v in HELD_OUT_BACKCHANNEL_ESPEAK] + [
            ("flite", v) for v in HELD_OUT_BACKCHANNEL_FLITE
        ]
        for engine, voice in voices:
            try:
                samples, rate = spoken(engine, voice, text, cache_dir)
            except Exception as exc:  # a voice this machine lacks
                raise CorpusUnavailable(f"{engine} {voice}: {exc}") from exc
            clips.append(make_utterance(f"bc-{word}-{engine}-{voice}", samples, rate, word, "synthetic"))
    return clips


def held_out_interruptions(cache_dir: Path) -> list[Utterance]:
    clips = []
    for i, text in enumerate(SYNTHETIC_SENTENCES):
        voice = HELD_OUT_INTERRUPTION_ESPEAK[i % len(HELD_OUT_INTERRUPTION_ESPEAK)]
        samples, rate = spoken("espeak", voice, text, cache_dir)
        clips.append(make_utterance(f"int-espeak-{voice}-{i}", samples, rate, text, "synthetic"))
    return clips


def _spread(values: Sequence[int]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "-"
    return f"{statistics.median(ordered):.0f} / {float(np.percentile(ordered, 90)):.0f} / {ordered[-1]}"


def report(outcomes: Sequence[Outcome]) -> None:
    """Per group: the share with the wanted outcome (interruptions: cancelled, at once or
    after a resume; backchannels: never cancelled, and resumed or never paused, as when the
    echo gate takes a quiet one for the echo); when the first decision came (ms of voice); for
    resumed clips, how long the reply was paused until it first resumed (the server's pause)
    and the silence the caller heard (`ClientBuffer`: the pauses less what the client held);
    for cancelled ones, how much of the reply played after the caller's first voiced frame
    (stale audio, resumed stretches included)."""
    groups = sorted({o.group for o in outcomes})
    print(
        f"{'group':34} {'n':>3} {'wanted':>7}   {'decided after p50 / p90 / max':>30}"
        "   paused (resumed) or stale (cancelled) p50 / p90 / max (ms)"
    )
    for group in groups:
        rows = [o for o in outcomes if o.group == group]
        if group.startswith("interruption"):
            good = [o for o in rows if o.cancelled]
            after = _spread([o.stale_ms for o in good if o.stale_ms is not None]) + " stale"
            late = sum(not o.kind.startswith("cancelled") for o in good)
            after += f" ({late} after a resume)" if late else ""
            if "listener-led" in group:
                floor = _spread([o.floor_stale_ms for o in good if o.floor_stale_ms is not None])
                after += f"; from the voice after the pause {floor}"
        else:  # resumed, or never paused: the reply went on either way
            good = [o for o in rows if not o.cancelled and o.kind != "paused, undecided"]
            after = _spread([o.paused_ms for o in good if o.paused_ms is not None]) + " paused; heard "
            after += _spread([round(o.silent_ms) for o in good if o.silent_ms is not None])
        decided = _spread([o.decided_after_ms for o in good if o.decided_after_ms is not None])
        print(f"{group:34} {len(rows):>3} {len(good) / len(rows):>7.0%}   {decided:>30}   {after}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.measure_overlaps", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--held-out", action="store_true", help="also voices the rules were not tuned on")
    parser.add_argument("--show", action="store_true", help="every clip, with the words the rules saw")
    parser.add_argument(
        "--asr-lag-ms", type=int, default=0, help="the words reach the rules this late (default %(default)s)"
    )
    parser.add_argument(
        "--settle-ms", type=int, default=None, help="InterruptionPolicy.settle_ms (default: the server's)"
    )
    parser.add_argument(
        "--pause-after-ms",
        type=int,
        default=None,
        help="InterruptionPolicy.pause_after_ms (default: the server's)",
    )
    parser.add_argument(
        "--rejoin-within-ms",
        type=int,
        default=None,
        help="InterruptionPolicy.rejoin_within_ms (default: the server's; 0: off)",
    )
    parser.add_argument(
        "--word-gap-ms",
        type=int,
        default=None,
        help="InterruptionPolicy.word_gap_ms (default: the server's; 0: off, a gap being at least the "
        "VAD's hangover)",
    )
    parser.add_argument(
        "--talk-over-after-ms",
        type=int,
        default=None,
        help="InterruptionPolicy.talk_over_after_ms (default: the server's; 0: off)",
    )
    parser.add_argument(
        "--count-voice-ms",
        type=int,
        default=None,
        help="InterruptionPolicy.count_voice_ms (default: the server's; 0: off)",
    )
    parser.add_argument(
        "--echo-db",
        type=float,
        default=None,
        help="the reply's echo in the microphone at this level, dB relative to the reply (default: none)",
    )
    parser.add_argument("--echo-delay-ms", type=float, default=120.0, help="... after this delay")
    parser.add_argument(
        "--lead-ms",
        type=int,
        default=LEAD_MS,
        help="the session's first reply plays this long before each clip (default %(default)s)",
    )
    parser.add_argument(
        "--greeting",
        action="store_true",
        help="(with --echo-db) the session opens with a greeting the caller lets play out; the reply "
        "each clip overlaps comes after it",
    )
    parser.add_argument(
        "--caller-word-share",
        type=float,
        default=None,
        help="InterruptionPolicy.caller_word_share (default: the server's)",
    )
    parser.add_argument(
        "--unplaced-words",
        action="store_true",
        help="judge the recogniser's words without their spans (as before they were placed)",
    )
    parser.add_argument(
        "--noises",
        type=int,
        default=0,
        help="also the bench's four noises (door slam, cough, keyboard, music) drawn with seeds 0..N-1",
    )
    parser.add_argument(
        "--residual-vad",
        action="store_true",
        help="(with --echo-db) an experiment: a frame the gate passes is the echo's when the VAD hears "
        "no voice behind WebRTC's echo canceller",
    )
    parser.add_argument(
        "--asr-behind-canceller",
        action="store_true",
        help="(with --echo-db) an experiment: the recogniser hears WebRTC's echo canceller's output",
    )
    parser.add_argument(
        "--no-listener-lm",
        action="store_true",
        help="without the server's second decoder with a listener's model (pocketsphinx_listener), which "
        "says whether the reply talks on",
    )
    parser.add_argument("--listener-share", type=float, default=None, help="... the tokens' share")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    if args.residual_vad and args.echo_db is None:
        parser.error("--residual-vad needs --echo-db: it listens behind an echo canceller")
    if args.asr_behind_canceller and args.echo_db is None:
        parser.error("--asr-behind-canceller needs --echo-db: it listens behind an echo canceller")
    if args.greeting and args.echo_db is None:
        parser.error("--greeting needs --echo-db: the room hears it through the echo")
    policy = InterruptionPolicy()
    if args.settle_ms is not None:
        policy = dataclasses.replace(policy, settle_ms=args.settle_ms)
    if args.pause_after_ms is not None:
        policy = dataclasses.replace(policy, pause_after_ms=args.pause_after_ms)
    if args.caller_word_share is not None:
        policy = dataclasses.replace(policy, caller_word_share=args.caller_word_share)
    if args.rejoin_within_ms is not None:
        policy = dataclasses.replace(policy, rejoin_within_ms=args.rejoin_within_ms)
    if args.word_gap_ms is not None:
        policy = dataclasses.replace(policy, word_gap_ms=args.word_gap_ms)
    if args.count_voice_ms is not None:
        policy = dataclasses.replace(policy, count_voice_ms=args.count_voice_ms)
    if args.talk_over_after_ms is not None:
        policy = dataclasses.replace(policy, talk_over_after_ms=args.talk_over_after_ms)
    try:
        sets: list[tuple[str, list[Utterance]]] = [
            ("backchannel (bench voices)", load_backchannels(args.cache_dir)),
            ("interruption (bench: flite)", load_interruptions(args.cache_dir)),
            ("interruption (listener-led: flite)", listener_led_interruptions(args.cache_dir)),
        ]
        if args.noises:
            sets.append(("noise (synthetic)", [c for seed in range(args.noises) for c in noise_clips(seed)]))
        if args.held_out:
            sets += [
                ("backchannel (held-out voices)", held_out_backchannels(args.cache_dir)),
                ("interruption (held-out: espeak)", held_out_interruptions(args.cache_dir)),
                ("interruption (human recordings)", load_human()),
            ]
    except CorpusUnavailable as exc:
        print(f"corpus unavailable: {exc}", file=sys.stderr)
        return 2
    echo = None
    if args.echo_db is not None:
        echo = (
            in_reply_voice(REPLY_TEXT, args.cache_dir),
            EchoOptions(delay_ms=args.echo_delay_ms, level_db=args.echo_db),
        )
    greeting = in_reply_voice(GREETING_TEXT, args.cache_dir) if args.greeting else None
    vad = silero.load()
    config = pocketsphinx_asr.decoder_settings()
    listener_config = None
    listener_dir = tempfile.TemporaryDirectory(prefix="measure-overlaps-listener-")  # this run's own
    if not args.no_listener_lm:
        model_options = ListenerModelOptions()
        if args.listener_share is not None:
            model_options = dataclasses.replace(model_options, listener_share=args.listener_share)
        lm, dictionary = write_listener_model(
            Path(str(config["lm"])), Path(str(config["dict"])), Path(listener_dir.name), model_options
        )
        listener_config = {**config, "lm": str(lm), "dict": str(dictionary)}
    outcomes = [
        replay(
            clip,
            group,
            vad,
            config,
            asr_lag_ms=args.asr_lag_ms,
            policy=policy,
            echo=echo,
            place_words=not args.unplaced_words,
            residual_vad=args.residual_vad,
            asr_behind_canceller=args.asr_behind_canceller,
            lead_ms=args.lead_ms,
            greeting=greeting,
            listener_config=listener_config,
        )
        for group, clips in sets
        for clip in clips
    ]
    if args.show:
        for o in outcomes:
            after = "" if o.decided_after_ms is None else f" after {o.decided_after_ms} ms"
            paused = "" if o.paused_ms is None else f" paused {o.paused_ms} ms"
            paused += "" if not o.silent_ms or o.cancelled else f" (heard {o.silent_ms:.0f})"
            paused += (
                f", cancelled later (stale {o.stale_ms} ms)" if o.cancelled and o.kind != "cancelled" else ""
            )
            print(f"{o.group:34} {o.clip:44} {o.kind:22}{after:>16}{paused:>16}  heard {o.words!r}")
        print()
    report(outcomes)
    if greeting is not None:
        stopped = sum(o.greeting_cancelled for o in outcomes)
        print(f"\ngreetings cancelled by their own echo: {stopped} of {len(outcomes)}")
    listener_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
