"""Attributing server events to one turn, and computing its metrics (no I/O, no clock).

The session feeds every event with its receive time to each active `TurnRecorder`; when the
turn is over, `result()` gives the `TurnResult`. See `loadtests.session` for what each metric
means.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from loadtests.corpus import SAMPLE_RATE_HZ
from loadtests.microphone import Speech

AUDIO_DELTA_EVENTS = frozenset(("response.output_audio.delta", "response.audio.delta"))
REPLY_TRANSCRIPT_DELTA_EVENTS = frozenset(
    ("response.output_audio_transcript.delta", "response.audio_transcript.delta")
)
REPLY_TRANSCRIPT_DONE_EVENTS = frozenset(
    ("response.output_audio_transcript.done", "response.audio_transcript.done")
)
USER_TRANSCRIPT_EVENT = "conversation.item.input_audio_transcription.completed"
STALL_TOLERANCE_MS = 5.0  # a player that runs dry for less than this is scheduling noise

TurnRole = Literal["turn", "interruption"]


@dataclass(slots=True)
class BargeInResult:
    """What happened to a reply we talked over (or meant to: `sent` is False if it ended first)."""

    interrupter: str
    planned_after_ms: int
    expects_reply: bool = True  # False: a backchannel or a noise, which should not interrupt
    sent: bool = False
    started_after_ms: float | None = None  # reply heard when the interrupter's first voiced frame went
    # interrupter's first voiced frame sent -> the response's last audio delta received (0: none
    # after it), whether the response was cancelled or not
    reaction_ms: float | None = None
    audio_after_interrupt_ms: float | None = None
    # the player's longest wait on reply audio that began after the interrupter's first voiced
    # frame was sent: the pause a caller hears when the server holds the reply, then resumes it
    max_stall_after_interrupt_ms: float | None = None
    # interrupter's first voiced frame sent -> the end of the reply audio a real-time player
    # played (`played_until_s`), which stops at the first speech_started after it (an OpenAI
    # client drops its playback there): the stale audio the caller heard, a client's buffer
    # included (`reaction_ms` counts to the last delta's arrival); 0: none after it
    heard_reaction_ms: float | None = None
    status: str | None = None  # the interrupted response's final status
    reason: str | None = None

    @property
    def is_cancelled_by_turn(self) -> bool:
        return self.status == "cancelled" and self.reason == "turn_detected"


@dataclass(slots=True)
class TurnResult:
    """One utterance and the reply to it. Latencies in ms from the end of speech (see module doc)."""

    index: int
    role: TurnRole
    utterance: str
    source: str
    reference: str
    utterance_ms: int
    speech_end_ms: int
    pause_ms: tuple[int, int] | None = None  # the utterance's inserted mid-sentence silence, if any
    voice_to_voice_ms: float | None = None
    # first reply audio after the frame that completed the server's end-of-turn silence
    # (its speech_stopped audio_end_ms + silence_duration_ms): what the server took once it
    # could know the turn was over; None with semantic VAD, which has no fixed silence
    endpoint_to_audio_ms: float | None = None
    speech_started_ms: float | None = None  # from the first voiced frame sent, not the end
    speech_stopped_ms: float | None = None
    transcript_ms: float | None = None
    response_created_ms: float | None = None
    response_done_ms: float | None = None
    user_transcript: str | None = None
    reply_transcript: str = ""
    reply_audio_ms: float = 0.0
    audio_stalls: int = 0
    audio_stall_ms: float = 0.0
    max_audio_stall_ms: float = 0.0
    speech_started_during_reply: int = 0  # input_audio_buffer.speech_started after the reply was created
    malformed_audio: int = 0  # audio deltas whose payload was not base64 pcm16
    response_status: str | None = None
    response_reason: str | None = None
    commits: int = 0
    responses: int = 0
    barge_in: BargeInResult | None = None
    error: str | None = None


class TurnRecorder:
    """Collects the events of one turn. Feed every event with its receive time to `observe()`.

    Until the turn's reply is chosen (the first `response.created` received after the end of
    speech was sent), the recorder claims the input-side events (speech started/stopped,
    commits); afterwards it only follows its own response id, so a reply and a barge-in over
    it can be recorded side by side. `result()` computes the metrics.
    """

    def __init__(self, index: int, speech: Speech, role: TurnRole) -> None:
        self.index = index
        self.speech = speech
        self.role = role
        self.interrupter: Speech | None = None
        self.barge_in_after_ms: int | None = None
        self.barge_in_expects_reply = True
        self.response_id: str | None = None
        self.created_s: float | None = None
        self.done_s: float | None = None
        self.status: str | None = None
        self.reason: str | None = None
        self.first_audio_s: float | None = None
        self.audio: list[tuple[float, float]] = []  # (receive time s, duration ms) per delta
        self.malformed_audio = 0
        self.stopped_audio_end_ms: int | None = None  # the server's end of speech, stream time
        self.endpoint_sent_s: float | None = None  # set by the session: see TurnResult
        # an overlay that needs no answer (see BargeInPlan.expects_reply): how long after its
        # last frame to wait for a response to it; None: wait for one
        self.reply_grace_s: float | None = None
        self.linger_s = 0.0  # after response.done, still recorded this long (TurnPlan.linger_ms)
        self.speech_started_during_reply: list[float] = []
        self._started_s: float | None = None
        self._stopped_s: float | None = None
        self._items: list[str] = []
        self._transcripts: dict[str, tuple[float, str]] = {}
        self._responses = 0
        self._reply_deltas: list[str] = []
        self._reply_transcript: str | None = None

    @property
    def is_done(self) -> bool:
        return self.done_s is not None

    @property
    def unanswered_until_s(self) -> float | None:
        """For an overlay that needs no answer and got none so far: when to stop waiting for
        one (inf while it is still being spoken). None for everything else."""
        if self.reply_grace_s is None or self.response_id is not None:
            return None
        sent = self.speech.done_sent_s
        return math.inf if sent is None else sent + self.reply_grace_s

    @property
    def is_missing_transcripts(self) -> bool:
        return any(item not in self._transcripts for item in self._items)

    def observe(self, event: dict[str, Any], t: float) -> None:
        kind = event.get("type")
        if kind == USER_TRANSCRIPT_EVENT:
            item = event.get("item_id")
            if item in self._items and item not in self._transcripts:
                self._transcripts[item] = (t, str(event.get("transcript") or ""))
            return
        if self.response_id is None:
            self._observe_input(kind, event, t)
            return
        if kind == "input_audio_buffer.speech_started":
            # a server announces a barge-in's speech just after it cancelled the reply, so
            # every one after the reply was created counts, not only those before its end
            self.speech_started_during_reply.append(t)
            return
        response = event.get("response")
        if kind == "response.done" and isinstance(response, dict) and response.get("id") == self.response_id:
            if self.done_s is None:
                self.done_s = t
                self.status = str_or_none(response.get("status"))
                details = response.get("status_details")
                self.reason = str_or_none(details.get("reason")) if isinstance(details, dict) else None
            return
        if event.get("response_id") != self.response_id:
            return
        if kind in AUDIO_DELTA_EVENTS:
            duration_ms = _pcm16_duration_ms(event.get("delta"))
            if duration_ms is None:
                self.malformed_audio += 1  # counted, not heard: it is no reply audio
                return
            self.audio.append((t, duration_ms))
            if self.first_audio_s is None:
                self.first_audio_s = t
        elif kind in REPLY_TRANSCRIPT_DELTA_EVENTS:
            self._reply_deltas.append(str(event.get("delta") or ""))
        elif kind in REPLY_TRANSCRIPT_DONE_EVENTS:
            self._reply_transcript = str(event.get("transcript") or "")

    def _observe_input(self, kind: object, event: dict[str, Any], t: float) -> None:
        if kind == "input_audio_buffer.speech_started":
            if self._started_s is None:
                self._started_s = t
        elif kind == "input_audio_buffer.speech_stopped":
            self._stopped_s = t
            end_ms = event.get("audio_end_ms")
            self.stopped_audio_end_ms = end_ms if isinstance(end_ms, int) else None
        elif kind == "input_audio_buffer.committed":
            item = event.get("item_id")
            if isinstance(item, str):
                self._items.append(item)
        elif kind == "response.created":
            response = event.get("response")
            if not isinstance(response, dict):
                return
            self._responses += 1
            end_sent = self.speech.end_sent_s
            if end_sent is not None and t >= end_sent:
                self.response_id = str_or_none(response.get("id"))
                self.created_s = t

    def result(self, error: str | None = None) -> TurnResult:
        utterance = self.speech.utterance
        origin = self.speech.end_sent_s

        def since_origin(t: float | None) -> float | None:
            return None if t is None or origin is None else (t - origin) * 1000

        transcripts = [self._transcripts[item] for item in self._items if item in self._transcripts]
        stalls = audio_stalls_ms(self.audio)
        result = TurnResult(
            index=self.index,
            role=self.role,
            utterance=utterance.name,
            source=utterance.source,
            reference=utterance.reference,
            utterance_ms=utterance.duration_ms,
            speech_end_ms=utterance.speech_end_ms,
            pause_ms=utterance.pause_ms,
            voice_to_voice_ms=since_origin(self.first_audio_s),
            endpoint_to_audio_ms=(
                None
                if self.first_audio_s is None or self.endpoint_sent_s is None
                else (self.first_audio_s - self.endpoint_sent_s) * 1000
            ),
            speech_started_ms=(
                None
                if self._started_s is None or self.speech.voiced_sent_s is None
                else (self._started_s - self.speech.voiced_sent_s) * 1000
            ),
            speech_stopped_ms=since_origin(self._stopped_s),
            transcript_ms=since_origin(max(t for t, _ in transcripts)) if transcripts else None,
            response_created_ms=since_origin(self.created_s),
            response_done_ms=since_origin(self.done_s),
            user_transcript=" ".join(text for _, text in transcripts) if transcripts else None,
            reply_transcript=(
                self._reply_transcript if self._reply_transcript is not None else "".join(self._reply_deltas)
            ),
            reply_audio_ms=sum(ms for _, ms in self.audio),
            audio_stalls=len(stalls),
            audio_stall_ms=sum(stalls),
            max_audio_stall_ms=max(stalls, default=0.0),
            speech_started_during_reply=len(self.speech_started_during_reply),
            malformed_audio=self.malformed_audio,
            response_status=self.status,
            response_reason=self.reason,
            commits=len(self._items),
            responses=self._responses,
            error=error,
        )
        if self.barge_in_after_ms is not None:
            result.barge_in = self._barge_in_result()
        return result

    def _barge_in_result(self) -> BargeInResult:
        assert self.barge_in_after_ms is not None
        interrupter = self.interrupter
        result = BargeInResult(
            interrupter="" if interrupter is None else interrupter.utterance.name,
            planned_after_ms=self.barge_in_after_ms,
            expects_reply=self.barge_in_expects_reply,
            status=self.status,
            reason=self.reason,
        )
        if interrupter is None or interrupter.voiced_sent_s is None:
            return result
        start = interrupter.voiced_sent_s
        result.sent = True
        if self.first_audio_s is not None:
            result.started_after_ms = (start - self.first_audio_s) * 1000
        after = [(t, ms) for t, ms in self.audio if t >= start]
        result.audio_after_interrupt_ms = sum(ms for _, ms in after)
        result.reaction_ms = max(0.0, (after[-1][0] - start) * 1000) if after else 0.0
        result.max_stall_after_interrupt_ms = max(
            (ms for t, ms in audio_stall_spans(self.audio) if t - ms / 1000 >= start), default=0.0
        )
        played_until = played_until_s(self.audio)
        flushed = [t for t in self.speech_started_during_reply if t >= start]
        if played_until is not None:
            heard_until = min([played_until, *flushed[:1]])
            result.heard_reaction_ms = max(0.0, (heard_until - start) * 1000)
        return result


def audio_stalls_ms(arrivals: Sequence[tuple[float, float]]) -> list[float]:
    """The stalls (ms) of a player fed by `arrivals` [(receive time s, duration ms), ...].

    The player starts with the first chunk and plays at real time; a chunk that arrives after
    everything before it has played leaves a stall of the difference. Stalls shorter than
    STALL_TOLERANCE_MS are scheduling noise and are not reported.
    """
    return [ms for _, ms in audio_stall_spans(arrivals)]


def audio_stall_spans(arrivals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The stalls of `audio_stalls_ms` as (time s the player resumed, stall ms): the stall
    began at resume - ms / 1000."""
    return _play(arrivals)[0]


