"""MarkLedger: what the caller has heard, counted from the marks Twilio returns (sans-I/O).

We send a `mark` after every outbound `media` chunk. Twilio plays media in order and returns a
mark once everything queued before it has played -- or at once, when a `clear` drops it. The
two kinds of return look the same, so the order of events decides:

- A mark returned *before* we sent `clear` proves that its audio played: an item's played
  position is the end of its last such mark.
- `clear()` freezes every item with marks still outstanding. Any of their marks that come back
  afterwards were either dropped by the clear or played while the clear was on its way to
  Twilio; we cannot tell which, so none of them counts. The played position is therefore a
  lower bound, short by at most the audio played during one network round trip (plus one
  chunk). The caller heard at least this much, and the assistant's history is cut to it.
- A frozen item takes no more audio: a late chunk of it must not be sent.

Audio positions are counted in samples (8 kHz mu-law: one byte per sample) and reported in
whole milliseconds rounded down, so a position never exceeds the audio sent.

Invariants:
- `played_ms(item)` never decreases and never exceeds `sent_ms(item)`.
- Mark names are unique within a ledger; an unknown or repeated name changes nothing.
- No clock: the caller feeds events in the order they happened on the socket.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

KEEP_ITEMS = 16  # finished items remembered for a late truncation; older ones are forgotten


@dataclass(slots=True)
class _ItemAudio:
    sent_samples: int = 0
    played_ms: int = 0
    outstanding: int = 0
    frozen: bool = False


@dataclass(frozen=True, slots=True)
class MarkReturned:
    """A returned mark: its item, its position, and whether it counted as played."""

    item_id: str
    position_ms: int
    counted: bool


@dataclass(frozen=True, slots=True)
class ClearedItem:
    """An item frozen by `clear()`: what had played, and what had been sent."""

    item_id: str
    played_ms: int
    sent_ms: int


class MarkLedger:
    """Call `push_sent()` after each chunk sent, `push_returned()` for each mark Twilio returns,
    and `clear()` when sending a `clear`; read positions with `played_ms()`."""

    def __init__(self, sample_rate_hz: int = 8_000) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._items: OrderedDict[str, _ItemAudio] = OrderedDict()
        self._marks: dict[str, tuple[str, int]] = {}  # outstanding: name -> (item id, position ms)
        self.last_item_id: str | None = None

    def accepts(self, item_id: str) -> bool:
        """False once a clear froze the item: its late audio must not be sent."""
        item = self._items.get(item_id)
        return item is None or not item.frozen

    def push_sent(self, item_id: str, samples: int) -> str | None:
        """Record `samples` of the item's audio as sent; returns the name of the mark to send
        right after it, or None when the chunk moved the position by less than 1 ms (the next
        mark covers it)."""
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _ItemAudio()
            self._forget_old()
        if item.frozen:
            raise ValueError(f"item {item_id!r} was cleared; its audio must not be sent")
        self.last_item_id = item_id
        before_ms = self._ms(item.sent_samples)
        item.sent_samples += samples
        position_ms = self._ms(item.sent_samples)
        if position_ms == before_ms:
            return None
        name = f"{item_id}@{position_ms}"
        self._marks[name] = (item_id, position_ms)
        item.outstanding += 1
        return name

    def push_returned(self, name: str) -> MarkReturned | None:
        """A mark came back from Twilio; None when we never sent it (or it already came back)."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return None
        item_id, position_ms = entry
        item = self._items.get(item_id)
        if item is None:
            return MarkReturned(item_id, position_ms, counted=False)
        item.outstanding -= 1
        if item.frozen:
            return MarkReturned(item_id, position_ms, counted=False)
        item.played_ms = max(item.played_ms, position_ms)
        return MarkReturned(item_id, position_ms, counted=True)

    def clear(self) -> list[ClearedItem]:
        """We are sending `clear`: freeze every item with audio still queued at Twilio and
        return them (oldest first) with their played positions."""
        cleared: list[ClearedItem] = []
        for item_id, item in self._items.items():
            if item.outstanding > 0 and not item.frozen:
                item.frozen = True
                cleared.append(ClearedItem(item_id, item.played_ms, self._ms(item.sent_samples)))
        return cleared

    @property
    def is_playing(self) -> bool:
        """Some audio sent has neither played nor been cleared yet."""
        return any(item.outstanding > 0 and not item.frozen for item in self._items.values())

    @property
    def outstanding_marks(self) -> int:
        return len(self._marks)

    def knows(self, item_id: str) -> bool:
        return item_id in self._items

    def played_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else item.played_ms

    def sent_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else self._ms(item.sent_samples)

    def _ms(self, samples: int) -> int:
        return samples * 1000 // self.sample_rate_hz

    def _forget_old(self) -> None:
        removable = [k for k, v in self._items.items() if v.outstanding == 0]
        for item_id in removable[: max(0, len(self._items) - KEEP_ITEMS)]:
            del self._items[item_id]
