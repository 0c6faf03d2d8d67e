"""Plots written as PNG files (matplotlib, Agg backend chosen inside each function)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wbsafe.analyses.weights import WeightDiffResult


def _pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (safe on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def weight_heatmap(result: WeightDiffResult, path: str | Path, *, title: str | None = None) -> Path:
    """Write a layer × module heatmap of log10 relative change ``||dW||_F / ||W||_F`` to ``path``.

    Tensors outside a layer (embeddings, final norm, lm_head) form a row labelled "—".
    Blank cells: no such tensor, or it did not change.
    """
    import numpy as np

    from wbsafe.arch.names import MODULE_ORDER

    plt = _pyplot()
    cells = [c for c in result.ranking if c.module is not None]
    modules = [m for m in MODULE_ORDER if any(c.module == m for c in cells)]
    layers = sorted({c.layer for c in cells if c.layer is not None})
    row_keys: list[int | None] = [*layers]
    if any(c.layer is None for c in cells):
        row_keys.append(None)
    grid = np.full((max(len(row_keys), 1), max(len(modules), 1)), np.nan)
    for c in cells:
        if c.rel_diff is not None and c.rel_diff > 0:
            grid[row_keys.index(c.layer), modules.index(c.module or "")] = math.log10(c.rel_diff)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(modules), 1.2 + 0.28 * len(row_keys)))
    try:
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
        ax.set_yticks(range(len(row_keys)), ["—" if k is None else str(k) for k in row_keys])
        ax.set_xlabel("module")
        ax.set_ylabel("layer")
        ax.set_title(title or "relative weight change (log10 ||dW||/||W||)")
        fig.colorbar(im, ax=ax, label="log10 relative change")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
