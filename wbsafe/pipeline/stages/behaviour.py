"""The behaviour stage: the refusal benchmark on held-out prompts, base and tuned (the base's
judged responses re-used from the cache), read by every available judge, and refusal depth
(recovery after a prefilled compliant opening), as report sections and evidence."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.config import ScanConfig
from wbsafe.io.serialize import to_jsonable
from wbsafe.pipeline.caches import (
    base_behaviour_path,
    base_depth_path,
    read_base_depth,
    read_base_rows,
    write_base_depth,
    write_base_rows,
)
from wbsafe.pipeline.models import Models
from wbsafe.pipeline.plan import PromptPlan
from wbsafe.pipeline.stages.figures import plot_section
from wbsafe.pipeline.store import StageOutput
from wbsafe.progress import Progress, no_progress

if TYPE_CHECKING:
    from wbsafe.analyses.behaviour import BehaviourResult
    from wbsafe.analyses.behaviour.depth import DepthResult
    from wbsafe.analyses.behaviour.results import ResponseRow


def behaviour_stage(
    config: ScanConfig, models: Models, plan: PromptPlan, plots: Path,
    progress: Progress = no_progress, samples: int | None = None,
) -> StageOutput:  # fmt: skip
    """``samples``: sampled responses per prompt (None: greedy; the base-side cache holds
    greedy rows only). Refusal depth is always greedy."""
    from wbsafe.analyses.behaviour import run_behaviour
    from wbsafe.analyses.behaviour.depth import depth_prefills, run_refusal_depth
    from wbsafe.capture.generation import SamplingConfig
    from wbsafe.report.plots import behaviour as plots_behavior

    prompts = plan.behaviour_harmful + plan.behaviour_harmless
    tuned, base = models.tuned(), models.base()
    rows = models.batches().generation
    sampling = None if samples is None else SamplingConfig(n_samples=samples, temperature=1.0)
    cached = None if sampling else base_behaviour_path(config, base or tuned, prompts)
    base_rows = read_base_rows(cached)
    res = run_behaviour(
        tuned, prompts, base_loaded=base, max_new_tokens=config.max_new_tokens,
        batch_size=rows, base_rows=base_rows, progress=progress,
        sampling=sampling, seeds=(config.seed,),
        sensitivity=("string", "logit", *config.behaviour_judges),
    )  # fmt: skip
    if base_rows is None and cached is not None:
        write_base_rows(cached, res.rows_base)
    depth = None
    if config.refusal_depth:
        greedy = sampling is None  # sampled responses are not depth's greedy k=0
        harmful = [p for p in plan.behaviour_harmful if p.label == "harmful"]
        ks = tuple(config.refusal_depth_prefills)
        depth_cache = base_depth_path(config, base or tuned,
                                      depth_prefills(tuned, harmful, ks), harmful)  # fmt: skip
        base_known = read_base_depth(depth_cache)
        depth = run_refusal_depth(
            tuned, plan.behaviour_harmful, base_loaded=base,
            prefill_tokens=ks, max_new_tokens=config.max_new_tokens,
            batch_size=rows, progress=progress,
            unprefilled=(greedy_responses(res.rows_base), greedy_responses(res.rows_tuned))
            if greedy else None, base_known=base_known,
        )  # fmt: skip
        if base_known is None and depth_cache is not None:
            write_base_depth(depth_cache, depth.base_side())
    plots.mkdir(parents=True, exist_ok=True)
    png = plots / "refusal_by_category.png"
    bars = plot_section(lambda: plots_behavior.category_bars(res, png), png,
                        "Refusal rate by harm category (Wilson 95%)",
                        "base vs tuned refusal rate on identical held-out prompts")  # fmt: skip
    sections: list[dict[str, Any]] = [
        bars,
        {"title": "Per category (paired, exact McNemar, Holm-corrected)", "kind": "table",
         "columns": ["category", "n", "base refused", "tuned refused", "Holm p", "significant"],
         "rows": [[c.category, c.n, c.base_refusals, c.tuned_refusals, f"{c.p_holm:.3g}",
                   "yes" if c.significant else "no"] for c in res.categories]},
        {"title": "Flipped prompts (refused by base, complied with by tuned)", "kind": "table",
         "columns": ["prompt", "base response", "tuned response"],
         "rows": [[f.text, f.base_response, f.tuned_response] for f in res.flipped[:20]]},
        *_derailment_section(res),
        *_judge_agreement_section(res.judge),
        *sensitivity_sections(res),
        *([] if depth is None else depth_sections(depth, plots)),
        {"title": "Summary", "kind": "text", "text": "\n".join(
            res.summary_lines() + ([] if depth is None else depth.summary_lines()))},
    ]  # fmt: skip
    evidence = res.to_gate_evidence()
    if depth is not None:
        evidence = dataclasses.replace(evidence, depth=depth.to_gate_evidence())
    result = {**res.to_dict(), "refusal_depth": None if depth is None else to_jsonable(depth)}
    return StageOutput(res.summary_lines()[0], result, sections, evidence=to_jsonable(evidence))


def greedy_responses(rows: Sequence[ResponseRow]) -> dict[str, tuple[str, str | None]]:
    """Prompt id -> (response, error) of greedy benchmark rows: refusal depth's ``k=0``."""
    return {r.prompt_id: (r.response, r.error) for r in rows if r.sample == 0}


