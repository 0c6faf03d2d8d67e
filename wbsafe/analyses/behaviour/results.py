"""The behavioural benchmark's records: judged rows, per-model rates, paired comparisons.

:class:`BehaviourResult` holds everything one run measured; ``to_dict`` is its JSON form
and ``to_gate_evidence`` the gate's view (statistics in :mod:`.evidence`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wbsafe.capture.judges import Proportion

if TYPE_CHECKING:
    from wbsafe.analyses.behaviour.sensitivity import JudgeSensitivity, LogitCalibration
    from wbsafe.evidence import BehaviourEvidence


@dataclass(frozen=True)
class ResponseRow:
    """One judged response of one model (``sample`` 0 when greedy; ``error``: generation failed).

    ``refused`` is the judge's reading. ``derailed``: a response to a harmful prompt that
    neither refused nor addressed the request and names no harm word (it answered something
    harmless nobody asked: :func:`wbsafe.capture.compliance.derailed`). It did not comply, so
    the benchmark counts it with the refusals (:attr:`held`), whatever the judge.
    """

    prompt_id: str
    category: str
    label: str
    sample: int
    seed: int | None
    response: str
    refused: bool | None
    score: float | None
    parse_error: str | None
    error: str | None = None
    derailed: bool = False

    @property
    def held(self) -> bool | None:
        """Did not comply: refused, or derailed (None: unjudged)."""
        return True if self.derailed else self.refused


@dataclass(frozen=True)
class ModelSummary:
    """One model's refusal rates from its per-prompt calls.

    harmful: over all harmful prompts; by_category: harmful prompts per category;
    over_refusal: per non-harmful label ("harmless", "borderline").
    """

    harmful: Proportion
    by_category: dict[str, Proportion]
    over_refusal: dict[str, Proportion]
    unjudged: int
    generation_errors: int


@dataclass(frozen=True)
class BandCall:
    """Where an interval lies against one gate edge: "below", "above" or "inconclusive"."""

    edge: float
    status: str
    prompts_to_settle: int | None
    message: str


@dataclass(frozen=True)
class Comparison:
    """Base vs tuned on the same harmful prompts (one category, or all: ``category="overall"``).

    b: refused by base, answered by tuned; c: the reverse. p_value: exact one-sided McNemar;
    p_holm: Holm-adjusted across categories (the overall row keeps its own p).
    absolute_drop = rate_base - rate_tuned with a Newcombe paired interval;
    relative_drop = absolute / rate_base (None when the base never refuses).
    """

    category: str
    n: int
    base_refusals: int
    tuned_refusals: int
    b: int
    c: int
    p_value: float
    p_holm: float
    significant: bool
    absolute_drop: float
    absolute_interval: tuple[float, float]
    relative_drop: float | None
    relative_interval: tuple[float, float] | None
    calls: tuple[BandCall, ...] = ()


@dataclass(frozen=True)
class OverRefusal:
    """Refusals on prompts of one non-harmful label; increase = tuned rate - base rate."""

    label: str
    n: int
    base: Proportion
    tuned: Proportion
    increase: float
    increase_interval: tuple[float, float]


@dataclass(frozen=True)
class Flip:
    """A prompt the base refused and the tuned model answered (complied with, or, in
    :attr:`BehaviourResult.derailments`, answered off the request), with both responses."""

    prompt_id: str
    category: str
    label: str
    text: str
    base_response: str
    tuned_response: str


@dataclass(frozen=True)
class PromptProbability:
    """Sampling mode: share of judged samples refused, per model (None: none judged)."""

    prompt_id: str
    category: str
    label: str
    base: float | None
    tuned: float | None


@dataclass(frozen=True)
class SamplingSummary:
    """Per-prompt refusal probabilities of the first seed and the edge cases apart.

    unstable: prompts whose refusal probability is strictly between 0 and 1.
    edge_cases: prompts with base probability in :data:`~wbsafe.analyses.behaviour.sampling.EDGE_CASE_BAND`; ``edge_moved``
    counts how the tuned model moved on them (down / same / up) and ``edge_mean_change`` is
    the mean of tuned - base probability there.
    """

    n_samples: int
    temperature: float
    top_p: float
    prompts: tuple[PromptProbability, ...]
    unstable_base: int
    unstable_tuned: int
    edge_cases: tuple[PromptProbability, ...]
    edge_moved: dict[str, int]
    edge_mean_change: float | None


@dataclass(frozen=True)
class Spread:
    """One rate over the repeated seeds: its values, min, max, population std."""

    name: str
    values: tuple[float | None, ...]
    min: float | None
    max: float | None
    std: float | None


@dataclass(frozen=True)
class SeedSpread:
    """Run-to-run spread of every rate over ``seeds``; ``verdict`` says whether the observed
    harmful-rate difference lies inside that noise."""

    seeds: tuple[int, ...]
    spreads: tuple[Spread, ...]
    difference: float | None
    noise: float | None
    verdict: str


@dataclass(frozen=True)
class BehaviourResult:
    """Everything the behavioural benchmark measured; ``to_dict`` is its JSON form."""

    judge: str
    mode: str
    config: dict[str, Any]
    models: dict[str, Any]
    base: ModelSummary
    tuned: ModelSummary
    overall: Comparison
    categories: tuple[Comparison, ...]
    over_refusal: tuple[OverRefusal, ...]
    flipped: tuple[Flip, ...]
    sampling: SamplingSummary | None
    spread: SeedSpread | None
    rows_base: tuple[ResponseRow, ...]
    rows_tuned: tuple[ResponseRow, ...]
    paired_base: tuple[bool, ...]
    paired_tuned: tuple[bool, ...]
    paired_categories: tuple[str, ...]
    over_refusal_pairs: dict[str, tuple[tuple[bool, ...], tuple[bool, ...]]]
    sensitivity: tuple[JudgeSensitivity, ...] = ()
    """The same benchmark under each other available judge (:mod:`.sensitivity`)."""
    calibration: LogitCalibration | None = None
    """The logit judge's threshold fitted on the base's own responses (when it ran)."""
    derailments: tuple[Flip, ...] = ()
    """Harmful prompts the tuned model answered off the request, naming no harm (counted with
    the refusals: not compliance), with the base's response beside."""
    derailed: dict[str, int] = dataclasses.field(default_factory=dict)
    """Harmful prompts derailed per side ("base", "tuned"; greedy: the first response)."""

    @property
    def sampled(self) -> bool:
        """True when several responses per prompt were sampled and judged (greedy responses,
        one per prompt, and the first-token score alone are not sampling)."""
        return self.mode == "sampling"

    def to_gate_evidence(self, confidence: float = 0.95) -> BehaviourEvidence:
        """The gate's behaviour evidence from the paired per-prompt calls, with the same
        benchmark under each other judge (``judges``)."""
        from wbsafe.analyses.behaviour.evidence import evidence_from_pairs
        from wbsafe.evidence import JudgedBehaviour

        harmful = {r.prompt_id for r in (*self.rows_base, *self.rows_tuned) if r.label == "harmful"}
        evidence = evidence_from_pairs(self, len(harmful), self.sampled, confidence, self.judge)
        judges = tuple(JudgedBehaviour(s.judge, s.evidence, s.threshold) for s in self.sensitivity)
        return dataclasses.replace(evidence, judges=judges)

    def to_dict(self) -> dict[str, Any]:
        from wbsafe.io.serialize import SCHEMA_VERSION, to_jsonable

        out = to_jsonable(self)
        out["schema_version"] = SCHEMA_VERSION
        out["kind"] = "behaviour"
        return dict(out)

    def summary_lines(self) -> list[str]:
        """Short human-readable lines: overall, categories, band calls, noise."""
        o = self.overall
        lines = [
            f"harmful refusal {_fmt_p(self.base.harmful)} -> {_fmt_p(self.tuned.harmful)} "
            f"(n={o.n}, McNemar p={o.p_value:.3g})"
        ]
        lines += [c.message for c in o.calls if c.status == "inconclusive"]
        if any(self.derailed.values()):
            lines.append(
                f"derailed (off the request, naming no harm; counted with refusals): "
                f"base {self.derailed.get('base', 0)}, tuned {self.derailed.get('tuned', 0)} "
                f"of {o.n} harmful prompts"
            )
        for c in self.categories:
            flag = " *" if c.significant else ""
            lines.append(
                f"  {c.category}: {c.base_refusals}/{c.n} -> {c.tuned_refusals}/{c.n} "
                f"(Holm p={c.p_holm:.3g}){flag}"
            )
        for r in self.over_refusal:
            lines.append(f"over-refusal [{r.label}] {_fmt_p(r.base)} -> {_fmt_p(r.tuned)}")
        if self.spread is not None:
            lines.append(self.spread.verdict)
        for j in self.sensitivity:
            thr = "" if j.threshold is None else f" (threshold {j.threshold:.3g})"
            lines.append(
                f"judge {j.judge}{thr}: harmful refusal {_fmt_p(j.base.harmful)} -> "
                f"{_fmt_p(j.tuned.harmful)}"
            )
        return lines


def _fmt_p(p: Proportion) -> str:
    if p.rate is None:
        return "n/a"
    return f"{p.rate:.1%} [{p.interval[0]:.1%}, {p.interval[1]:.1%}]"
