"""Refusal-probe plots (PNG): per-layer AUROC with the random baseline, per-layer direction
cosine, and base vs tuned projection histograms. Compute lives in analyses.refusal."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wbsafe.analyses.refusal import RefusalComparison, RefusalDirectionFit


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_auroc_per_layer(fit: RefusalDirectionFit, path: str | Path) -> Path:
    """Held-out AUROC per layer for each position, with the best-of-N random baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for pos in fit.positions:
        rows = sorted((c for c in fit.candidates if c.position == pos), key=lambda c: c.layer)
        ax.plot([c.layer for c in rows], [c.auroc for c in rows], marker="o", label=pos)
        ax.plot([c.layer for c in rows], [c.random_auroc for c in rows], ls=":", color="grey")
    ax.axvline(fit.layer, color="red", lw=0.8, label=f"selected ({fit.position})")
    ax.set(xlabel="layer", ylabel="held-out AUROC", ylim=(0.0, 1.02), title="refusal probe")
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_cosine_per_layer(comparison: RefusalComparison, path: str | Path) -> Path:
    """cos(r_base, r_tuned) per layer at the selected position."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    cos = comparison.cosine_per_layer
    ax.plot(range(len(cos)), cos, marker="o")
    ax.axvline(comparison.layer, color="red", lw=0.8)
    ax.set(xlabel="layer", ylabel="cosine(r_base, r_tuned)", ylim=(-1.02, 1.02))
    ax.set_title(f"refusal direction drift ({comparison.position})")
    return _save(fig, plt, path)


def plot_projection_histogram(comparison: RefusalComparison, path: str | Path) -> Path:
    """Projections onto r_base at the selected site: base vs tuned, harmful vs harmless."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    styles = {
        "base_harmful": ("tab:red", None),
        "base_harmless": ("tab:blue", None),
        "tuned_harmful": ("tab:red", "//"),
        "tuned_harmless": ("tab:blue", "//"),
    }
    for key, values in comparison.projections.items():
        color, hatch = styles.get(key, ("grey", None))
        ax.hist(values, bins=30, alpha=0.4 if hatch is None else 0.25, color=color,
                hatch=hatch, label=key)  # fmt: skip
    ax.set(xlabel=f"projection onto r_base (layer {comparison.layer})", ylabel="prompts")
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def auroc_plot(
    *, fit: RefusalDirectionFit, comparison: RefusalComparison, path: str | Path
) -> Path:
    """Keyword form used by the scan pipeline (all three plots share one signature)."""
    del comparison
    return plot_auroc_per_layer(fit, path)


def cosine_plot(
    *, fit: RefusalDirectionFit, comparison: RefusalComparison, path: str | Path
) -> Path:
    del fit
    return plot_cosine_per_layer(comparison, path)


def projection_plot(
    *, fit: RefusalDirectionFit, comparison: RefusalComparison, path: str | Path
) -> Path:
    del fit
    return plot_projection_histogram(comparison, path)
