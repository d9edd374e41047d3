"""The calibration tool's arithmetic (no model)."""

from __future__ import annotations

from loadtests.eot_calibration import PAIRS, held_out_pairs, policy_table
from server.streaming.end_of_turn import POLICIES


def test_the_held_out_set_is_not_the_calibration_set() -> None:
    held = held_out_pairs()
    assert held and not {c for c, _ in held} & {c for c, _ in PAIRS}
    for complete, cut in held:
        assert complete.startswith(cut) and len(cut.split()) < len(complete.split())
        assert "'" not in complete  # as a recogniser writes it


def test_policy_table_counts_each_eagerness() -> None:
    rows = policy_table("set", complete_p=[0.9, 0.8], cut_p=[0.001, 0.45])
    assert len(rows) == 1 + len(POLICIES)
    medium = next(r for r in rows if r.strip().startswith("medium"))
    assert "100%" in medium and "50%" in medium  # 0.45 passes medium's 0.4 threshold
    low = next(r for r in rows if r.strip().startswith("low"))
    assert "0%" in low.split()[3]  # 0.45 is below low's 0.5: no cut line ends early
