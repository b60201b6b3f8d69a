"""The recorded labels of a simulation replayed in random orders under other looks."""

from __future__ import annotations

import json
from pathlib import Path

from research.simulate import reorder

TERMS = {"margin": 0.0, "min_gain": 0.01, "alpha": 0.05, "target_power": 0.8, "looks": 4}


def _result(wins: int, losses: int, ties: int, gain: float) -> dict:
    decision = {
        "round": 1,
        "test_macro_f1_gain": gain,
        "published": True,
        "reviews": wins + losses + ties - 5,
        "gate_disagreements": 5,
        "gate": {
            "terms": TERMS,
            "verdict": {
                "tally": {"wins": wins, "losses": losses, "ties": ties},
                "disagreement_rate": 0.137,
            },
        },
    }
    no_test = {**decision, "gate": {"terms": TERMS, "verdict": None}}
    return {"runs": [{"seed": 1, "arm": "gold_only", "decisions": [decision, no_test]}]}


def test_equal_looks_need_every_recorded_label_where_doubling_ones_need_a_share(tmp_path: Path):
    # 194 wins, 105 losses: a candidate several points better, recorded as decided only
    # when its labels ran out (the plan asks for well over a thousand decisive labels).
    rows = reorder.reorder(_result(194, 105, 48, 0.0876), orders=10)
    assert len(rows) == 1  # the decision without a test is left out
    row = rows[0]
    assert row["equal/4"] == {"published": 1.0, "reviews": 342}
    assert row["doubling/8"]["published"] == 1.0
    assert row["doubling/8"]["reviews"] < 200
    # Early looks at 0.001: later than at alpha / 8, still before the labels run out.
    assert row["doubling/8 at 0.001"]["published"] == 1.0
    assert row["doubling/8"]["reviews"] <= row["doubling/8 at 0.001"]["reviews"] < 342
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_result(194, 105, 48, 0.0876)))
    reorder.main([str(path), "--orders", "5"])


def test_an_even_tally_is_not_published_in_most_orders():
    rows = reorder.reorder(_result(100, 100, 20, 0.0), orders=40)
    assert rows[0]["doubling/8"]["published"] <= 0.1
    assert rows[0]["equal/4"]["published"] <= 0.1
    assert "| 1 | `gold_only` | 1 | +0.00 | yes, 215 |" in reorder.markdown(rows, 40)
