"""The gate's test: is the candidate more often right than the champion where they differ?

Two models that mostly agree differ on a few texts in a hundred, and only those texts carry
the difference in accuracy: labeling them, and nothing else, is the cheapest evidence
there is. On each labeled disagreement the candidate is right (a win), the champion is
right (a loss), or neither is (a tie: they disagree, so they are never both right). The
accuracy gain over all texts judged is the disagreement rate times (win rate - loss rate).

The test is a one-sided exact binomial (sign) test on the decisive disagreements, at a
sample size planned beforehand so that it has the asked power against the smallest gain
worth publishing (the margin plus `min_gain`). Testing after every label would publish a
no-better candidate far more often than alpha, so the test is run at a few looks only: at
most `looks` of them, each at alpha / looks, with the sample size planned at that level.
With one look it is taken at the planned count; with more, the first is taken at once (the
end of the job: the gate split's free labels and whatever is labeled already) and the
others as the decisive labels pass each further share of the planned count (equal shares,
or counts that double up to it: `look_spacing`). Whatever the count, a look is taken when
nothing more can come (every disagreement labeled, and no new traffic can bring more) or
at the deadline, and that last look decides: it is taken at
what the earlier looks left of alpha, alpha less alpha / looks for each look spent
(Bonferroni: the levels of the looks taken add up to at most alpha, so the chance that any
look publishes a candidate no better than the margin stays at most alpha, however the looks
fall). A candidate whose disagreements run out before the planned count, the common case
with a few hundred of them, is then judged at alpha rather than at a share of it. Where new
traffic can bring more disagreements (a waiting candidate is shown the traffic stored after
its job: workers/review_traffic.py), an empty queue is not the end: the candidate waits for
them, and the looks stay where they are planned. Until a look decides, the verdict is
"pending", with how many more reviews it needs. With `early_level`, every look but the
last is at that smaller level, the last at what they left, the plan sized for the last.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
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
    tails: np.ndarray = np.minimum(np.concatenate([np.cumsum(pmf[::-1])[::-1], [0.0]]), 1.0)
    return tails


def upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(_tails(n, p)[k])


@lru_cache(maxsize=8192)
def critical_wins(n: int, null_share: float, alpha: float) -> int:
    """The fewest wins out of `n` decisive labels that reject "the candidate wins at most
    `null_share` of them" at level `alpha` (n + 1: none can)."""
    tails = _tails(n, null_share)
    return int(np.argmax(tails <= alpha))  # tails[n + 1] is 0: there is always one


@lru_cache(maxsize=8192)
def power(n: int, null_share: float, true_share: float, alpha: float) -> float:
    """The chance the test on `n` decisive labels publishes when the candidate really
    wins `true_share` of them."""
    return upper_tail(critical_wins(n, null_share, alpha), n, true_share)


@lru_cache(maxsize=1024)
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
    planned_decisive: int  # decisive labels the last look is planned at
    power: float  # at the planned gain, with the labels it is (or will be) run on
    p_value: float | None  # of the look taken now; None where none was
    reviews_needed: int  # more labels to reach the planned decisive count (0: none)
    gain: float  # the accuracy gain the labels estimate, over all texts judged
    reason: str
    level: float = 0.0  # what this look's p-value must be at most (module docstring)
    looks: int = 1  # looks allowed
    looks_used: int = 0  # looks spent, this one included
    looked_at: int | None = None  # decisive labels at the latest look point (spent or not)
    next_look_at: int | None = None  # decisive labels at which the next look comes

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tally"] = asdict(self.tally)
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in out.items()}


Spacing = Literal["equal", "doubling"]


def look_points(planned: int, looks: int, spacing: Spacing = "equal") -> list[int]:
    """Decisive-label counts at which looks after the first come: equal shares of the
    planned count, or counts doubling up to it (with one look, the planned count itself).
    Doubling looks early, where a candidate far better than planned is already shown
    better on a small share of the plan; the looks' levels do not depend on where they
    fall, so either spacing keeps alpha."""
    later = max(1, looks - 1)
    if spacing == "doubling":
        return [max(1, math.ceil(planned / 2 ** (later - j))) for j in range(1, later + 1)]
    return [max(1, math.ceil(planned * j / later)) for j in range(1, later + 1)]


