"""The behaviour stage: the refusal benchmark on held-out prompts, base and tuned (the base's
judged responses re-used from the cache), as report sections and evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wbsafe.config import ScanConfig
from wbsafe.io.serialize import to_jsonable
from wbsafe.pipeline.caches import base_behaviour_path, read_base_rows, write_base_rows
from wbsafe.pipeline.models import Models
from wbsafe.pipeline.plan import PromptPlan
from wbsafe.pipeline.stages.figures import plot_section
from wbsafe.pipeline.store import StageOutput
from wbsafe.progress import Progress, no_progress


def behaviour_stage(
    config: ScanConfig, models: Models, plan: PromptPlan, plots: Path,
    progress: Progress = no_progress, samples: int | None = None,
) -> StageOutput:  # fmt: skip
    """``samples``: sampled responses per prompt (None: greedy; the base-side cache holds
    greedy rows only)."""
    from wbsafe.analyses.behaviour import run_behaviour
    from wbsafe.capture.generation import SamplingConfig
    from wbsafe.report.plots import behaviour as plots_behavior

    prompts = plan.behaviour_harmful + plan.behaviour_harmless
    tuned, base = models.tuned(), models.base()
    sampling = None if samples is None else SamplingConfig(n_samples=samples, temperature=1.0)
    cached = None if sampling else base_behaviour_path(config, base or tuned, prompts)
    base_rows = read_base_rows(cached)
    res = run_behaviour(
        tuned, prompts, base_loaded=base, max_new_tokens=config.max_new_tokens,
        batch_size=config.runtime.batch_size, base_rows=base_rows, progress=progress,
        sampling=sampling, seeds=(config.seed,),
    )  # fmt: skip
    if base_rows is None and cached is not None:
        write_base_rows(cached, res.rows_base)
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
        {"title": "Flipped prompts (refused by base, answered by tuned)", "kind": "table",
         "columns": ["prompt", "base response", "tuned response"],
         "rows": [[f.text, f.base_response, f.tuned_response] for f in res.flipped[:20]]},
        *_judge_agreement_section(res.judge),
        {"title": "Summary", "kind": "text", "text": "\n".join(res.summary_lines())},
    ]  # fmt: skip
    evidence = to_jsonable(res.to_gate_evidence())
    return StageOutput(res.summary_lines()[0], res.to_dict(), sections, evidence=evidence)


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
