"""The weight-diff entry point: a full fine-tuned checkpoint or LoRA adapters against a base.

:func:`diff` sends a full checkpoint to :func:`~.checkpoint_diff.diff_checkpoints` and an
adapter directory (or ``adapters``) to :func:`~.adapter_diff.diff_adapters`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wbsafe.analyses.weights.adapter_diff import diff_adapters
from wbsafe.analyses.weights.checkpoint_diff import diff_checkpoints
from wbsafe.analyses.weights.results import WeightDiffResult
from wbsafe.errors import WbsafeError
from wbsafe.io.models import is_adapter_dir
from wbsafe.progress import Progress, no_progress


def diff(
    base: str | Path,
    tuned: str | Path | None = None,
    adapters: Iterable[str | Path] = (),
    *,
    progress: Progress = no_progress,
    **kwargs: Any,
) -> WeightDiffResult:
    """Dispatch: ``tuned`` a full checkpoint -> diff_checkpoints; an adapter dir (or
    ``adapters``) -> diff_adapters with all adapters stacked. ``progress`` and ``kwargs``
    go to the one called."""
    adapter_list = list(adapters)
    if tuned is not None and is_adapter_dir(tuned):
        adapter_list.insert(0, tuned)
        tuned = None
    if tuned is not None and adapter_list:
        raise WbsafeError(
            "give either a full tuned checkpoint or adapters, not both "
            "(merge the adapters first, or diff them against the base)",
            tuned,
        )
    if tuned is not None:
        return diff_checkpoints(base, tuned, progress=progress, **kwargs)
    if adapter_list:
        return diff_adapters(base, adapter_list, progress=progress, **kwargs)
    raise WbsafeError("nothing to diff: give a tuned checkpoint or at least one adapter")