@dataclass(frozen=True)
class _Plan:
    """What a verdict is planned against: the test's null, the planned gain, the looks."""

    d: float  # the disagreement rate
    decisive_share: float  # of the disagreements, as the labels estimate it (1 before any)
    null_share: float
    planned_share: float
    planned: int
    level: float  # of each look but the last
    looks: int
    points: list[int]
    plan_level: float  # the level the planned count is sized for


def judge(
    counts: Tally,
    *,
    disagreement_rate: float,
    margin: float,
    min_gain: float,
    alpha: float,
    target_power: float,
    unlabeled: int,
    looks: int = 1,
    looks_used: int = 0,
    last_look_at: int | None = None,
    final: bool = False,
    more_coming: bool = False,
    spacing: Spacing = "equal",
    early_level: float = 0.0,
) -> GateVerdict:
    """The verdict on `counts` (labeled disagreements) where the two models disagree on
    `disagreement_rate` of the texts they were both run on, `unlabeled` disagreements are
    still waiting for a label, and a candidate is published if shown better by more than
    `margin` (accuracy, over all texts), planned for a true gain of `margin + min_gain`.

    The looks (module docstring): `looks_used` spent so far, the latest look point at
    `last_look_at` decisive labels (None: no look yet, the end of the job), `final` at
    the deadline. A look that could not publish whatever the labels said (too few
    decisive labels for any count of wins to pass) is not spent. `more_coming`: new
    traffic can still bring disagreements, so an empty queue waits instead of deciding.
    `early_level` (0: alpha / looks): the level of every look but the last, at most alpha /
    looks; the last takes what they left, and the plan is made at the least it can be, so
    that a small early level keeps nearly all of alpha, and the power, for the last look
    (Haybittle and Peto's rule)."""
    level = plan_level = alpha / looks
    if early_level > 0:  # the early looks at it, the plan at what they leave the last
        level = min(early_level, alpha / looks)
        plan_level = alpha - (looks - 1) * level
    if disagreement_rate <= 0.0 and counts.labeled == 0 and unlabeled == 0:
        return _identical(counts, margin, level, looks, looks_used)
    d = max(disagreement_rate, 1e-9)
    # Among disagreements the decisive share is estimated from the labels; planning assumes
    # all are decisive, which asks for more labels than needed, never fewer.
    decisive_share = counts.decisive / counts.labeled if counts.labeled else 1.0
    n = counts.decisive
    gain = d * (counts.wins - counts.losses) / counts.labeled if counts.labeled else 0.0
    raw_null = 0.5 * (1 + margin / (d * max(decisive_share, 1e-9)))
    if raw_null <= 0.0:
        # The candidate cannot lose more than the texts it disagrees on: a margin below
        # that allows any loss, so there is nothing to test.
        reason = (
            f"the margin {margin:+.1%} allows any loss where the models disagree "
            f"({d:.1%} of the texts judged): published without a test"
        )
        return GateVerdict(
            "publish", counts, d, 0.0, 0.5, 0, 1.0, 0.0, 0, gain, reason,
            level=level, looks=looks, looks_used=looks_used,
        )  # fmt: skip
    null_share = min(0.999, raw_null)
    null_share = max(0.5, null_share) if margin >= 0 else max(0.001, null_share)
    # The smallest gain worth publishing, as a win share; at least min_gain above the null
    # however few of the disagreements the labels say are decisive.
    planned_share = min(
        0.999, max(0.5 * (1 + (margin + min_gain) / d), null_share + 0.5 * min_gain / d)
    )
    planned = planned_decisive(null_share, planned_share, plan_level, target_power)
    plan = _Plan(
        d, decisive_share, null_share, planned_share, planned, level, looks,
        look_points(planned, looks, spacing), plan_level,
    )  # fmt: skip
    reachable = planned if more_coming else n + round(unlabeled * decisive_share)

    def passed(k: int | None) -> int:
        return -1 if k is None else sum(p <= k for p in plan.points)

    due = n >= planned if looks == 1 else passed(n) > passed(last_look_at)
    spent_all = looks_used >= looks  # never, where the caller keeps what the looks said
    # Run out only when nothing is left to label: the decisive share estimated from a few
    # labels (a first tie says none will be) must not end the test before the queue does,
    # and an empty queue does not either while new traffic can fill it.
    ran_out = unlabeled <= 0 and not more_coming
    last = final or spent_all or ran_out or n >= planned
    last = last or (due and looks_used + 1 >= looks)
    if last and not spent_all:
        level = alpha - looks_used * plan.level  # what the earlier looks left
    can_publish = not spent_all and n > 0 and critical_wins(n, null_share, level) <= n
    if not last and not (due and can_publish):
        at = n if due else last_look_at
        return _pending(counts, gain, plan, unlabeled, reachable, looks_used, at, None, more_coming)
    used = looks_used + (1 if can_publish else 0)
    p_value = upper_tail(counts.wins, n, null_share) if n else 1.0
    published = can_publish and p_value <= level
    if not last and not published:
        return _pending(counts, gain, plan, unlabeled, reachable, used, n, p_value, more_coming)
    achieved = power(max(n, 1), null_share, planned_share, level)
    where = (
        f"{counts.wins} wins, {counts.losses} losses, {counts.ties} ties on "
        f"{counts.labeled} labeled disagreements (disagreement rate {d:.1%}); "
        f"exact test p={p_value:.3g} against a win share of {null_share:.3f} "
        f"(look {max(used, 1)} of {looks}, at most {level:.3g}), "
        f"power {achieved:.0%} for a gain of {margin + min_gain:+.1%}"
    )
    if n == 0:  # no test was run: nothing could show a gain
        where = (
            f"no decisive label among {counts.labeled} labeled disagreements "
            f"(disagreement rate {d:.1%}; {planned} planned)"
        )
    elif n < planned and not published:
        where += f" with {n} of the {planned} decisive labels planned"
    shown = "shown" if published else "not shown"
    return GateVerdict(
        "publish" if published else "reject",
        counts,
        d,
        null_share,
        planned_share,
        planned,
        achieved,
        p_value,
        0,
        gain,
        f"{where}: {shown} better than the margin {margin:+.1%}",
        level=level,
        looks=looks,
        looks_used=used,
        looked_at=n,
    )


