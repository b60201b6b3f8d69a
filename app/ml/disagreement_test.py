"""The gate's test: is the candidate more often right than the champion where they differ?

Two models that mostly agree differ on a few texts in a hundred, and only those texts carry
the difference in accuracy: labeling them, and nothing else, is the cheapest evidence
there is. On each labeled disagreement the candidate is right (a win), the champion is
right (a loss), or neither is (a tie: they disagree, so they are never both right). The
accuracy gain over all texts judged is the disagreement rate times (win rate - loss rate).

The test is a one-sided exact binomial (sign) test on the decisive disagreements, run
once, at a sample size planned beforehand so that it has the asked power against the
smallest gain worth publishing (the margin plus `min_gain`): testing after every label
would publish a no-better candidate far more often than alpha. Until that many decisive
labels exist, the verdict is "pending", with how many more reviews it needs; if every
disagreement is labeled first, the test runs on what there is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

# Planned sample sizes are searched up to this many decisive labels.
MAX_PLANNED = 50_000


@dataclass(frozen=True)
class Tally:
    """Labeled disagreements between a candidate and the champion."""

    wins: int = 0  # the candidate right, the champion wrong
    losses: int = 0  # the champion right, the candidate wrong
    ties: int = 0  # both wrong

    @property
    def decisive(self) -> int:
        return self.wins + self.losses

    @property
    def labeled(self) -> int:
        return self.wins + self.losses + self.ties

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.wins + other.wins, self.losses + other.losses, self.ties + other.ties)


def tally(gold: list[str], candidate: list[str], champion: list[str]) -> Tally:
    """Wins, losses and ties of `candidate` over `champion` on the texts where they differ."""
    wins = losses = ties = 0
    for g, a, b in zip(gold, candidate, champion, strict=True):
        if a == b:
            continue
        if a == g:
            wins += 1
        elif b == g:
            losses += 1
        else:
            ties += 1
    return Tally(wins, losses, ties)


def _tails(n: int, p: float) -> np.ndarray:
    """P(X >= k) for k = 0..n+1, X ~ Binomial(n, p), exactly (summed from the far end in
    log space, so tails far below any alpha stay accurate)."""
    k = np.arange(n + 1)
    if p <= 0.0 or p >= 1.0:
        pmf = (k == (n if p >= 1.0 else 0)).astype(float)
    else:
        log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
        log_comb = log_factorial[n] - log_factorial[k] - log_factorial[n - k]
        pmf = np.exp(log_comb + k * math.log(p) + (n - k) * math.log1p(-p))
    tails = np.concatenate([np.cumsum(pmf[::-1])[::-1], [0.0]])
    bounded: np.ndarray = np.minimum(tails, 1.0)
    return bounded


def upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(_tails(n, p)[k])


def critical_wins(n: int, null_share: float, alpha: float) -> int:
    """The fewest wins out of `n` decisive labels that reject "the candidate wins at most
    `null_share` of them" at level `alpha` (n + 1: none can)."""
    tails = _tails(n, null_share)
    return int(np.argmax(tails <= alpha))  # tails[n + 1] is 0: there is always one


def power(n: int, null_share: float, true_share: float, alpha: float) -> float:
    """The chance the test on `n` decisive labels publishes when the candidate really
    wins `true_share` of them."""
    return upper_tail(critical_wins(n, null_share, alpha), n, true_share)


def planned_decisive(null_share: float, true_share: float, alpha: float, target: float) -> int:
    """The fewest decisive labels at which the test reaches `target` power against
    `true_share` (MAX_PLANNED where none up to it does)."""
    if true_share <= null_share:
        return MAX_PLANNED
    # The normal approximation gives the neighbourhood; the exact power is checked from a
    # little below it, since a discrete test's power is not monotone in n.
    z_a, z_b = _z(1 - alpha), _z(target)
    spread = (
        math.sqrt(null_share * (1 - null_share)) * z_a
        + math.sqrt(true_share * (1 - true_share)) * z_b
    )
    guess = max(1, int((spread / (true_share - null_share)) ** 2 * 0.8))
    for n in range(guess, MAX_PLANNED):
        if power(n, null_share, true_share, alpha) >= target:
            return n
    return MAX_PLANNED


