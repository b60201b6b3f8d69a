"""The bench's ceiling of the machine: which layouts it measures, and which of them a load
of N concurrent one-text requests can reach."""

from __future__ import annotations

from bench.layouts import best_within, layouts


def row(processes: int, batch: int, texts_per_s: float) -> dict[str, float]:
    threads = 2 // processes
    return {"processes": processes, "threads": threads, "batch": batch, "texts_per_s": texts_per_s}


def test_every_layout_uses_all_cores():
    assert layouts(2) == [(1, 2), (2, 1)]
    assert layouts(4) == [(1, 4), (2, 2), (4, 1)]
    assert layouts(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]


def test_the_reachable_ceiling_needs_no_more_texts_than_are_in_flight():
    # The AMX run's bf16 rows: 2 x 1 at batch 32 needs 64 texts at once, more than c=32 holds.
    rows = [row(1, 32, 658.2), row(2, 1, 282.9), row(2, 16, 805.3), row(2, 32, 820.8)]
    assert best_within(rows, 32) == row(2, 16, 805.3)
    assert best_within(rows, 64) == row(2, 32, 820.8)
    assert best_within(rows, 2) == row(2, 1, 282.9)
    # Fewer texts than any layout needs: the best row still, not an error.
    assert best_within(rows[1:], 1) == row(2, 32, 820.8)