def played_until_s(arrivals: Sequence[tuple[float, float]]) -> float | None:
    """When the player of `audio_stalls_ms` has played all of `arrivals` (None: nothing came)."""
    return _play(arrivals)[1]


def _play(arrivals: Sequence[tuple[float, float]]) -> tuple[list[tuple[float, float]], float | None]:
    """A real-time player fed by `arrivals`: its stalls (`audio_stall_spans`) and when it ends."""
    stalls: list[tuple[float, float]] = []
    plays_until: float | None = None
    for t, ms in arrivals:
        if plays_until is None or t >= plays_until:
            if plays_until is not None and (t - plays_until) * 1000 >= STALL_TOLERANCE_MS:
                stalls.append((t, (t - plays_until) * 1000))
            plays_until = t
        plays_until += ms / 1000
    return stalls, plays_until


def _pcm16_duration_ms(delta: object) -> float | None:
    """The duration of a base64 pcm16 payload, or None if it is not one."""
    if not isinstance(delta, str):
        return None
    try:
        return len(base64.b64decode(delta, validate=True)) / 2 * 1000 / SAMPLE_RATE_HZ
    except (binascii.Error, ValueError):
        return None


def pcm16_samples(delta: object) -> NDArray[np.int16] | None:
    """The samples of a base64 pcm16 (little-endian) payload, or None if it is not one."""
    if not isinstance(delta, str):
        return None
    try:
        raw = base64.b64decode(delta, validate=True)
    except (binascii.Error, ValueError):
        return None
    return np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int16)


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
