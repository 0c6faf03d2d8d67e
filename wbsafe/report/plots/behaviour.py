"""Behaviour plots as PNGs: per-category refusal rates (base vs tuned, Wilson 95 % intervals)
and refusal depth (recovery against prefilled tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wbsafe.analyses.behaviour import BehaviourResult
    from wbsafe.analyses.behaviour.depth import DepthResult


def category_bars(result: BehaviourResult, path: str | Path) -> Path:
    """Grouped bars: harmful-prompt refusal rate per category and overall, plus over-refusal
    per non-harmful label; error bars are Wilson intervals; categories significant after Holm
    are starred. Writes ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    pairs = []
    for cat in sorted(result.base.by_category):
        names.append(cat)
        pairs.append((result.base.by_category[cat], result.tuned.by_category.get(cat)))
    names.append("ALL harmful")
    pairs.append((result.base.harmful, result.tuned.harmful))
    for label in sorted(result.base.over_refusal):
        names.append(f"{label} (over-refusal)")
        pairs.append((result.base.over_refusal[label], result.tuned.over_refusal.get(label)))
    significant = {c.category for c in result.categories if c.significant}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.0))
    width = 0.38
    for offset, side, colour in ((-width / 2, 0, "#4c72b0"), (width / 2, 1, "#dd8452")):
        xs, ys, lo, hi = [], [], [], []
        for i, pair in enumerate(pairs):
            p = pair[side]
            if p is None or p.rate is None:
                continue
            xs.append(i + offset)
            ys.append(p.rate)
            lo.append(p.rate - p.interval[0])
            hi.append(p.interval[1] - p.rate)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colour,
               label="base" if side == 0 else "tuned")  # fmt: skip
    labels = [f"{n} *" if n in significant else n for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("refusal rate (Wilson 95% CI)")
    ax.set_title(f"Refusal by category, judge={result.judge} (* Holm p < alpha)")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def depth_curve(result: DepthResult, path: str | Path) -> Path:
    """Recovery into a refusal against the number of prefilled tokens, base and tuned, with
    Wilson intervals. Writes ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for side, colour in (("base", "#4c72b0"), ("tuned", "#dd8452")):
        xs, ys, lo, hi = [], [], [], []
        for level in result.levels:
            p = getattr(level, side)
            if p.rate is None:
                continue
            xs.append(level.prefill_tokens)
            ys.append(p.rate)
            lo.append(p.rate - p.interval[0])
            hi.append(p.interval[1] - p.rate)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=colour, label=side)
    ax.set_xticks(list(result.prefill_tokens))
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("prefilled tokens of a compliant opening")
    ax.set_ylabel("recovers into a refusal")
    ax.set_title("Refusal depth (harmful prompts)")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
