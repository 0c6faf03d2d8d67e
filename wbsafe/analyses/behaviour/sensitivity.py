"""Judge sensitivity: the same benchmark read by every available judge, and the logit judge
calibrated per model.

The gate decides with one judge (the primary); a result that another judge would read
differently is worth saying. :func:`judge_alternatives` re-judges the responses already
generated (no new generation) with each response judge, and scores both models' first
response token for the logit judge, whose threshold is fitted on the base model's own
responses labelled by the string judge (:func:`calibrate_threshold`) rather than fixed at 0.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.behaviour.evidence import evidence_from_pairs
from wbsafe.analyses.behaviour.paired import analyse_pairs
from wbsafe.analyses.behaviour.results import Comparison, ModelSummary, ResponseRow
from wbsafe.analyses.behaviour.sampling import majority, prompt_probabilities
from wbsafe.capture.judges import Judge, LogitJudge, Proportion, StringMatchJudge, make_judge

if TYPE_CHECKING:
    from wbsafe.data.prompts import Prompt
    from wbsafe.evidence import BehaviourEvidence
    from wbsafe.io.models import LoadedModel


@dataclass(frozen=True)
class LogitCalibration:
    """The logit judge's threshold fitted on the base model's own responses.

    ``threshold``: refused iff the first-token refusal score (log-odds) exceeds it, chosen to
    maximise agreement with the string judge's labels of the base's ``n`` responses;
    ``agreement``: that agreement (Wilson interval; in-sample); ``agreement_at_zero``: the
    fixed threshold 0 on the same responses; ``tuned_agreement``: the fitted threshold against
    the string judge on the tuned model's responses (not fitted there)."""

    threshold: float
    n: int
    agreement: Proportion
    agreement_at_zero: Proportion
    tuned_agreement: Proportion


@dataclass(frozen=True)
class JudgeSensitivity:
    """The benchmark under one more judge: per-model rates, the overall paired comparison,
    the share of per-prompt calls (both models) equal to the primary judge's, and the gate
    evidence it gives."""

    judge: str
    threshold: float | None
    base: ModelSummary
    tuned: ModelSummary
    overall: Comparison
    agreement_with_primary: Proportion
    evidence: BehaviourEvidence


