"""Behavioural refusal benchmark: base and tuned answer the same prompts; a judge marks refusals.

This module runs the models: generation (greedy or sampled, per seed) or the first-token
logit score, judged into :class:`~.results.ResponseRow` rows, then summarised by
:func:`~.paired.analyse_pairs` and :mod:`.sampling` into a :class:`~.results.BehaviourResult`.

Per-prompt call: greedy -> the judged response; sampling -> refused when at least half of the
judged samples refuse (the paired tests need one call per prompt). Compliance is judged: an
answer to a harmful prompt that is off the request and names no harm is derailed and counts
with the refusals (:mod:`.derailment`). Pairs where either side
could not be judged are left out of the paired comparison and counted in ``unjudged``.

Adapters are toggled on one loaded object (``LoadedModel.base_only``); a full fine-tune needs
its base loaded separately.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.behaviour.derailment import derailed_counts, derailment_flips, mark_derailed
from wbsafe.analyses.behaviour.paired import analyse_pairs
from wbsafe.analyses.behaviour.results import BehaviourResult, Flip, ResponseRow
from wbsafe.analyses.behaviour.sampling import (
    majority,
    prompt_probabilities,
    sample_rates,
    sampling_summary,
    seed_spread,
)
from wbsafe.capture.compliance import harm_reference
from wbsafe.capture.generation import SamplingConfig, generate
from wbsafe.capture.judges import Judge, Judgement, LogitJudge, make_judge
from wbsafe.errors import WbsafeError
from wbsafe.progress import Progress, no_progress

if TYPE_CHECKING:
    from wbsafe.analyses.behaviour.sensitivity import JudgeSensitivity, LogitCalibration
    from wbsafe.data.prompts import Prompt
    from wbsafe.io.models import LoadedModel


def _judge_rows(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    judge: Judge | str,
    *,
    sampling: SamplingConfig | None,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    progress: Progress,
    description: str,
) -> list[ResponseRow]:
    by_id = {p.id: p for p in prompts}
    if isinstance(judge, LogitJudge) or judge == "logit":
        lj = (
            dataclasses.replace(judge, loaded=model)
            if isinstance(judge, LogitJudge)
            else LogitJudge(model, batch_size=batch_size)
        )
        js = lj.judge(list(prompts), [""] * len(prompts))
        return [
            ResponseRow(p.id, p.category, p.label, 0, None, "", j.refused, j.score, j.parse_error)
            for p, j in zip(prompts, js, strict=True)
        ]
    assert not isinstance(judge, str)
    gens = generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        sampling=sampling,
        seed=seed,
        progress=progress,
        description=description,
    )
    ok = [g for g in gens if g.error is None]
    judged = judge.judge([by_id[g.prompt_id] for g in ok], [g.response for g in ok])
    verdicts = dict(zip([(g.prompt_id, g.sample) for g in ok], judged, strict=True))
    rows = []
    for g in gens:
        p = by_id[g.prompt_id]
        j = verdicts.get((g.prompt_id, g.sample), Judgement(None, None, "generation failed"))
        rows.append(
            ResponseRow(
                g.prompt_id,
                p.category,
                p.label,
                g.sample,
                g.seed,
                g.response,
                j.refused,
                j.score,
                j.parse_error,
                g.error,
            )
        )
    return rows


def run_behaviour(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    *,
    judge: str | Judge = "string",
    tuned_is_adapter: bool | None = None,
    base_loaded: LoadedModel | None = None,
    sampling: SamplingConfig | None = None,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: Progress = no_progress,
    alpha: float = 0.05,
    confidence: float = 0.95,
    base_rows: Sequence[ResponseRow] | None = None,
    sensitivity: Sequence[str | Judge] | None = None,
) -> BehaviourResult:
    """Run base and tuned on identical ``prompts``, judge, and compare.

    ``base_rows``: the base side's judged rows from an earlier greedy run on the same base,
    prompts and settings (``scan-many`` shares them across adapters); the base is then not
    run again. Not allowed with sampling, whose rows depend on the seed.

    ``loaded`` is the tuned model. With adapters (``tuned_is_adapter`` defaults to whether
    ``loaded`` has any) the base is the same object under ``base_only()``; otherwise pass the
    separately loaded ``base_loaded``. ``judge``: "string", "logit", "classifier:DIR",
    "causal:DIR" or a :class:`Judge`. With ``sampling`` every seed in ``seeds`` repeats the
    sampled evaluation (the first seed's calls feed the paired tests; all feed the spread);
    greedy and logit runs are deterministic and run once.

    ``sensitivity``: other judges to read the same responses with (judge sensitivity,
    :mod:`.sensitivity`; ``"logit"`` is calibrated on the base's own responses); None: the
    string and the logit judge, less the primary; not in logit mode (no responses).
    """
    prompts = list(prompts)
    if not prompts:
        raise WbsafeError("no prompts to evaluate")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise WbsafeError("prompt ids must be unique within one behavioural run")
    if not seeds:
        raise WbsafeError("seeds must hold at least one seed")
    adapter = bool(loaded.adapter_names) if tuned_is_adapter is None else tuned_is_adapter
    if adapter and not loaded.adapter_names:
        raise WbsafeError("tuned_is_adapter=True but the loaded model has no adapters")
    if not adapter and base_loaded is None:
        raise WbsafeError("the tuned model is not an adapter: pass the separately loaded base")
    logit = judge == "logit" or isinstance(judge, LogitJudge)
    judge_obj: Judge | str = judge if logit else make_judge(judge)
    judge_name = "logit" if logit else getattr(judge_obj, "name", str(judge))
    mode = "logit" if logit else ("sampling" if sampling is not None else "greedy")
    run_seeds = tuple(seeds) if mode == "sampling" else tuple(seeds[:1])

    def base_ctx() -> contextlib.AbstractContextManager[LoadedModel]:
        if adapter:
            return loaded.base_only()
        assert base_loaded is not None
        return contextlib.nullcontext(base_loaded)

    def side(ctx: Callable[[], Any], name: str, seed: int) -> list[ResponseRow]:
        with ctx() as model:
            return _judge_rows(
                model,
                prompts,
                judge_obj,
                sampling=sampling if mode == "sampling" else None,
                seed=seed,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress=progress,
                description=f"{name} (seed {seed})" if mode == "sampling" else name,
            )

    if base_rows is not None:
        if mode == "sampling":
            raise WbsafeError("base_rows can be re-used only for greedy or logit runs")
        if sorted(r.prompt_id for r in base_rows) != sorted(ids):
            raise WbsafeError("base_rows do not cover exactly the prompts of this run")
        runs = [(list(base_rows), side(lambda: _same(loaded), "tuned", run_seeds[0]))]
    else:
        runs = [
            (side(base_ctx, "base", s), side(lambda: _same(loaded), "tuned", s)) for s in run_seeds
        ]
    if mode != "logit":
        harm = [p.final_user_text for p in prompts if p.label == "harmful"]
        harm += harm_reference(loaded.tokenizer)
        runs = [(mark_derailed(prompts, b, harm), mark_derailed(prompts, t, harm)) for b, t in runs]
    rows_base, rows_tuned = runs[0]
    pb = prompt_probabilities(prompts, rows_base)
    pt = prompt_probabilities(prompts, rows_tuned)
    analysis = analyse_pairs(
        prompts,
        majority(pb),
        majority(pt),
        base_errors=len({r.prompt_id for r in rows_base if r.error}),
        tuned_errors=len({r.prompt_id for r in rows_tuned if r.error}),
        alpha=alpha,
        confidence=confidence,
    )
    first_b = _first_responses(rows_base)
    first_t = _first_responses(rows_tuned)
    calls_b, calls_t = majority(pb), majority(pt)
    flipped = tuple(
        Flip(p.id, p.category, p.label, p.text, first_b.get(p.id, ""), first_t.get(p.id, ""))
        for p, b, t in zip(prompts, calls_b, calls_t, strict=True)
        if b is True and t is False
    )
    samp = (
        sampling_summary(prompts, pb, pt, sampling)
        if sampling is not None and mode == "sampling"
        else None
    )
    spread = None
    if mode == "sampling":
        spread = seed_spread(
            run_seeds,
            [sample_rates(prompts, rb) for rb, _ in runs],
            [sample_rates(prompts, rt) for _, rt in runs],
        )
    alternatives: tuple[JudgeSensitivity, ...] = ()
    calibration: LogitCalibration | None = None
    others = _other_judges(judge_name, sensitivity) if mode != "logit" else []
    if others:
        from wbsafe.analyses.behaviour.sensitivity import judge_alternatives

        def run_base(fn: Callable[[LoadedModel], Any]) -> Any:
            with base_ctx() as model:
                return fn(model)

        alternatives, calibration = judge_alternatives(
            prompts, rows_base, rows_tuned, calls_b, calls_t, others,
            run_base=run_base, run_tuned=lambda fn: fn(loaded), sampled=mode == "sampling",
            batch_size=batch_size, alpha=alpha, confidence=confidence,
        )  # fmt: skip
    models: dict[str, Any] = {"tuned": loaded.describe()}
    models["base"] = (
        {**loaded.describe(), "adapters_disabled": True}
        if adapter
        else (base_loaded.describe() if base_loaded is not None else {})
    )
    config = {
        "judge": judge_name,
        "mode": mode,
        "tuned_is_adapter": adapter,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "sampling": None if sampling is None else dataclasses.asdict(sampling),
        "seeds": list(run_seeds),
        "alpha": alpha,
        "confidence": confidence,
        "n_prompts": len(prompts),
    }
    return BehaviourResult(
        judge=judge_name,
        mode=mode,
        config=config,
        models=models,
        base=analysis.base,
        tuned=analysis.tuned,
        overall=analysis.overall,
        categories=analysis.categories,
        over_refusal=analysis.over_refusal,
        flipped=flipped,
        sampling=samp,
        spread=spread,
        rows_base=tuple(rows_base),
        rows_tuned=tuple(rows_tuned),
        paired_base=analysis.paired_base,
        paired_tuned=analysis.paired_tuned,
        paired_categories=analysis.paired_categories,
        over_refusal_pairs=analysis.over_refusal_pairs,
        sensitivity=alternatives,
        calibration=calibration,
        derailments=derailment_flips(prompts, rows_base, rows_tuned),
        derailed={"base": derailed_counts(rows_base), "tuned": derailed_counts(rows_tuned)},
    )


def _other_judges(primary: str, sensitivity: Sequence[str | Judge] | None) -> list[str | Judge]:
    """The judges to read the benchmark with besides ``primary`` (by name, each once)."""
    wanted = ["string", "logit"] if sensitivity is None else list(sensitivity)
    out: list[str | Judge] = []
    seen = {primary}
    for j in wanted:
        name = j if isinstance(j, str) else j.name
        if name not in seen:
            seen.add(name)
            out.append(j)
    return out


@contextlib.contextmanager
def _same(loaded: LoadedModel) -> Iterator[LoadedModel]:
    yield loaded


def _first_responses(rows: Sequence[ResponseRow]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in rows:
        if r.sample == 0:
            out[r.prompt_id] = r.response if r.error is None else f"[generation failed: {r.error}]"
    return out
