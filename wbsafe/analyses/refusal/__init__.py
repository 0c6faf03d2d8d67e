"""The base's refusal direction, its drift in a fine-tune, and refusal alignment of updates.

- ``probes``: linear probe estimators and their metrics (AUROC, recall at FPR, random baseline).
- ``causal``: ablation/addition of a direction and the causal tests (bypass, induce, KL).
- ``fit``: the base's directions per layer/position, selected by causal effect, and the fit type.
- ``drift``: a tuned model's projections and refusal score against the fit (``compare``).
- ``alignment``: how much of a weight update writes along the refusal direction.

The refusal score itself is a measurement (:mod:`wbsafe.capture.refusal_score`); storing a
fit is the pipeline's job (:mod:`wbsafe.pipeline.directions_cache`).
"""

from wbsafe.analyses.refusal.alignment import MatrixAlignment, RefusalAlignment, refusal_alignment
from wbsafe.analyses.refusal.causal import ablation, addition
from wbsafe.analyses.refusal.drift import RefusalComparison, compare
from wbsafe.analyses.refusal.fit import (
    FIT_ARRAYS,
    FIT_FORMAT,
    FIT_VERSION,
    Candidate,
    RefusalDirectionFit,
    fit_base_directions,
)
from wbsafe.analyses.refusal.probes import (
    DiffMeansProbe,
    LogisticProbe,
    auroc,
    random_direction_baseline,
    recall_at_fpr,
)

__all__ = [
    "FIT_ARRAYS",
    "FIT_FORMAT",
    "FIT_VERSION",
    "Candidate",
    "DiffMeansProbe",
    "LogisticProbe",
    "MatrixAlignment",
    "RefusalAlignment",
    "RefusalComparison",
    "RefusalDirectionFit",
    "ablation",
    "addition",
    "auroc",
    "compare",
    "fit_base_directions",
    "random_direction_baseline",
    "recall_at_fpr",
    "refusal_alignment",
]