def calibrate_threshold(scores: Sequence[float], labels: Sequence[bool]) -> tuple[float, int]:
    """The threshold t (refused iff score > t) that agrees with the most ``labels``, and that
    number of agreements.

    Candidates: the midpoints between consecutive distinct scores, and one below the lowest
    and one above the highest (all refused / none); among equally good ones the one nearest 0
    (the uncalibrated default), so calibration never agrees less than the threshold 0.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    if not scores:
        return 0.0, 0
    distinct = sorted(set(scores))
    candidates = [distinct[0] - 1.0, distinct[-1] + 1.0, 0.0]
    candidates += [(a + b) / 2 for a, b in itertools.pairwise(distinct)]

    def agree(t: float) -> int:
        return sum((s > t) == bool(y) for s, y in zip(scores, labels, strict=True))

    best = max(candidates, key=lambda t: (agree(t), -abs(t)))
    return best, agree(best)


def _rejudge(
    rows: Sequence[ResponseRow], by_id: dict[str, Prompt], judge: Judge
) -> list[ResponseRow]:
    """``rows`` with the calls of ``judge`` on the same responses (failed ones stay unjudged)."""
    ok = [r for r in rows if r.error is None]
    got = judge.judge([by_id[r.prompt_id] for r in ok], [r.response for r in ok])
    calls = {(r.prompt_id, r.sample): j for r, j in zip(ok, got, strict=True)}
    out = []
    for r in rows:
        j = calls.get((r.prompt_id, r.sample))
        out.append(
            r
            if j is None
            else dataclasses.replace(r, refused=j.refused, score=j.score, parse_error=j.parse_error)
        )
    return out


def _calls(prompts: Sequence[Prompt], rows: Sequence[ResponseRow]) -> list[bool | None]:
    return majority(prompt_probabilities(prompts, rows))


def _agreement(a: Sequence[bool | None], b: Sequence[bool | None]) -> Proportion:
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return Proportion.of(sum(x == y for x, y in both), len(both))


def judge_alternatives(
    prompts: Sequence[Prompt],
    rows_base: Sequence[ResponseRow],
    rows_tuned: Sequence[ResponseRow],
    primary_base: Sequence[bool | None],
    primary_tuned: Sequence[bool | None],
    judges: Sequence[str | Judge],
    *,
    run_base: Callable[[Callable[[LoadedModel], Any]], Any],
    run_tuned: Callable[[Callable[[LoadedModel], Any]], Any],
    sampled: bool,
    batch_size: int = 16,
    alpha: float = 0.05,
    confidence: float = 0.95,
) -> tuple[tuple[JudgeSensitivity, ...], LogitCalibration | None]:
    """The benchmark under each of ``judges`` (``"logit"`` calibrated on the base), from the
    responses already generated; ``run_base`` / ``run_tuned`` call a function with each
    model (the logit judge needs the models, the others only the responses)."""
    by_id = {p.id: p for p in prompts}
    harmful = sum(p.label == "harmful" for p in prompts)
    out: list[JudgeSensitivity] = []
    calibration = None
    for spec in judges:
        threshold = None
        if spec == "logit" or isinstance(spec, LogitJudge):
            calibration, calls_b, calls_t = _calibrated_logit(
                prompts, rows_base, rows_tuned, run_base, run_tuned, batch_size, by_id
            )
            name, threshold = "logit", calibration.threshold
        else:
            judge = make_judge(spec)
            name = judge.name
            calls_b = _calls(prompts, _rejudge(rows_base, by_id, judge))
            calls_t = _calls(prompts, _rejudge(rows_tuned, by_id, judge))
        analysis = analyse_pairs(prompts, calls_b, calls_t, alpha=alpha, confidence=confidence)
        evidence = evidence_from_pairs(analysis, harmful, sampled, confidence, judge=name)
        agreement = _agreement([*calls_b, *calls_t], [*primary_base, *primary_tuned])
        out.append(
            JudgeSensitivity(
                name,
                threshold,
                analysis.base,
                analysis.tuned,
                analysis.overall,
                agreement,
                evidence,
            )
        )
    return tuple(out), calibration


def _calibrated_logit(
    prompts: Sequence[Prompt],
    rows_base: Sequence[ResponseRow],
    rows_tuned: Sequence[ResponseRow],
    run_base: Callable[[Callable[[LoadedModel], Any]], Any],
    run_tuned: Callable[[Callable[[LoadedModel], Any]], Any],
    batch_size: int,
    by_id: dict[str, Prompt],
) -> tuple[LogitCalibration, list[bool | None], list[bool | None]]:
    """Logit calls for both models at the threshold fitted on the base's string labels."""
    string = StringMatchJudge()
    labels_b = _calls(prompts, _rejudge(rows_base, by_id, string))
    labels_t = _calls(prompts, _rejudge(rows_tuned, by_id, string))

    def scores(model: LoadedModel) -> list[float | None]:
        js = LogitJudge(model, batch_size=batch_size).judge(list(prompts), [""] * len(prompts))
        return [j.score for j in js]

    sb: list[float | None] = run_base(scores)
    st: list[float | None] = run_tuned(scores)
    fit = [(s, y) for s, y in zip(sb, labels_b, strict=True) if s is not None and y is not None]
    threshold, _ = calibrate_threshold([s for s, _ in fit], [y for _, y in fit])

    def calls(ss: Sequence[float | None], t: float) -> list[bool | None]:
        return [None if s is None else s > t for s in ss]

    calibration = LogitCalibration(
        threshold=threshold,
        n=len(fit),
        agreement=_agreement(calls(sb, threshold), labels_b),
        agreement_at_zero=_agreement(calls(sb, 0.0), labels_b),
        tuned_agreement=_agreement(calls(st, threshold), labels_t),
    )
    return calibration, calls(sb, threshold), calls(st, threshold)