def _z(q: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, ample here)."""
    a = [-39.6968302866538, 220.946098424521, -275.928510446969, 138.357751867269]
    a += [-30.6647980661472, 2.50662827745924]
    b = [-54.4760987982241, 161.585836858041, -155.698979859887, 66.8013118877197]
    b += [-13.2806815528857]
    c = [-0.00778489400243029, -0.322396458041136, -2.40075827716184, -2.54973253934373]
    c += [4.37466414146497, 2.93816398269878]
    d = [0.00778469570904146, 0.32246712907004, 2.445134137143, 3.75440866190742]
    if q < 0.02425:
        r = math.sqrt(-2 * math.log(q))
        num = ((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]
        return num / ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if q > 1 - 0.02425:
        return -_z(1 - q)
    r = (q - 0.5) ** 2
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * (q - 0.5)
    return num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


Verdict = Literal["publish", "reject", "pending"]


@dataclass(frozen=True)
class GateVerdict:
    verdict: Verdict
    tally: Tally
    disagreement_rate: float  # of the texts both models scored
    null_share: float  # the win share among decisive labels the test must beat
    planned_share: float  # the win share of the smallest gain worth publishing
    planned_decisive: int  # decisive labels the test is run at
    power: float  # at the planned gain, with the labels it is (or will be) run on
    p_value: float | None  # None while pending
    reviews_needed: int  # more labels to reach the planned decisive count (0: none)
    gain: float  # the accuracy gain the labels estimate, over all texts judged
    reason: str

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tally"] = asdict(self.tally)
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in out.items()}


def judge(
    counts: Tally,
    *,
    disagreement_rate: float,
    margin: float,
    min_gain: float,
    alpha: float,
    target_power: float,
    unlabeled: int,
) -> GateVerdict:
    """The verdict on `counts` (labeled disagreements) where the two models disagree on
    `disagreement_rate` of the texts they were both run on, `unlabeled` disagreements are
    still waiting for a label, and a candidate is published if shown better by more than
    `margin` (accuracy, over all texts), planned for a true gain of `margin + min_gain`."""
    d = max(disagreement_rate, 1e-9)
    # Among disagreements the decisive share is estimated from the labels; planning assumes
    # all are decisive, which asks for more labels than needed, never fewer.
    decisive_share = counts.decisive / counts.labeled if counts.labeled else 1.0
    null_share = min(0.999, 0.5 * (1 + margin / (d * max(decisive_share, 1e-9))))
    null_share = max(0.5, null_share) if margin >= 0 else max(0.001, null_share)
    planned_share = min(0.999, 0.5 * (1 + (margin + min_gain) / d))
    planned = planned_decisive(null_share, planned_share, alpha, target_power)
    n = counts.decisive
    gain = d * (counts.wins - counts.losses) / counts.labeled if counts.labeled else 0.0
    reachable = n + round(unlabeled * decisive_share)
    if n < planned and reachable > n:
        more = math.ceil((planned - n) / max(decisive_share, 1e-9))
        return GateVerdict(
            "pending",
            counts,
            d,
            null_share,
            planned_share,
            planned,
            power(min(planned, max(reachable, 1)), null_share, planned_share, alpha),
            None,
            min(more, unlabeled),
            gain,
            f"needs {min(more, unlabeled)} more reviews to decide "
            f"({n} of {planned} decisive labels)",
        )
    at = max(n, 1)
    p_value = upper_tail(counts.wins, n, null_share) if n else 1.0
    achieved = power(at, null_share, planned_share, alpha)
    where = (
        f"{counts.wins} wins, {counts.losses} losses, {counts.ties} ties on "
        f"{counts.labeled} labeled disagreements (disagreement rate {d:.1%}); "
        f"exact test p={p_value:.3g} against a win share of {null_share:.3f}, "
        f"power {achieved:.0%} for a gain of {margin + min_gain:+.1%}"
    )
    if p_value <= alpha:
        return GateVerdict(
            "publish",
            counts,
            d,
            null_share,
            planned_share,
            planned,
            achieved,
            p_value,
            0,
            gain,
            f"{where}: shown better than the margin {margin:+.1%}",
        )
    return GateVerdict(
        "reject",
        counts,
        d,
        null_share,
        planned_share,
        planned,
        achieved,
        p_value,
        0,
        gain,
        f"{where}: not shown better than the margin {margin:+.1%}",
    )
