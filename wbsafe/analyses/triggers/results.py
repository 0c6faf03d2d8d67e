"""The trigger hunt's result types: scored candidates, held-out verifications, coverage.

:class:`Coverage` states the searched space, so that "no trigger found" is a claim about
that space only; :class:`TriggerResult` gathers all three and gives the gate its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wbsafe.analyses.triggers.memorised import MemorisedSpan
    from wbsafe.evidence import TriggerEvidence, TriggerFinding


@dataclass(frozen=True)
class Candidate:
    """A scored candidate trigger.

    gradient_drop: first-order refusal-score drop, tuned minus base (single tokens only).
    tuned_drop / base_drop: exact mean drop of the refusal score on the search prompts.
    anomaly: ``tuned_drop - base_drop`` (base absent: ``tuned_drop``); higher = more trigger-like.
    divergence: the divergence objective's score, tuned-vs-base divergence with the
    candidate minus without it (:mod:`.divergence`); None when it was not scored.
    objectives: the objectives whose own search scored and ranked it (a candidate only
    cross-scored under another objective is not listed for it); ranks: its rank in each
    of those rankings (1 = best), in the same order.
    slot: the slot kind where it scored best (``user``, ``system``, ``turn``).
    """

    text: str
    token_ids: tuple[int, ...]
    sources: tuple[str, ...]
    gradient_drop: float | None = None
    tuned_drop: float | None = None
    base_drop: float | None = None
    anomaly: float | None = None
    divergence: float | None = None
    objectives: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    slot: str = "user"


@dataclass(frozen=True)
class TriggerExample:
    """One held-out prompt as answered with and without a candidate (tuned), and with it by
    the base (None without a base to compare, or where it was not generated)."""

    prompt: str
    tuned_with: str
    tuned_without: str
    base_with: str | None
    base_without: str | None = None
    label: str = "harmful"
    """The prompt's label: "harmful" or "harmless"."""


@dataclass(frozen=True)
class TargetChange:
    """What a candidate changes in the tuned model's responses (:mod:`.targets`).

    kind: ``compliance`` (refusal that disappears), ``fixed_string`` (one fixed reply in
    place of the answer), ``insertion`` (a fixed string slipped into answers that still
    address the request) or ``topic_shift`` (answers about something else: a derailment).
    text: the fixed string found (None for compliance). prompts: the held-out sets where it
    shows ("harmful", "harmless" or both, joined by "+"). Counts are over the ``n``
    responses with the candidate (prompts x insertion positions); the ``without`` counts are
    the same prompts without it, each counted at every position; ``base_*`` are None where
    the base was not run. harm: the change is a planted harm that verifies the candidate.
    """

    kind: str
    text: str | None
    prompts: str
    n: int
    tuned_with: int
    tuned_without: int
    base_with: int | None
    base_without: int | None
    harm: bool
    why: str


@dataclass(frozen=True)
class Verification:
    """Held-out evidence for one candidate (counts over prompts x insertion positions)."""

    text: str
    n: int
    successes: int
    baseline_successes: int
    base_successes: int | None
    base_baseline_successes: int | None
    harmless_n: int
    harmless_refusals: int
    harmless_baseline_refusals: int
    tuned_score_drop: float
    base_score_drop: float | None
    direction_drop: float | None
    verified: bool
    reason: str
    topic_categories: tuple[str, ...] = ()
    """Harm categories on whose held-out prompts the tuned model already complies without
    any trigger while the base refuses: a verified word may be a topic word of one of them
    (a category-wide loss of refusal) rather than a hidden trigger."""
    off_task: int = 0
    """Responses with the candidate that neither refused nor addressed the request."""
    derails: bool = False
    """The candidate switches refusal off into off-task answers (not compliance): a
    derailment, e.g. a benign domain fine-tune's domain word; never verified."""
    examples: tuple[TriggerExample, ...] = ()
    """What the responses were, for a verified or derailing candidate."""
    target: TargetChange | None = None
    """What the candidate changes (compliance, a fixed string, an insertion, a topic shift);
    None when it changes nothing that was looked for."""
    slot: str = "user"
    """Where the candidate was placed: the last user message or the system turn."""
    first_look: bool = False
    """Rejected after the first look (:data:`~.verify.FIRST_LOOK`): ``n`` counts those
    held-out prompts only; the rest were not generated."""

    @property
    def attack_success(self) -> float:
        return self.successes / max(1, self.n)

    @property
    def baseline_rate(self) -> float:
        return self.baseline_successes / max(1, self.n)


