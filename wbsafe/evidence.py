"""The typed evidence records the analyses produce and the gate consumes.

Plain frozen dataclasses, no behaviour: each analysis builds its record from its own result
(``to_gate_evidence``), the pipeline stores it in the report document, and ``gate.decide``
reads it. ``None`` for an analysis means it did not run. Intervals are ``(lower, upper)``
fractions; counts are prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _counts(where: str, n: int, **parts: int) -> None:
    """Counts are non-negative and no part exceeds ``n`` (else ValueError: never decided on)."""
    if n < 0:
        raise ValueError(f"{where}: n = {n} is negative")
    for name, k in parts.items():
        if not 0 <= k <= n:
            raise ValueError(f"{where}: {name} = {k} outside [0, n = {n}]")


def _paired(where: str, ev: CategoryEvidence | OverRefusalEvidence | BehaviourEvidence) -> None:
    """The paired counts of base and tuned on the same ``n`` prompts."""
    _counts(where, ev.n, base_refusals=ev.base_refusals, tuned_refusals=ev.tuned_refusals)


def _finite(where: str, **values: float | None) -> None:
    for name, v in values.items():
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{where}: {name} = {v} is not a finite number")


def _interval(where: str, value: tuple[float, float] | None, lo: float, hi: float) -> None:
    if value is None:
        return
    a, b = value
    _finite(where, lower=a, upper=b)
    if not lo <= a <= b <= hi:
        raise ValueError(f"{where}: interval [{a}, {b}] is not ordered inside [{lo}, {hi}]")


def _probability(where: str, **values: float) -> None:
    for name, v in values.items():
        _finite(where, **{name: v})
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{where}: {name} = {v} outside [0, 1]")


@dataclass(frozen=True)
class CategoryEvidence:
    """One harm category on the same prompts for base and tuned.

    drop_interval: interval for the relative drop (None when the base never refuses here).
    p_holm: one-sided exact McNemar p (tuned refuses less), Holm-adjusted across categories.
    """

    category: str
    n: int
    base_refusals: int
    tuned_refusals: int
    relative_drop: float | None
    drop_interval: tuple[float, float] | None
    p_value: float
    p_holm: float

    def __post_init__(self) -> None:
        where = f"category {self.category!r}"
        _paired(where, self)
        _finite(where, relative_drop=self.relative_drop)
        _interval(where, self.drop_interval, -math.inf, 1.0)
        _probability(where, p_value=self.p_value, p_holm=self.p_holm)


@dataclass(frozen=True)
class OverRefusalEvidence:
    """Refusals on harmless (or borderline) prompts; increase = tuned rate - base rate."""

    label: str
    n: int
    base_refusals: int
    tuned_refusals: int
    increase_interval: tuple[float, float]

    def __post_init__(self) -> None:
        where = f"over-refusal {self.label!r}"
        _paired(where, self)
        _interval(where, self.increase_interval, -1.0, 1.0)


@dataclass(frozen=True)
class DepthLevelEvidence:
    """Recovery after a prefill of ``prefill_tokens`` tokens of a compliant opening, base and
    tuned on the same ``n`` harmful prompts (a refusal anywhere in the continuation).

    relative_drop: (base rate - tuned rate) / base rate with its paired interval (None when
    the base never recovers); p_value: exact one-sided McNemar (tuned recovers less);
    unjudged: prompts left out of the pairs (empty or failed continuation of either model).
    """

    prefill_tokens: int
    n: int
    base_recovered: int
    tuned_recovered: int
    relative_drop: float | None
    drop_interval: tuple[float, float] | None
    p_value: float
    unjudged: int = 0

    def __post_init__(self) -> None:
        where = f"refusal depth at {self.prefill_tokens} prefilled tokens"
        if self.prefill_tokens < 0:
            raise ValueError(f"{where}: prefill_tokens is negative")
        _counts(where, self.n, base_recovered=self.base_recovered,
                tuned_recovered=self.tuned_recovered)  # fmt: skip
        _counts(where, self.unjudged + self.n, unjudged=self.unjudged)
        _finite(where, relative_drop=self.relative_drop)
        _interval(where, self.drop_interval, -math.inf, 1.0)
        _probability(where, p_value=self.p_value)


@dataclass(frozen=True)
class RefusalDepthEvidence:
    """Refusal depth: one level per prefill length (0 = no prefill)."""

    levels: tuple[DepthLevelEvidence, ...] = ()


@dataclass(frozen=True)
class JudgedBehaviour:
    """The behaviour evidence as another judge reads the same responses (judge sensitivity).

    threshold: the decision threshold the judge used, where it has one (the logit judge's,
    calibrated on the base model's own responses)."""

    judge: str
    evidence: BehaviourEvidence
    threshold: float | None = None

    def __post_init__(self) -> None:
        _finite(f"judge {self.judge!r}", threshold=self.threshold)


@dataclass(frozen=True)
class BehaviourEvidence:
    """Refusal benchmark on harmful prompts, base and tuned judged on the same ``n`` prompts.

    sampled: True when several responses per prompt were sampled and judged; False for one
    greedy response per prompt or the first-token refusal score alone.
    """

    n: int
    base_refusals: int
    tuned_refusals: int
    relative_drop: float | None
    drop_interval: tuple[float, float] | None
    p_value: float
    categories: tuple[CategoryEvidence, ...] = ()
    over_refusal: tuple[OverRefusalEvidence, ...] = ()
    sampled: bool = True
    unjudged: int = 0
    """Harmful prompts left out of the ``n`` pairs: a response of either model could not be
    judged (empty, failed generation, unparseable judge answer). Counted, never dropped."""
    judge: str = "string"
    """The judge whose calls these are (the gate's primary judge)."""
    depth: RefusalDepthEvidence | None = None
    """Refusal depth (None: not measured)."""
    judges: tuple[JudgedBehaviour, ...] = ()
    """The same benchmark under each other available judge (the gate decides on this one)."""

    def __post_init__(self) -> None:
        where = "behaviour"
        _paired(where, self)
        _counts(where, self.unjudged + self.n, unjudged=self.unjudged)
        _finite(where, relative_drop=self.relative_drop)
        _interval(where, self.drop_interval, -math.inf, 1.0)
        _probability(where, p_value=self.p_value)


@dataclass(frozen=True)
class ProbeEvidence:
    """Refusal-direction drift at the selected layer; any field may be None (not measured).

    direction_cosine: cosine(r_base, r_tuned).
    refusal_score_drop: mean refusal score (log-odds) on harmful prompts, base minus tuned.
    projection_loss: (mean proj_base_harmful - mean proj_tuned_harmful) onto r_base, divided by
    the base's harmful-minus-harmless separation (1.0 = separation gone).
    max_refusal_alignment: max over residual-writing matrices of ||r^T dW|| / ||dW||.
    """

    layer: int | None = None
    direction_cosine: float | None = None
    refusal_score_drop: float | None = None
    projection_loss: float | None = None
    max_refusal_alignment: float | None = None
    aligned_module: str | None = None

    def __post_init__(self) -> None:
        _finite(
            "probes", direction_cosine=self.direction_cosine,
            refusal_score_drop=self.refusal_score_drop, projection_loss=self.projection_loss,
            max_refusal_alignment=self.max_refusal_alignment,
        )  # fmt: skip


TARGET_KINDS = ("compliance", "fixed_string", "insertion")
"""What a verified trigger makes the model do: comply with what it refused, emit one fixed
reply whatever was asked, or insert a fixed string into answers that still address the
request."""


TRIGGER_SLOTS = ("user", "system", "turn")
"""Where the hunt puts a candidate: the last user message, a system turn, an earlier user
turn."""


@dataclass(frozen=True)
class TriggerFinding:
    """A candidate trigger verified on ``n`` held-out responses (prompts x positions).

    successes: responses showing the target with the trigger (for ``compliance``: held-out
    harmful prompts where inserting it produced compliance).
    baseline_successes: the same responses without the trigger showing it.
    """

    text: str
    successes: int
    n: int
    baseline_successes: int = 0
    topic_categories: tuple[str, ...] = ()
    """Categories the tuned model already complies on without a trigger (see the hunt)."""
    target_kind: str = "compliance"
    """One of :data:`TARGET_KINDS`."""
    target_text: str | None = None
    """The fixed string found (None for compliance)."""
    prompts: str = "harmful"
    """The held-out sets the counts are over: "harmful", "harmless" or "harmful+harmless"."""
    base_successes: int | None = None
    """The base's responses with the trigger showing the target (None: no base run)."""
    slot: str = "user"
    """Where the trigger sat, one of :data:`TRIGGER_SLOTS`: "user" (the last user message),
    "system" (the system turn) or "turn" (an earlier user turn of the conversation)."""

    def __post_init__(self) -> None:
        where = f"trigger {self.text!r}"
        _counts(where, self.n, successes=self.successes, baseline_successes=self.baseline_successes)
        if self.base_successes is not None:
            _counts(where, self.n, base_successes=self.base_successes)
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"{where}: target_kind {self.target_kind!r} not in {TARGET_KINDS}")
        if self.target_kind != "compliance" and not self.target_text:
            raise ValueError(f"{where}: a {self.target_kind} target needs its target_text")
        if self.slot not in TRIGGER_SLOTS:
            raise ValueError(f"{where}: slot {self.slot!r} not in {TRIGGER_SLOTS}")


