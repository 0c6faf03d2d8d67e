"""The probes stage: the base's refusal directions (fitted or re-used from the cache), the
tuned model's drift from them and the refusal alignment of the update, as report sections
and evidence."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from wbsafe.config import ScanConfig
from wbsafe.data.prompts import spread
from wbsafe.evidence import ProbeEvidence
from wbsafe.io.serialize import to_jsonable
from wbsafe.pipeline.caches import base_side_cache
from wbsafe.pipeline.models import Models
from wbsafe.pipeline.plan import PromptPlan
from wbsafe.pipeline.stages.figures import plot_section
from wbsafe.pipeline.store import StageOutput


def probes_stage(config: ScanConfig, models: Models, plan: PromptPlan, plots: Path) -> StageOutput:
    from wbsafe.analyses.refusal import compare, refusal_alignment
    from wbsafe.pipeline.directions_cache import fit_or_load_directions

    tuned = models.tuned()
    base = models.base()
    rows = models.batches().capture
    cache = base_side_cache(config)
    base_view = base if base is not None else tuned
    n_fit = config.probe_fit_prompts or max(len(plan.fit_harmful), len(plan.fit_harmless))
    fit = fit_or_load_directions(
        base_view, cache, spread(plan.fit_harmful, n_fit), spread(plan.fit_harmless, n_fit),
        seed=config.seed, batch_size=rows,
        causal_top_k=config.probe_causal_top_k, n_causal=config.probe_n_causal,
    )  # fmt: skip
    cmp = compare(tuned, fit, plan.eval_harmful, plan.eval_harmless, base=base, batch_size=rows)
    target: list[str] = models.adapters or [config.tuned or ""]
    align = refusal_alignment(config.base, target, fit)
    sections = _probe_sections(fit, cmp, align, plots)
    top = max(align.matrices, key=lambda m: m.alignment, default=None)
    sel = fit.selected()
    evidence = ProbeEvidence(
        layer=fit.layer,
        direction_cosine=cmp.cosine_per_layer[fit.layer],
        refusal_score_drop=cmp.refusal_drop,
        projection_loss=-cmp.shift,
        max_refusal_alignment=align.overall,
        aligned_module=top.name if top else None,
    )
    summary = (
        f"refusal direction at layer {fit.layer} ({fit.position}), held-out AUROC "
        f"{sel.auroc:.3f}; tuned: cosine {evidence.direction_cosine:.3f}, projection shift "
        f"{cmp.shift:+.2f} separations, refusal score drop {cmp.refusal_drop:+.2f}, "
        f"update alignment {align.overall:.3f}"
        + (" (directions re-used from cache)" if fit.loaded_from else "")
    )
    result = {
        "fit": fit.to_json(),
        "direction": [float(x) for x in fit.direction],
        "comparison": cmp.to_json(),
        "alignment": align.to_json(),
    }
    return StageOutput(summary, result, sections, evidence=to_jsonable(evidence))


def _probe_sections(fit: Any, cmp: Any, align: Any, plots: Path) -> list[dict[str, Any]]:
    from wbsafe.report.plots import refusal as plots_refusal

    plots.mkdir(parents=True, exist_ok=True)
    sections: list[dict[str, Any]] = []
    for name, fn, caption in (
        ("probe_auroc.png", plots_refusal.auroc_plot,
         "held-out AUROC of the base's refusal direction per layer, with the best-of-N "
         "random-direction baseline"),
        ("direction_cosine.png", plots_refusal.cosine_plot,
         "cosine(r_base, r_tuned) per layer"),
        ("projections.png", plots_refusal.projection_plot,
         "projections onto r_base at the selected layer: base vs tuned, harmful vs harmless"),
    ):  # fmt: skip
        title = caption.split(" per ")[0].capitalize()
        draw = functools.partial(fn, fit=fit, comparison=cmp, path=plots / name)
        sections.append(plot_section(draw, plots / name, title, caption))
    sel = fit.selected()
    sections.append({
        "title": "Refusal direction (base) and drift (tuned)",
        "kind": "table",
        "columns": ["layer", "cosine", "base-probe AUROC on tuned", "harmful shift (separations)"],
        "rows": [[i, f"{c:.3f}", f"{a:.3f}", f"{s:+.2f}"] for i, (c, a, s) in enumerate(
            zip(cmp.cosine_per_layer, cmp.probe_auroc_per_layer, cmp.shift_per_layer,
                strict=True))],
        "note": f"selected layer {fit.layer}, position {fit.position}: held-out AUROC "
                f"{sel.auroc:.3f} (random best-of-N {sel.random_auroc:.3f}), bypass "
                f"{sel.bypass}, induce {sel.induce}; {fit.selection}",
    })  # fmt: skip
    sections.append({
        "title": "Refusal alignment of the weight update",
        "kind": "table",
        "columns": ["layer", "||r^T dW|| / ||dW||"],
        "rows": [[k, f"{v:.3f}"] for k, v in align.per_layer.items()],
        "note": f"overall {align.overall:.3f} ({align.source}); 1 = update writes only along "
                "the refusal direction (abliteration-like)",
    })  # fmt: skip
    return sections