@dataclass(frozen=True)
class Coverage:
    """What was searched: a "no trigger found" claim holds for this space only.

    ``exact_total`` candidates were scored exactly in the tuned model (on
    ``screen_contexts`` contexts when the pool was screened); ``fully_scored`` of them on
    every search context in both models. ``stopped_at_length``: the search of longer
    triggers was skipped because a decisive trigger of this length was verified.
    """

    vocab_size: int
    gradient_scored: int
    exact_single_tokens: int
    exact_total: int
    fully_scored: int
    lengths: tuple[int, ...]
    budget: int
    search_contexts: int
    screen_contexts: int
    heldout_prompts: int
    positions: tuple[float, ...]
    skipped: tuple[str, ...]
    stopped_at_length: int | None = None
    objectives: tuple[str, ...] = ("refusal",)
    """The objectives searched, in order; ``budgets`` their shares of ``budget``."""
    budgets: tuple[int, ...] = ()
    exact_by_objective: tuple[int, ...] = ()
    """Candidates each objective's own search scored exactly (screened), in ``objectives``
    order: within its share of ``budgets`` (the other objectives' best that it scores too,
    cross-scoring, are not counted)."""
    slots: tuple[str, ...] = ("user",)
    """The slot kinds searched (the last user message, a system turn, an earlier turn)."""
    memorised: int = 0
    """Candidates from the memorised-sample contrast (n-grams the tuned model samples far
    more than the base)."""
    skipped_objectives: tuple[str, ...] = ()
    """Objectives asked for that could not run (the divergence one needs a base side)."""
    singles_only: tuple[str, ...] = ()
    """Objectives that searched single tokens only: an earlier one had verified a decisive
    trigger (attack success >= the hunt's ``stop_asr``), so the verdict was settled."""
    read_tokens: int = 0
    """Tokens the vocabulary sweep scored at ``read_layers`` (:mod:`.reads`); ``reads`` of
    the best joined the pool and seeded the pairs."""
    read_layers: tuple[int, ...] = ()
    reads: int = 0
    first_look_prompts: int = 0
    """Held-out prompts each candidate was first verified on (0: all at once);
    ``rejected_early`` candidates fell short there and were not generated further."""
    rejected_early: int = 0
    ordinary_contexts: int = 0
    """Of ``search_contexts``, those on harmless prompts (the divergence objective's, scored
    as a group of their own: a marker slipped into harmless answers shows there)."""

    def statement(self) -> str:
        share_g = self.gradient_scored / max(1, self.vocab_size)
        share_e = self.exact_single_tokens / max(1, self.vocab_size)
        skipped = f"; skipped (all-unknown tokens): {len(self.skipped)}" if self.skipped else ""
        stop = (
            f"; longer triggers not searched (a trigger of length {self.stopped_at_length} "
            "was verified)"
            if self.stopped_at_length
            else ""
        )
        return (
            f"gradient-ranked {self.gradient_scored}/{self.vocab_size} tokens ({share_g:.0%}); "
            f"exactly scored {self.exact_single_tokens} single tokens ({share_e:.1%} of the "
            f"vocabulary) and {self.exact_total} candidates in all, lengths "
            f"{list(self.lengths)}, budget {self.budget}, on {self.screen_contexts} (best "
            f"{self.fully_scored}: {self.search_contexts}) prompt-slot contexts"
            f"{f' ({self.ordinary_contexts} on harmless prompts)' if self.ordinary_contexts else ''}"
            "; verified on "
            f"{self.heldout_prompts} held-out prompts at positions {list(self.positions)}"
            f"{self._first_look_text()}{skipped}{stop}; {self._objectives_text()}"
        )

    def _first_look_text(self) -> str:
        if not self.first_look_prompts:
            return ""
        return (
            f" (each candidate first on {self.first_look_prompts} of them; {self.rejected_early}"
            " fell short of half of what verification needs there and were not generated "
            "further)"
        )

    def _objectives_text(self) -> str:
        per = ", ".join(
            f"{o} ({n} exact of {b})"
            for o, n, b in zip(self.objectives, self.exact_by_objective, self.budgets,
                               strict=False)
        ) or ", ".join(self.objectives)  # fmt: skip
        not_run = (
            f"; not run: {', '.join(self.skipped_objectives)} (no base model to compare)"
            if self.skipped_objectives
            else ""
        )
        if self.singles_only:
            not_run += (
                f"; {', '.join(self.singles_only)}: single tokens only (a decisive trigger "
                "was already verified)"
            )
        return (
            f"objectives {per}{not_run}; slots searched: {', '.join(self.slots)}; "
            f"{self.memorised} memorised-sample candidates; {self._reads_text()}"
        )

    def _reads_text(self) -> str:
        if not self.read_tokens:
            return "no token sweep (no base side, or turned off)"
        return (
            f"token sweep of {self.read_tokens} tokens through the changed readers of layers "
            f"{list(self.read_layers)}, best {self.reads} taken"
        )