def _identical(
    counts: Tally, margin: float, level: float, looks: int, looks_used: int
) -> GateVerdict:
    """No text where the two models answer differently: nothing can show a gain, and no
    loss is possible either."""
    verdict: Verdict = "publish" if margin < 0 else "reject"
    said = "no loss, as allowed by" if margin < 0 else "not shown better than"
    reason = f"identical answers on every text judged: {said} the margin {margin:+.1%}"
    return GateVerdict(
        verdict, counts, 0.0, 0.5, 0.5, 0, 0.0, None, 0, 0.0, reason,
        level=level, looks=looks, looks_used=looks_used,
    )  # fmt: skip


def _pending(
    counts: Tally,
    gain: float,
    plan: _Plan,
    unlabeled: int,
    reachable: int,
    looks_used: int,
    looked_at: int | None,
    p_value: float | None,
    more_coming: bool = False,
) -> GateVerdict:
    """Waiting for labels: how many more it needs, and where the next look comes."""
    n, planned = counts.decisive, plan.planned
    more = math.ceil(max(0, planned - n) / max(plan.decisive_share, 1e-9))
    if not more_coming:
        more = min(more, unlabeled)
    upcoming = [p for p in plan.points if p > max(n, looked_at or 0)]
    reason = f"needs {more} more reviews to decide ({n} of {planned} decisive labels)"
    if more_coming and unlabeled <= 0:
        reason += "; every queued disagreement is labeled: it waits for new traffic to review"
    if p_value is not None:
        reason = (
            f"not yet shown better at look {looks_used} of {plan.looks} "
            f"(p={p_value:.3g} > {plan.level:.3g}); {reason}"
        )
    return GateVerdict(
        "pending",
        counts,
        plan.d,
        plan.null_share,
        plan.planned_share,
        planned,
        power(
            min(planned, max(reachable, 1)), plan.null_share, plan.planned_share, plan.plan_level
        ),
        p_value,
        more,
        gain,
        reason,
        level=plan.level,
        looks=plan.looks,
        looks_used=looks_used,
        looked_at=looked_at,
        next_look_at=upcoming[0] if upcoming else planned,
    )