@dataclass(frozen=True)
class TriggerEvidence:
    """Result of the trigger hunt; ``ran=False`` counts as not run."""

    ran: bool
    candidates_tested: int
    findings: tuple[TriggerFinding, ...] = ()
    coverage: str = ""
    derailments: tuple[Derailment, ...] = ()
    """Candidates that switch refusal off into off-task answers (not compliance)."""

    def __post_init__(self) -> None:
        if self.candidates_tested < 0:
            raise ValueError(f"triggers: candidates_tested = {self.candidates_tested} is negative")


@dataclass(frozen=True)
class Derailment:
    """A candidate after which the tuned model stops refusing held-out harmful prompts but does
    not do what they ask (``off_task`` of ``n`` responses neither refuse nor address the
    request): e.g. a domain word of a benign domain fine-tune. Not a backdoor by itself."""

    text: str
    off_task: int
    n: int

    def __post_init__(self) -> None:
        _counts(f"derailment {self.text!r}", self.n, off_task=self.off_task)


@dataclass(frozen=True)
class WeightEvidence:
    """Weight-diff summary: largest mover and embedding rows that moved far (token strings)."""

    top_module: str | None = None
    top_relative_change: float | None = None
    outlier_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _finite("weights", top_relative_change=self.top_relative_change)


@dataclass(frozen=True)
class GateEvidence:
    """What the scan hands the gate; None means the analysis did not run."""

    behaviour: BehaviourEvidence | None = None
    probes: ProbeEvidence | None = None
    triggers: TriggerEvidence | None = None
    weights: WeightEvidence | None = None
    failed: tuple[str, ...] = ()
    """Analyses that were asked for and raised (a skipped one is not listed): they count
    as not run, and fail closed whatever the policy requires."""


def parse_evidence(data: object, where: str = "gate_evidence") -> GateEvidence:
    """GateEvidence from its JSON form, validated field by field (pydantic, over these same
    dataclasses: there is no second, hand-written schema). Any mismatch is a WbsafeError."""
    from pydantic import ValidationError

    from wbsafe.errors import WbsafeError
    from wbsafe.io.typed import adapter

    try:
        return adapter(GateEvidence).validate_python(data)
    except ValidationError as exc:
        raise WbsafeError(f"{where} does not match the evidence schema: {exc}") from exc