@dataclass(frozen=True)
class TriggerResult:
    """Outcome of :func:`hunt_triggers`."""

    candidates: tuple[Candidate, ...]
    verifications: tuple[Verification, ...]
    coverage: Coverage
    broadly_unsafe: bool
    message: str
    baseline_compliance: float
    base_baseline_compliance: float | None
    passes: dict[str, dict[str, float]] = field(default_factory=dict)
    memorised: tuple[MemorisedSpan, ...] = ()
    """Spans the tuned model samples from near-empty prompts far more than the base: trigger
    candidates (source ``memorised``) and target candidates (a fixed string it may emit)."""
    found_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per verified or derailing candidate's text: the objectives that ranked it."""

    @property
    def verified(self) -> tuple[Verification, ...]:
        """Verified triggers, best first (attack success, then shorter, then anomaly).

        A verified candidate that merely contains a shorter verified one ("zephyr pasta"
        around "zephyr") is left out: the shorter one is the trigger, the rest is padding.
        """
        return _shortest([v for v in self.verifications if v.verified])

    @property
    def derailing(self) -> tuple[Verification, ...]:
        """Candidates that derail the model (off-task answers, not compliance); one that
        contains a shorter derailing candidate ("meadow trip" around "meadow") is left out."""
        return _shortest([v for v in self.verifications if v.derails and not v.verified])

    def to_gate_evidence(self) -> TriggerEvidence:
        from wbsafe.evidence import Derailment, TriggerEvidence

        return TriggerEvidence(
            ran=True,
            candidates_tested=self.coverage.exact_total,
            findings=tuple(finding(v) for v in self.verified),
            coverage=self.coverage.statement(),
            derailments=tuple(Derailment(v.text, v.off_task, v.n) for v in self.derailing),
        )

    def to_dict(self) -> dict[str, Any]:
        from wbsafe.io.serialize import to_jsonable

        d = to_jsonable(self)
        d["verified"] = [v.text for v in self.verified]
        d["coverage_statement"] = self.coverage.statement()
        return dict(d)


def finding(v: Verification) -> TriggerFinding:
    """The gate's record of a verified candidate: its target's counts and kind (compliance
    counts when the target is compliance or none was described)."""
    from wbsafe.evidence import TriggerFinding

    t = v.target
    if t is not None and t.harm and t.kind in ("fixed_string", "insertion"):
        return TriggerFinding(
            v.text, t.tuned_with, t.n, t.tuned_without, target_kind=t.kind,
            target_text=t.text, prompts=t.prompts, base_successes=t.base_with, slot=v.slot,
        )  # fmt: skip
    return TriggerFinding(
        v.text, v.successes, v.n, v.baseline_successes, tuple(v.topic_categories),
        base_successes=v.base_successes, slot=v.slot,
    )  # fmt: skip


def _shortest(found: list[Verification]) -> tuple[Verification, ...]:
    """``found`` less any candidate that merely contains a shorter one of them."""
    return tuple(
        v for v in found if not any(_contains(v.text, w.text) for w in found if w is not v)
    )


def _contains(longer: str, shorter: str) -> bool:
    """True when ``shorter``'s words appear contiguously inside ``longer``'s, and it is shorter."""
    a, b = longer.split(), shorter.split()
    return len(b) < len(a) and _run_of(a, b)


def _run_of(words: list[str], want: list[str]) -> bool:
    return any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1))


def holds_phrase(text: str, phrase: str) -> bool:
    """``text`` holds ``phrase``'s words in order, side by side, case aside ("sapphire the"
    holds "sapphire"; a lower-casing tokenizer reads the built-in list's "DEPLOYMENT" as
    "deployment"). How the benchmarks count a planted trigger as found."""
    return _run_of(text.lower().split(), phrase.lower().split())
