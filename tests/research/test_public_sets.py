"""The second labeled sets' readers: one row per distinct text, conflicting copies gone."""

from __future__ import annotations

import bz2

from research.public_sets import distinct, rotten_tomatoes, trec


def test_trec_lines_give_coarse_labels_and_repeats_collapse():
    raw = (
        "DESC:manner How did serfdom develop ?\n"
        "HUM:ind Who killed Lincoln ?\n"
        "DESC:manner How did serfdom develop ?\n"
        "NUM:date When was it ?\nNUM:count When was it ?\n"
        "LOC:city Where is sister\ufffdcity ?\n"
    ).encode()
    rows = distinct(trec(raw))
    assert rows == [
        ("How did serfdom develop ?", "DESC"),
        ("Who killed Lincoln ?", "HUM"),
        ("When was it ?", "NUM"),  # both copies coarse NUM: kept
        ("Where is sister city ?", "LOC"),
    ]


def test_rotten_tomatoes_keeps_reviews_unescaped_and_drops_conflicts():
    csv_text = (
        "category,text,movie_name,has_plot_and_reviews\n"
        "fresh,Smart &amp; funny,a,True\n"
        "plot,A long synopsis,a,True\n"
        "rotten,Dull,b,True\n"
        "fresh,Dull,c,True\n"
    )
    rows = distinct(rotten_tomatoes(bz2.compress(csv_text.encode())))
    assert rows == [("Smart & funny", "fresh")]
