"""Small-sample statistics for refusal rates: Wilson intervals, exact McNemar, Holm, paired intervals.

Pure numpy/scipy; no torch. Every function takes counts or boolean judgements and returns
plain floats, so the gate and the report can quote the same numbers.

Conventions: a "rate" is a refusal rate in [0, 1]; "base" and "tuned" judgements are paired,
one entry per prompt, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as _sps


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile for ``confidence`` (0.95 -> 1.95996...)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(_sps.norm.ppf(0.5 + confidence / 2.0))


def _check_counts(k: float, n: float) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n; ``n == 0`` gives (0.0, 1.0).

    ``k`` may be fractional (used when projecting an observed rate onto more prompts).
    """
    _check_counts(k, n)
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = k / n
    z2n = z * z / n
    denom = 1.0 + z2n
    centre = (p + z2n / 2.0) / denom
    half = (z / denom) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def mcnemar_exact_one_sided(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value that the tuned model refuses less than the base.

    ``b``: pairs refused by base and answered by tuned; ``c``: answered by base and refused
    by tuned. Under H0 each discordant pair is a fair coin, so p = P(Binom(b + c, 1/2) >= b).
    No discordant pairs -> 1.0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, _sps.binom.sf(b - 1, b + c, 0.5)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order (monotone, capped at 1)."""
    m = len(pvalues)
    for p in pvalues:
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_table(base: Sequence[bool], tuned: Sequence[bool]) -> tuple[int, int, int, int]:
    """2x2 counts (a, b, c, d) of paired judgements.

    a: both refuse; b: base refuses, tuned answers; c: base answers, tuned refuses; d: neither.
    """
    if len(base) != len(tuned):
        raise ValueError(f"paired judgements differ in length: {len(base)} vs {len(tuned)}")
    a = b = c = d = 0
    for x, y in zip(base, tuned, strict=True):
        if x and y:
            a += 1
        elif x:
            b += 1
        elif y:
            c += 1
        else:
            d += 1
    return a, b, c, d


def paired_difference_interval_counts(
    a: int, b: int, c: int, d: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe (1998) method 10 interval for p_base - p_tuned from a paired 2x2 table.

    Square-and-add of the two Wilson intervals, with the correlation between the paired
    proportions entering through the (continuity-adjusted) phi coefficient, as in Newcombe's
    paper: phi = max(ad - bc - n/2, 0)/sqrt(A) when ad > bc, (ad - bc)/sqrt(A) otherwise,
    A = (a+b)(c+d)(a+c)(b+d), and phi = 0 when A = 0. n = 0 gives (-1.0, 1.0).
    """
    n = a + b + c + d
    if min(a, b, c, d) < 0:
        raise ValueError(f"table counts must be >= 0, got {(a, b, c, d)}")
    if n == 0:
        return (-1.0, 1.0)
    p1 = (a + b) / n
    p2 = (a + c) / n
    theta = p1 - p2
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    big_a = float(a + b) * (c + d) * (a + c) * (b + d)
    cross = float(a) * d - float(b) * c
    if big_a == 0.0:
        phi = 0.0
    elif cross > 0:
        phi = max(cross - n / 2.0, 0.0) / math.sqrt(big_a)
    else:
        phi = cross / math.sqrt(big_a)
    dl = max(0.0, (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    du = max(0.0, (u1 - p1) ** 2 - 2.0 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return (max(-1.0, theta - math.sqrt(dl)), min(1.0, theta + math.sqrt(du)))


def paired_difference_interval(
    base: Sequence[bool], tuned: Sequence[bool], confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for rate_base - rate_tuned on paired judgements (Newcombe method 10)."""
    return paired_difference_interval_counts(*paired_table(base, tuned), confidence=confidence)


def relative_drop(rate_base: float, rate_tuned: float) -> float | None:
    """(rate_base - rate_tuned) / rate_base; None when the base never refuses."""
    if rate_base <= 0.0:
        return None
    return (rate_base - rate_tuned) / rate_base


def relative_drop_interval(
    rate_base: float, difference_interval: tuple[float, float]
) -> tuple[float, float] | None:
    """Approximate interval for the relative drop: the paired difference interval / rate_base.

    Approximation: treats the base rate as known (it is measured on the same prompts, so its
    own noise is partly shared with the difference); clipped to the feasible range
    [(rate_base - 1)/rate_base, 1]. None when the base never refuses.
    """
    if rate_base <= 0.0:
        return None
    lo, hi = difference_interval
    floor = (rate_base - 1.0) / rate_base  # tuned refuses everything
    return (max(floor, lo / rate_base), min(1.0, hi / rate_base))


def prompts_to_settle(k: float, n: float, edge: float, confidence: float = 0.95) -> int | None:
    """More prompts (at the observed rate k/n) until the Wilson interval excludes ``edge``.

    The Wilson interval is the set of proportions e with (p - e)^2 <= z^2 e(1 - e)/N, so it
    excludes ``edge`` once N > z^2 e(1 - e)/(p - e)^2. Returns 0 when it already does, None
    when the point estimate sits on the edge (no number of prompts settles it).
    """
    _check_counts(k, n)
    if n == 0:
        return None
    p = k / n
    if math.isclose(p, edge, rel_tol=0.0, abs_tol=1e-12):
        return None
    z = _z(confidence)
    needed = math.floor(z * z * edge * (1.0 - edge) / (p - edge) ** 2) + 1
    return max(0, needed - math.ceil(n))


def prompts_to_settle_interval(
    n: int, estimate: float, interval: tuple[float, float], edge: float
) -> int | None:
    """More paired prompts until an interval around ``estimate`` no longer straddles ``edge``.

    Assumes the interval's half-width on the side facing the edge shrinks as 1/sqrt(n) with the
    estimate held fixed (the usual large-sample scaling); used for intervals that are not a
    single Wilson interval, such as the relative drop. Values equal to the edge count as below
    it (as in the gate's bands). Returns 0 when the interval already lies on one side, None when the estimate sits on the edge or n is 0.
    """
    lo, hi = interval
    if not lo <= edge < hi:
        return 0
    gap = abs(estimate - edge)
    if n <= 0 or gap <= 1e-12:
        return None
    half = (hi - estimate) if edge > estimate else (estimate - lo)
    needed = math.floor(n * (half / gap) ** 2) + 1
    return max(0, needed - n)
