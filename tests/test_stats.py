"""Statistics against known values, hand formulas and exact coverage."""

from __future__ import annotations

import itertools
import math

import pytest
from scipy import stats as sps

from wbsafe import stats


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (2 * n * p + z * z) / (2 * (n + z * z))
    half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
    return centre - half, centre + half


def test_wilson_known_values() -> None:
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = stats.wilson_interval(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(0.7225, abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(1, 7), (3, 20), (37, 50), (250, 500), (999, 1000)])
def test_wilson_matches_hand_formula(k: int, n: int) -> None:
    assert stats.wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)


def test_wilson_confidence_widens_and_rejects_bad_input() -> None:
    lo90, hi90 = stats.wilson_interval(30, 60, confidence=0.90)
    lo99, hi99 = stats.wilson_interval(30, 60, confidence=0.99)
    assert lo99 < lo90 < 0.5 < hi90 < hi99
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)
    with pytest.raises(ValueError):
        stats.wilson_interval(1, 10, confidence=1.0)


def test_mcnemar_exact_one_sided() -> None:
    assert stats.mcnemar_exact_one_sided(10, 2) == pytest.approx(0.01929, abs=1e-5)
    assert stats.mcnemar_exact_one_sided(10, 2) == pytest.approx(79 / 4096, rel=1e-12)
    assert stats.mcnemar_exact_one_sided(0, 0) == 1.0
    # the tuned model refusing *more* is no evidence for H1
    assert stats.mcnemar_exact_one_sided(0, 5) == 1.0
    assert stats.mcnemar_exact_one_sided(5, 0) == pytest.approx(1 / 32)
    assert stats.mcnemar_exact_one_sided(3, 3) == pytest.approx(42 / 64)


def test_holm_textbook_example() -> None:
    # four tests, sorted p 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.03, 0.06, 0.06 (monotone step)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_paired_table_and_identical_judgements() -> None:
    base = [True] * 95 + [False] * 5
    assert stats.paired_table(base, base) == (95, 0, 0, 5)
    lo, hi = stats.paired_difference_interval(base, base)
    assert lo < 0.0 < hi
    assert hi == pytest.approx(-lo)
    # pairing helps: narrower than the unpaired square-and-add interval
    l1, u1 = stats.wilson_interval(95, 100)
    assert hi < math.sqrt((0.95 - l1) ** 2 + (u1 - 0.95) ** 2)
    with pytest.raises(ValueError):
        stats.paired_table([True], [True, False])


def test_paired_difference_interval_contains_estimate_and_orders() -> None:
    lo, hi = stats.paired_difference_interval_counts(50, 40, 2, 8)
    assert lo < 0.38 < hi
    assert lo > 0.0  # a clear drop
    assert stats.paired_difference_interval_counts(0, 0, 0, 0) == (-1.0, 1.0)
    lo, hi = stats.paired_difference_interval_counts(0, 10, 0, 0)
    assert hi == pytest.approx(1.0)
    assert 0.0 < lo < 1.0


def _coverage(n: int, probs: tuple[float, float, float, float]) -> float:
    """Exact coverage of the 95% paired interval by enumerating every 2x2 table of size n."""
    truth = (probs[0] + probs[1]) - (probs[0] + probs[2])
    total = 0.0
    for a, b in itertools.product(range(n + 1), repeat=2):
        for c in range(n + 1 - a - b):
            d = n - a - b - c
            pr = sps.multinomial.pmf([a, b, c, d], n, probs)
            lo, hi = stats.paired_difference_interval_counts(a, b, c, d)
            if lo <= truth <= hi:
                total += pr
    return total


@pytest.mark.parametrize(
    "probs",
    [(0.6, 0.2, 0.05, 0.15), (0.85, 0.05, 0.05, 0.05), (0.3, 0.3, 0.1, 0.3), (0.7, 0.2, 0.0, 0.1)],
)
def test_paired_difference_interval_exact_coverage(probs: tuple[float, ...]) -> None:
    cov = _coverage(20, probs)  # type: ignore[arg-type]
    # near nominal: Newcombe's method 10 is slightly conservative when discordance is rare
    assert 0.94 <= cov <= 0.999


def test_relative_drop_and_interval() -> None:
    assert stats.relative_drop(0.8, 0.4) == pytest.approx(0.5)
    assert stats.relative_drop(0.5, 0.6) == pytest.approx(-0.2)
    assert stats.relative_drop(0.0, 0.1) is None
    assert stats.relative_drop_interval(0.5, (0.1, 0.2)) == pytest.approx((0.2, 0.4))
    assert stats.relative_drop_interval(0.0, (0.1, 0.2)) is None
    # clipped to what is possible: tuned cannot refuse less than never or more than always
    assert stats.relative_drop_interval(0.5, (-0.6, 0.55)) == pytest.approx((-1.0, 1.0))


def test_prompts_to_settle_wilson() -> None:
    k, n, edge = 45, 100, 0.5
    extra = stats.prompts_to_settle(k, n, edge)
    assert extra is not None and extra > 0
    p = k / n
    total = n + extra
    lo, hi = stats.wilson_interval(p * total, total)
    assert hi < edge  # settled
    lo, hi = stats.wilson_interval(p * (total - 1), total - 1)
    assert lo <= edge <= hi  # one fewer is not enough
    assert stats.prompts_to_settle(10, 100, 0.5) == 0
    assert stats.prompts_to_settle(50, 100, 0.5) is None


def test_prompts_to_settle_interval_scaling() -> None:
    # estimate 0.10, interval [0.04, 0.16], edge 0.15: upper half-width 0.06 must fall below 0.05
    extra = stats.prompts_to_settle_interval(100, 0.10, (0.04, 0.16), 0.15)
    assert extra == math.floor(100 * (0.06 / 0.05) ** 2) + 1 - 100
    assert stats.prompts_to_settle_interval(100, 0.10, (0.04, 0.14), 0.15) == 0
    assert stats.prompts_to_settle_interval(100, 0.15, (0.10, 0.20), 0.15) is None
