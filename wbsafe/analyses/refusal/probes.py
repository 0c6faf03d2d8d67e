"""Linear probes for a binary concept (harmful vs harmless), scikit-learn style.

Estimators store their parameters in ``__init__`` only; ``fit(X, y)`` returns ``self``;
fitted state ends in ``_``; ``transform`` gives the projection onto the unit direction;
``score(X, y)`` is the AUROC of that projection (higher is better). ``X`` is
Float[n, d_model] (numpy or torch), ``y`` is 0/1 with 1 = harmful.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from wbsafe.errors import WbsafeError

Array = NDArray[np.float64]


def _as_array(X: Any) -> Array:
    if hasattr(X, "detach"):
        X = X.detach().cpu().double().numpy()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise WbsafeError(f"expected a 2-D array [n, d], got shape {arr.shape}")
    return arr


def _as_labels(y: Any) -> NDArray[np.int64]:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    labels = np.asarray(y).astype(np.int64).ravel()
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise WbsafeError("labels must be 0 (harmless) or 1 (harmful)")
    return labels


def auroc(scores: Any, y: Any) -> float:
    """Area under the ROC curve of ``scores`` for labels ``y`` (ties count one half)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = _as_labels(y)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise WbsafeError("AUROC needs both classes")
    ranks = rankdata(s)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_fpr(scores: Any, y: Any, fpr: float = 0.01) -> float:
    """Share of positives scored above a threshold that lets at most ``fpr`` of negatives pass."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = _as_labels(y)
    neg = np.sort(s[labels == 0])[::-1]
    pos = s[labels == 1]
    if len(neg) == 0 or len(pos) == 0:
        raise WbsafeError("recall at FPR needs both classes")
    allowed = int(np.floor(fpr * len(neg)))
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float((pos > threshold).mean())


def random_direction_baseline(X: Any, y: Any, n: int = 100, seed: int = 0) -> float:
    """Best AUROC over ``n`` random unit directions (either sign): the chance level to beat."""
    arr = _as_array(X)
    labels = _as_labels(y)
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n, arr.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    proj = arr @ dirs.T
    best = 0.0
    for k in range(n):
        a = auroc(proj[:, k], labels)
        best = max(best, a, 1.0 - a)
    return best


class _ProjectionProbe:
    """Shared behaviour: projection, prediction and AUROC score from ``direction_``."""

    direction_: Array
    threshold_: float

    def _check_fitted(self) -> None:
        if not hasattr(self, "direction_"):
            raise WbsafeError(f"{type(self).__name__} is not fitted; call fit(X, y) first")

    def transform(self, X: Any) -> Array:
        """Projection onto the unit direction: Float[n]."""
        self._check_fitted()
        return _as_array(X) @ self.direction_

    def decision_function(self, X: Any) -> Array:
        return self.transform(X) - self.threshold_

    def predict(self, X: Any) -> NDArray[np.int64]:
        return (self.decision_function(X) > 0).astype(np.int64)

    def score(self, X: Any, y: Any) -> float:
        """AUROC of the projection (higher is better)."""
        return auroc(self.transform(X), y)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def set_params(self, **params: Any) -> _ProjectionProbe:
        for k, v in params.items():
            setattr(self, k, v)
        return self


class DiffMeansProbe(_ProjectionProbe):
    """Difference of class means (float64): ``raw_direction_ = mean(X|1) - mean(X|0)``.

    Fitted: ``direction_`` (unit), ``raw_direction_``, ``mean_pos_``, ``mean_neg_``,
    ``threshold_`` (midpoint of the class means' projections), ``separation_`` (distance
    between those projections).
    """

    def __init__(self) -> None:
        pass

    def fit(self, X: Any, y: Any) -> DiffMeansProbe:
        arr, labels = _as_array(X), _as_labels(y)
        if labels.min() == labels.max():
            raise WbsafeError("fitting a probe needs both classes")
        self.mean_pos_ = arr[labels == 1].mean(axis=0)
        self.mean_neg_ = arr[labels == 0].mean(axis=0)
        self.raw_direction_ = self.mean_pos_ - self.mean_neg_
        norm = float(np.linalg.norm(self.raw_direction_))
        if norm == 0.0:
            raise WbsafeError("the two classes have identical means: no direction")
        self.direction_ = self.raw_direction_ / norm
        hi, lo = float(self.mean_pos_ @ self.direction_), float(self.mean_neg_ @ self.direction_)
        self.threshold_ = (hi + lo) / 2
        self.separation_ = hi - lo
        return self


class LogisticProbe(_ProjectionProbe):
    """L2-regularised logistic regression; ``direction_`` is the unit weight vector.

    ``threshold_`` is where the decision boundary crosses the direction.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> LogisticProbe:
        from sklearn.linear_model import LogisticRegression

        arr, labels = _as_array(X), _as_labels(y)
        if labels.min() == labels.max():
            raise WbsafeError("fitting a probe needs both classes")
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(arr, labels)
        w = clf.coef_[0].astype(np.float64)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            raise WbsafeError("logistic probe learned a zero direction")
        self.coef_ = w
        self.intercept_ = float(clf.intercept_[0])
        self.direction_ = w / norm
        self.threshold_ = -self.intercept_ / norm
        return self
