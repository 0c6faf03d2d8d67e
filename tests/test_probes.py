"""Probes and metrics against planted ground truth (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from wbsafe.analyses.refusal import (
    DiffMeansProbe,
    LogisticProbe,
    auroc,
    random_direction_baseline,
    recall_at_fpr,
)
from wbsafe.errors import WbsafeError


def _planted(seed: int = 0, n: int = 200, d: int = 64, gap: float = 3.0):
    rng = np.random.default_rng(seed)
    true = rng.standard_normal(d)
    true /= np.linalg.norm(true)
    y = np.array([1] * n + [0] * n)
    X = rng.standard_normal((2 * n, d)) + np.outer(y * gap, true)
    return X, y, true


def test_auroc_and_recall_known_values() -> None:
    y = [0, 0, 0, 1, 1, 1]
    assert auroc([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], y) == 1.0
    assert auroc([0.6, 0.5, 0.4, 0.3, 0.2, 0.1], y) == 0.0
    assert auroc([1, 1, 1, 1, 1, 1], y) == 0.5
    assert auroc([0.1, 0.5, 0.3, 0.4, 0.2, 0.6], y) == pytest.approx(6 / 9)
    neg = list(np.linspace(0, 1, 100))
    # at 1% FPR one negative (the largest, 1.0) may pass: threshold is the 2nd largest
    assert recall_at_fpr([*neg, 0.995, 0.98, 2.0], [0] * 100 + [1, 1, 1], 0.01) == pytest.approx(
        2 / 3
    )
    with pytest.raises(WbsafeError):
        auroc([0.1, 0.2], [1, 1])


@pytest.mark.parametrize("probe", [DiffMeansProbe(), LogisticProbe(C=0.1)])
def test_probe_recovers_planted_direction(probe) -> None:
    X, y, true = _planted()
    assert probe.fit(X, y) is probe
    assert float(probe.direction_ @ true) > 0.9
    assert probe.score(X, y) > 0.97
    assert probe.transform(X).shape == (len(y),)
    assert ((probe.predict(X) == y).mean()) > 0.9


def test_sklearn_contract_and_baseline() -> None:
    probe = LogisticProbe(C=2.0, max_iter=50)
    assert probe.get_params() == {"C": 2.0, "max_iter": 50}
    assert not any(k.endswith("_") for k in vars(probe))
    with pytest.raises(WbsafeError):
        probe.transform(np.zeros((2, 3)))
    X, y, _ = _planted(gap=1.0, d=256)
    fitted = DiffMeansProbe().fit(X, y)
    assert fitted.separation_ > 0.5
    base = random_direction_baseline(X, y, n=20, seed=0)
    assert 0.5 <= base < fitted.score(X, y)
    # a random direction on pure noise stays near chance
    noise = np.random.default_rng(3).standard_normal((400, 256))
    assert random_direction_baseline(noise, y, n=20, seed=0) < 0.65