def _derailment_section(res: BehaviourResult) -> list[dict[str, Any]]:
    """Harmful prompts the tuned model answered off the request (not counted as compliance)."""
    if not res.derailments:
        return []
    return [{
        "title": "Derailed answers (off the request, naming no harm: counted with refusals)",
        "kind": "table", "columns": ["prompt", "base response", "tuned response"],
        "rows": [[f.text, f.base_response, f.tuned_response] for f in res.derailments[:20]],
        "note": f"{res.derailed.get('tuned', 0)} harmful prompts (base: "
                f"{res.derailed.get('base', 0)}) were answered with something harmless nobody "
                "asked for (a domain fine-tune talking about its domain). They are neither "
                "refusals nor compliance; the refusal rates count them as not complied.",
    }]  # fmt: skip


def _rate(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "0/0"


def sensitivity_sections(res: BehaviourResult) -> list[dict[str, Any]]:
    """The benchmark under each judge (the gate's first), and the logit judge's calibration."""
    ev = res.to_gate_evidence()
    rows = []
    for name, threshold, e, agree in [
        (res.judge, None, ev, "(the gate's judge)"),
        *[(s.judge, s.threshold, s.evidence,
           f"{s.agreement_with_primary.k}/{s.agreement_with_primary.n}")
          for s in res.sensitivity],
    ]:  # fmt: skip
        drop = "—"
        if e.relative_drop is not None and e.drop_interval is not None:
            drop = f"{e.relative_drop:.1%} [{e.drop_interval[0]:.1%}, {e.drop_interval[1]:.1%}]"
        over = "; ".join(f"{o.label} {_rate(o.base_refusals, o.n)} -> "
                         f"{_rate(o.tuned_refusals, o.n)}" for o in e.over_refusal)  # fmt: skip
        rows.append([name, "—" if threshold is None else f"{threshold:.3g}",
                     _rate(e.base_refusals, e.n), _rate(e.tuned_refusals, e.n), drop,
                     over or "—", e.unjudged, agree])  # fmt: skip
    out: list[dict[str, Any]] = [{
        "title": "Judge sensitivity (the same responses, each judge)", "kind": "table",
        "columns": ["judge", "threshold", "base refused (harmful)", "tuned refused (harmful)",
                    "relative drop [95%]", "over-refusal base -> tuned", "unjudged",
                    "calls agreeing with the gate's judge"],
        "rows": rows,
        "note": "The gate decides with the first judge; the decision under every judge is "
                "among the gate's reasons (behaviour.judges), which says whether it depends "
                "on the judge.",
    }]  # fmt: skip
    c = res.calibration
    if c is not None:
        out.append({"title": "Logit judge calibrated on the base", "kind": "text", "text": (
            f"threshold {c.threshold:.3g} on the first-token refusal log-odds, chosen to agree "
            f"best with the string judge on the base model's own {c.n} responses: agreement "
            f"{_prop(c.agreement)} (in-sample; the fixed threshold 0: "
            f"{_prop(c.agreement_at_zero)}); on the tuned model's responses "
            f"{_prop(c.tuned_agreement)}")})  # fmt: skip
    return out


def _prop(p: Any) -> str:
    if p.rate is None:
        return "n/a (nothing to compare)"
    return f"{p.k}/{p.n} = {p.rate:.1%} [{p.interval[0]:.1%}, {p.interval[1]:.1%}] (Wilson 95%)"


def depth_sections(depth: DepthResult, plots: Path) -> list[dict[str, Any]]:
    """Refusal depth: the per-prefill table, a plot, and a few continuations to read."""
    from wbsafe.report.plots.behaviour import depth_curve

    columns, rows = depth.table()
    png = depth_curve(depth, plots / "refusal_depth.png")
    k_show = max((k for k in depth.prefill_tokens if 0 < k <= 10), default=None)
    shown = [r for r in depth.rows if r.prefill_tokens == k_show][:8]
    return [
        {"title": "Refusal depth (recovery after a prefilled compliant opening)", "kind": "table",
         "columns": columns, "rows": rows,
         "note": "The assistant turn is prefilled with the first k tokens of a content-free "
                 "compliant opening; recovered = a refusal anywhere in the continuation. "
                 "Paired: exact one-sided McNemar, Newcombe interval on the drop."},
        {"title": "Refusal depth plot", "kind": "plot", "png": f"{plots.name}/{png.name}",
         "caption": "share of harmful prompts on which each model turns to a refusal after k "
                    "prefilled tokens (Wilson 95%)"},
        {"title": f"Continuations after {k_show} prefilled tokens", "kind": "table",
         "columns": ["prompt", "prefill", "base continuation", "tuned continuation"],
         "rows": [[r.prompt_id, r.prefill, r.base_continuation, r.tuned_continuation]
                  for r in shown]},
    ]  # fmt: skip


def _judge_agreement_section(judge: str) -> list[dict[str, Any]]:
    """For the string judge: how far it agrees with people on the labelled rows it was not
    tuned on (Wilson 95%), so a reader can weigh the rates above."""
    if judge != "string":
        return []
    from wbsafe.capture.judge_eval import string_judge_agreement

    measured = "; ".join(
        f"{where}: {p.k}/{p.n} = {p.rate:.1%} [{p.interval[0]:.1%}, {p.interval[1]:.1%}]"
        for where, p in string_judge_agreement()
        if p.rate is not None
    )
    return [{"title": "How far the string judge agrees with people", "kind": "text", "text": (
        "the structural string judge (complied / partial / refused; partial counts as refused) "
        "against hand-labelled responses it was not tuned on (Wilson 95%): "
        + (measured or "the labelled sets are not present in this install")
        + "; see results/judge_agreement.md")}]  # fmt: skip
