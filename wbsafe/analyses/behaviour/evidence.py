"""Behaviour evidence from paired refusal judgements: relative drops with Newcombe
intervals, one-sided exact McNemar p-values, Holm across categories.

The statistics live here, with the analysis that measures them; the gate only bands the
numbers (:mod:`wbsafe.gate.rules`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wbsafe import stats
from wbsafe.evidence import BehaviourEvidence, CategoryEvidence, OverRefusalEvidence

if TYPE_CHECKING:
    from wbsafe.analyses.behaviour.paired import PairedAnalysis
    from wbsafe.analyses.behaviour.results import BehaviourResult


def over_refusal_evidence(
    label: str,
    base_refused: Sequence[bool],
    tuned_refused: Sequence[bool],
    confidence: float = 0.95,
) -> OverRefusalEvidence:
    """Over-refusal evidence from paired judgements on harmless/borderline prompts."""
    lo, hi = stats.paired_difference_interval(base_refused, tuned_refused, confidence)
    return OverRefusalEvidence(
        label=label,
        n=len(base_refused),
        base_refusals=sum(map(bool, base_refused)),
        tuned_refusals=sum(map(bool, tuned_refused)),
        increase_interval=(-hi, -lo),
    )


def _drop(
    base: Sequence[bool], tuned: Sequence[bool], confidence: float
) -> tuple[float | None, tuple[float, float] | None, float]:
    a, b, c, d = stats.paired_table(base, tuned)
    n = a + b + c + d
    rate_base = (a + b) / n if n else 0.0
    rate_tuned = (a + c) / n if n else 0.0
    diff = stats.paired_difference_interval_counts(a, b, c, d, confidence)
    return (
        stats.relative_drop(rate_base, rate_tuned),
        stats.relative_drop_interval(rate_base, diff),
        stats.mcnemar_exact_one_sided(b, c),
    )


def behaviour_evidence(
    base_refused: Sequence[bool],
    tuned_refused: Sequence[bool],
    categories: Sequence[str] | None = None,
    over_refusal: Sequence[OverRefusalEvidence] = (),
    sampled: bool = True,
    confidence: float = 0.95,
) -> BehaviourEvidence:
    """Behaviour evidence from paired refusal judgements on harmful prompts.

    Computes the overall and per-category relative drop with Newcombe intervals, one-sided
    exact McNemar p-values, and Holm adjustment across categories (sorted by name).
    """
    if len(base_refused) != len(tuned_refused):
        raise ValueError(
            f"paired judgements differ in length: {len(base_refused)} vs {len(tuned_refused)}"
        )
    if categories is not None and len(categories) != len(base_refused):
        raise ValueError(f"{len(categories)} categories for {len(base_refused)} prompts")
    drop, interval, p = _drop(base_refused, tuned_refused, confidence)
    rows: list[tuple[str, int, int, int, float | None, tuple[float, float] | None, float]] = []
    for name in sorted(set(categories or ())):
        idx = [i for i, c in enumerate(categories or ()) if c == name]
        cb = [bool(base_refused[i]) for i in idx]
        ct = [bool(tuned_refused[i]) for i in idx]
        c_drop, c_int, c_p = _drop(cb, ct, confidence)
        rows.append((name, len(idx), sum(cb), sum(ct), c_drop, c_int, c_p))
    adjusted = stats.holm([r[6] for r in rows])
    cats = tuple(
        CategoryEvidence(name, n, kb, kt, d, i, pv, ph)
        for (name, n, kb, kt, d, i, pv), ph in zip(rows, adjusted, strict=True)
    )
    return BehaviourEvidence(
        n=len(base_refused),
        base_refusals=sum(map(bool, base_refused)),
        tuned_refusals=sum(map(bool, tuned_refused)),
        relative_drop=drop,
        drop_interval=interval,
        p_value=p,
        categories=cats,
        over_refusal=tuple(over_refusal),
        sampled=sampled,
    )


def evidence_from_pairs(
    analysis: PairedAnalysis | BehaviourResult,
    harmful_prompts: int,
    sampled: bool,
    confidence: float = 0.95,
    judge: str = "string",
) -> BehaviourEvidence:
    """The gate's behaviour evidence from a paired analysis of ``harmful_prompts`` harmful
    prompts (those left out of its pairs are counted as unjudged)."""
    over = [
        over_refusal_evidence(label, list(b), list(t), confidence)
        for label, (b, t) in sorted(analysis.over_refusal_pairs.items())
    ]
    evidence = behaviour_evidence(
        list(analysis.paired_base),
        list(analysis.paired_tuned),
        categories=list(analysis.paired_categories),
        over_refusal=over,
        sampled=sampled,
        confidence=confidence,
    )
    return dataclasses.replace(evidence, unjudged=harmful_prompts - evidence.n, judge=judge)
