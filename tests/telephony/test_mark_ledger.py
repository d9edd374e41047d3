"""MarkLedger timelines: chunks sent, marks returned, clears -- in socket order, no clock."""

from __future__ import annotations

import pytest

from server.telephony.mark_ledger import ClearedItem, MarkLedger

CHUNK = 160  # 20 ms of 8 kHz mu-law


def send(ledger: MarkLedger, item_id: str, chunks: int) -> list[str]:
    names = [ledger.push_sent(item_id, CHUNK) for _ in range(chunks)]
    assert all(names)
    return [n for n in names if n is not None]


def test_marks_name_the_item_and_its_cumulative_position() -> None:
    ledger = MarkLedger()
    assert send(ledger, "item_a", 3) == ["item_a@20", "item_a@40", "item_a@60"]
    assert ledger.sent_ms("item_a") == 60
    assert ledger.played_ms("item_a") == 0
    assert ledger.is_playing


def test_returned_marks_advance_the_played_position() -> None:
    ledger = MarkLedger()
    names = send(ledger, "item_a", 3)
    returned = ledger.push_returned(names[0])
    assert returned is not None and returned.counted and returned.position_ms == 20
    ledger.push_returned(names[1])
    assert ledger.played_ms("item_a") == 40
    ledger.push_returned(names[2])
    assert ledger.played_ms("item_a") == 60
    assert not ledger.is_playing
    assert ledger.clear() == []  # nothing queued at Twilio: nothing to clear


def test_marks_returned_after_the_clear_do_not_count() -> None:
    """Twilio returns cleared marks at once; a mark played while the clear was in flight
    looks the same, so the position stays at the last mark returned before the clear."""
    ledger = MarkLedger()
    names = send(ledger, "item_a", 10)
    for name in names[:4]:
        ledger.push_returned(name)
    assert ledger.clear() == [ClearedItem("item_a", played_ms=80, sent_ms=200)]
    for name in names[4:]:
        returned = ledger.push_returned(name)
        assert returned is not None and not returned.counted
    assert ledger.played_ms("item_a") == 80
    assert ledger.outstanding_marks == 0
    assert not ledger.is_playing


def test_a_cleared_item_takes_no_more_audio() -> None:
    ledger = MarkLedger()
    send(ledger, "item_a", 2)
    ledger.clear()
    assert not ledger.accepts("item_a")
    with pytest.raises(ValueError):
        ledger.push_sent("item_a", CHUNK)
    assert ledger.accepts("item_b")
    assert send(ledger, "item_b", 1) == ["item_b@20"]


def test_a_later_item_counts_normally_after_a_clear() -> None:
    ledger = MarkLedger()
    a = send(ledger, "item_a", 5)
    ledger.push_returned(a[0])
    ledger.clear()
    b = send(ledger, "item_b", 2)
    for name in a[1:]:  # the cleared marks come back first (Twilio keeps order)
        ledger.push_returned(name)
    ledger.push_returned(b[0])
    assert ledger.played_ms("item_a") == 20
    assert ledger.played_ms("item_b") == 20
    assert ledger.last_item_id == "item_b"


def test_unknown_and_repeated_marks_change_nothing() -> None:
    ledger = MarkLedger()
    names = send(ledger, "item_a", 2)
    assert ledger.push_returned("someone-else@999") is None
    ledger.push_returned(names[1])
    assert ledger.push_returned(names[1]) is None
    assert ledger.played_ms("item_a") == 40


def test_positions_round_down_and_tiny_chunks_share_the_next_mark() -> None:
    ledger = MarkLedger()
    assert ledger.push_sent("item_a", 4) is None  # 0.5 ms: no whole millisecond yet
    assert ledger.push_sent("item_a", 164) == "item_a@21"  # 168 samples = 21 ms
    assert ledger.push_sent("item_a", 3) is None  # 171 samples: still 21 ms
    assert ledger.sent_ms("item_a") == 21


def test_old_items_are_forgotten() -> None:
    ledger = MarkLedger()
    for n in range(40):
        for name in send(ledger, f"item_{n}", 1):
            ledger.push_returned(name)
    assert not ledger.knows("item_0")
    assert ledger.knows("item_39") and ledger.played_ms("item_39") == 20
