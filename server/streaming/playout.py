"""PlayoutBuffer: real-time pacing of reply audio and what the listener has heard (sans-I/O).

The loop pushes reply audio as the model produces it, and asks `due(now_ms)` for chunks it may
send now. A chunk is due while the client holds less than `lead_ms` of unplayed audio, so the
client's buffer stays shallow and an interruption throws away little: the rest stays here and
`clear()` drops it.

`now_ms` is a monotonic wall clock passed in by the caller; this module never reads one.

Model of the client: it plays audio as soon as it arrives, back to back. So after sending a
chunk of d ms at time t, the client will have played everything sent when
`play_end_ms = max(play_end_ms, t) + d`, and at time `now` it has heard
`sent_ms - max(0, play_end_ms - now)`. Any client jitter buffer is `client_buffer_ms`.

Pausing (the caller talks over the reply, turns.py): `pause(now_ms)` stops `due()` until
`resume(now_ms)`; the queue is kept, so the reply goes on exactly where it stopped, and what
the client heard stays exact (nothing is sent meanwhile, it plays out what it holds).

Resuming softly: after a resume the lead starts at `resume_lead_ms` and grows by
`resume_lead_ramp` ms per ms back to `lead_ms`. A caller who goes on talking just after a
backchannel ("thank you ... that is all") pauses the reply again within a few frames, and the
client plays out all it was sent meanwhile: with the whole lead sent at once, 150 ms of reply
over the caller's next words; with the soft start, the frames since the resume and 40-60 ms.

Invariants:
- Nothing is returned by `due()` while paused.
- Chunks come out in the order pushed, each `chunk_ms` long except the last of a reply.
- After `clear()` or `begin()` no chunk of an earlier reply is ever returned.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from server.audio import FrameChunker, PcmFrame, resample


@dataclass(frozen=True, slots=True)
class PlayoutOptions:
    chunk_ms: int = 20
    lead_ms: int = 150
    client_buffer_ms: int = 0
    resume_lead_ms: int = 40  # the lead just after a resume (then it grows back to lead_ms)
    resume_lead_ramp: float = 0.25  # ... by this many ms per ms (150 ms again 440 ms later)


@dataclass(frozen=True, slots=True)
class OutboundChunk:
    reply_id: int
    frame: PcmFrame
    offset_ms: float  # where this chunk starts within the reply's audio
    plays_at_ms: float = 0.0  # when the client starts playing it (the model above)


class PlayoutBuffer:
    """One reply at a time. Call `begin(reply_id)` before pushing a reply's audio."""

    def __init__(self, options: PlayoutOptions, sample_rate_hz: int) -> None:
        self.options = options
        self.sample_rate_hz = sample_rate_hz
        self.reply_id: int | None = None
        self._chunker = FrameChunker(options.chunk_ms, sample_rate_hz)
        self._queue: deque[PcmFrame] = deque()
        self._input_done = False
        self._sent_ms = 0.0
        self._play_end_ms: float | None = None
        self._paused_at_ms: float | None = None
        self._resumed_at_ms: float | None = None  # the last resume, while the lead grows back

    # -- input

    def begin(self, reply_id: int, sample_rate_hz: int | None = None) -> None:
        """Start a new reply (at `sample_rate_hz`, the output format's rate, if it changed);
        anything left of the previous one is dropped."""
        self.reply_id = reply_id
        if sample_rate_hz is not None:
            self.sample_rate_hz = sample_rate_hz
        self._chunker = FrameChunker(self.options.chunk_ms, self.sample_rate_hz)
        self._queue.clear()
        self._input_done = False
        self._sent_ms = 0.0
        self._play_end_ms = None
        self._paused_at_ms = None
        self._resumed_at_ms = None

    def push(self, frame: PcmFrame) -> None:
        if frame.sample_rate_hz != self.sample_rate_hz:
            # a reply started before a session.update changed the output format (rare: the
            # per-frame resample may click at frame edges, never fails)
            frame = resample(frame, self.sample_rate_hz)
        self._queue.extend(self._chunker.push(frame))

    def end_input(self) -> None:
        """No more audio for this reply: release the last partial chunk."""
        tail = self._chunker.flush()
        if tail is not None:
            self._queue.append(tail)
        self._input_done = True

    # -- output

    @property
    def sent_ms(self) -> float:
        return self._sent_ms

    @property
    def is_paused(self) -> bool:
        return self._paused_at_ms is not None

    def pause(self, now_ms: float) -> None:
        """Send nothing more until `resume()`; the client plays out what it holds."""
        if self._paused_at_ms is None:
            self._paused_at_ms = now_ms

    def resume(self, now_ms: float) -> float:
        """Send again from where the reply stopped. Returns the silence the listener heard
        (ms): from when their buffer ran dry to now; 0 if it never did, or nothing was paused."""
        paused_at, self._paused_at_ms = self._paused_at_ms, None
        if paused_at is None:
            return 0.0
        self._resumed_at_ms = now_ms
        ran_dry_ms = paused_at if self._play_end_ms is None else max(paused_at, self._play_end_ms)
        return max(0.0, now_ms - ran_dry_ms)

    def next_due_ms(self, now_ms: float) -> float | None:
        """When the next queued chunk may be sent (<= now_ms if already due); None if none
        (or paused)."""
        if not self._queue or self._paused_at_ms is not None:
            return None
        if self._play_end_ms is None:
            return now_ms
        at_full_lead = self._play_end_ms - self.options.lead_ms
        resumed_at = self._resumed_at_ms
        if resumed_at is None:
            return at_full_lead
        # while the lead grows back: the first t with play_end - t <= resume_lead + ramp (t - resumed)
        ramp = self.options.resume_lead_ramp
        growing = (self._play_end_ms - self.options.resume_lead_ms + ramp * resumed_at) / (1 + ramp)
        return max(at_full_lead, growing)

    def _lead_at_ms(self, now_ms: float) -> float:
        """The audio the client may hold unplayed at `now_ms`: `lead_ms`, less just after a resume."""
        full = float(self.options.lead_ms)
        if self._resumed_at_ms is None:
            return full
        grown = self.options.resume_lead_ms + self.options.resume_lead_ramp * (now_ms - self._resumed_at_ms)
        if grown >= full:
            self._resumed_at_ms = None  # grown back
            return full
        return grown

    def due(self, now_ms: float) -> list[OutboundChunk]:
        """Chunks to send now; they count as sent at `now_ms`."""
        out: list[OutboundChunk] = []
        assert self.reply_id is not None or not self._queue
        while self._queue and self._paused_at_ms is None:
            play_end = now_ms if self._play_end_ms is None else max(self._play_end_ms, now_ms)
            if play_end - now_ms >= self._lead_at_ms(now_ms):
                break
            frame = self._queue.popleft()
            out.append(OutboundChunk(self.reply_id or 0, frame, self._sent_ms, play_end))
            self._sent_ms += frame.duration_ms
            self._play_end_ms = play_end + frame.duration_ms
        return out

    def heard_ms(self, now_ms: float) -> int:
        """Estimate of the reply audio the client has played by `now_ms`."""
        if self._play_end_ms is None:
            return 0
        unplayed = max(0.0, self._play_end_ms + self.options.client_buffer_ms - now_ms)
        return int(max(0.0, self._sent_ms - unplayed))

    def is_finished(self, now_ms: float) -> bool:
        """All audio of the reply has been pushed, sent and played out."""
        return (
            self._input_done
            and not self._queue
            and self._chunker.pending_samples == 0
            and (self._play_end_ms is None or now_ms >= self._play_end_ms)
        )

    def is_sent(self) -> bool:
        """All audio of the reply has been pushed and sent."""
        return self._input_done and not self._queue and self._chunker.pending_samples == 0

    def played_out_at_ms(self) -> float | None:
        """When the client will have played everything sent so far."""
        return self._play_end_ms

    def clear(self, now_ms: float) -> int:
        """Drop every unsent chunk; returns `heard_ms(now_ms)` of the reply."""
        heard = self.heard_ms(now_ms)
        self._paused_at_ms = None
        self._resumed_at_ms = None
        self._queue.clear()
        self._chunker = FrameChunker(self.options.chunk_ms, self.sample_rate_hz)
        self._input_done = True
        self._play_end_ms = None if self._play_end_ms is None else min(self._play_end_ms, now_ms)
        self._sent_ms = float(heard)
        return heard
