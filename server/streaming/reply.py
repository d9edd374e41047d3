"""Reply: the life of one response, decided without I/O and without a clock.

Every rule about a reply's state lives here (h11's `_state.py` is the model): which phase it
is in, whether what it produces goes out or is held, whether its audio may still be sent,
and that its response is closed exactly once. The conversation feeds it what happened and
carries out what it answers; it never sets a reply's flags itself.

Phases, and whether what it produces is released or held:

    GENERATING --close()--> DRAINING --finish()--> FINISHED
         |                                            ^
         +-------- cancel() / fail(), finish() -------+        (discard(): held ones only)

    held --adopt()--> released

- GENERATING: its response is open. DRAINING: its response is closed (`response.done`); the
  client still plays the last audio. FINISHED: nothing more of it will be sent.
- A reply started speculatively during the end-of-turn silence (`prepared=True`) is *held*:
  everything it produces (outputs, audio frames, events for the embedding code) is kept, in
  order, while it runs through its phases as any other; if the caller goes on talking it is
  thrown away unheard (`discard()`), else `adopt()` lets it all out and it is *released*.
- Cancelling (barge-in, a client's cancel) and failing stop its audio at once; the caller then
  closes its response if it was still open and finishes it.

Invariants:
- `close()` answers True once per reply: the closing events are produced once (held like
  everything else while the reply is held), and never for a reply that was discarded.
- Once `audio_stopped`, no audio of the reply is sent (the writer asks `accepts_audio`).
- Held outputs come out in the order they were produced, before anything produced later:
  `take_held()` until it returns nothing, then `adopt()` (no await between the last two).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from server.errors import TurnStateError

E = TypeVar("E")  # what the conversation emits for a reply (protocol-free outputs)
A = TypeVar("A")  # audio frames
P = TypeVar("P")  # events for the embedding code


class ReplyPhase(Enum):
    GENERATING = "generating"
    DRAINING = "draining"
    FINISHED = "finished"


@dataclass(slots=True)
class Adoption(Generic[A, P]):
    """What a prepared reply held besides its outputs, handed over when it is adopted."""

    audio: list[A]
    published: list[P]
    input_done: bool


@dataclass(slots=True)
class Reply(Generic[E, A, P]):
    """One response. `prepared=True`: started speculatively, held until adopted."""

    reply_id: int
    response_id: str
    item_id: str
    with_audio: bool
    prepared: bool = False
    checkpoint: int = 0  # the model session's mark to roll back to if discarded
    transcript: str = ""
    audio_sent_ms: float = 0.0
    input_done: bool = False  # all of its audio has been produced
    phase: ReplyPhase = field(init=False, default=ReplyPhase.GENERATING)
    is_released: bool = field(init=False)
    audio_stopped: bool = field(init=False, default=False)
    _discarded: bool = field(init=False, default=False)
    _held: list[E] = field(init=False, default_factory=list)
    _held_audio: list[A] = field(init=False, default_factory=list)
    _held_published: list[P] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.is_released = not self.prepared

    # --- questions ---------------------------------------------------------------------------

    @property
    def is_generating(self) -> bool:
        return self.phase is ReplyPhase.GENERATING

    @property
    def is_finished(self) -> bool:
        return self.phase is ReplyPhase.FINISHED

    @property
    def accepts_audio(self) -> bool:
        """Its audio may still be sent to the client."""
        return self.is_released and not self.audio_stopped

    # --- what it produces --------------------------------------------------------------------

    def emit(self, output: E) -> list[E]:
        """An output of the reply: returned to be sent now, or held."""
        if not self.is_released:
            self._held.append(output)
            return []
        return [output]

    def queue_audio(self, frame: A) -> list[A]:
        """A frame of its audio: returned for the playout buffer, or held."""
        if not self.is_released:
            self._held_audio.append(frame)
            return []
        return [frame]

    def publish(self, event: P) -> list[P]:
        """An event for the embedding code: returned, or held (the turn may still be
        abandoned, and then nothing of it happened)."""
        if not self.is_released:
            self._held_published.append(event)
            return []
        return [event]

    def produced_all(self) -> bool:
        """All of its audio has been produced; True when the playout may be told so now
        (False while held: `adopt()` says it then)."""
        self.input_done = True
        return self.is_released

    # --- transitions -------------------------------------------------------------------------

    def take_held(self) -> list[E]:
        """The outputs held so far, in order, removed ([] once released)."""
        held, self._held = self._held, []
        return held

    def adopt(self) -> Adoption[A, P]:
        """held -> released: the turn ended as predicted. Call after `take_held()` has
        returned nothing, with no await in between. A held reply that already ended (it
        failed, or a text reply completed) is adopted too: its closing events come out."""
        if self.is_released or self._discarded:
            raise TurnStateError(
                f"adopt() of a reply that is {'released' if self.is_released else 'discarded'}"
            )
        if self._held:
            raise TurnStateError("adopt() with outputs still held: take_held() first")
        self.is_released = True
        adoption = Adoption(self._held_audio, self._held_published, self.input_done)
        self._held_audio, self._held_published = [], []
        return adoption

    def close(self) -> bool:
        """GENERATING -> DRAINING: True when the response's closing events are to be
        produced now (once per reply; never after it ended)."""
        if self.phase is not ReplyPhase.GENERATING:
            return False
        self.phase = ReplyPhase.DRAINING
        return True

    def cancel(self) -> bool:
        """Barge-in or a client's cancel: no more of its audio goes out. Returns whether its
        response was open (the caller closes it `cancelled`, then calls `finish()`)."""
        self.audio_stopped = True
        return self.phase is ReplyPhase.GENERATING

    def fail(self) -> bool:
        """A backend failed mid-reply: like `cancel()`; the response closes `failed`."""
        return self.cancel()

    def discard(self) -> None:
        """A held reply thrown away unheard: everything it held is dropped, nothing of it is
        ever sent."""
        if self.is_released:
            raise TurnStateError("discard() of a released reply: cancel() it")
        self.audio_stopped = True
        self._discarded = True
        self._held.clear()
        self._held_audio.clear()
        self._held_published.clear()
        self.phase = ReplyPhase.FINISHED

    def finish(self) -> bool:
        """-> FINISHED (played out, cancelled or failed). Returns False if it already was."""
        if self.phase is ReplyPhase.FINISHED:
            return False
        self.phase = ReplyPhase.FINISHED
        return True

    def sent_audio(self, duration_ms: float) -> None:
        self.audio_sent_ms += duration_ms

    def truncate(self, kept_text: str) -> None:
        """Its text was cut to what the caller heard."""
        self.transcript = kept_text
        self.audio_stopped = True
