"""The weights stage: the weight diff (files only, no model) as report sections and evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wbsafe.config import ScanConfig
from wbsafe.evidence import WeightEvidence
from wbsafe.io.serialize import to_jsonable
from wbsafe.pipeline.stages.figures import plot_section
from wbsafe.pipeline.store import StageOutput
from wbsafe.progress import Progress, no_progress


def weights_stage(config: ScanConfig, plots: Path, progress: Progress = no_progress) -> StageOutput:
    """Diff the tuned model (full checkpoint or adapters) against the base."""
    from wbsafe.analyses.weights import diff

    tuned = None if (config.tuned is None or config.adapters) else config.tuned
    adapters = list(config.adapters)
    if config.tuned and config.adapters:
        adapters.insert(0, config.tuned)
    return weights_stage_output(diff(config.base, tuned, adapters, progress=progress), plots)


def weights_stage_output(result: Any, plots_dir: Path, top: int = 10) -> Any:
    """Summary, report sections and gate evidence of a weight diff; writes the heatmap PNG."""
    from wbsafe.report.plots.weights import weight_heatmap

    plots_dir.mkdir(parents=True, exist_ok=True)
    png = plots_dir / "weights_heatmap.png"
    heatmap = plot_section(lambda: weight_heatmap(result, png), png,
                           "Layer x module relative change",
                           "log10 ||dW||_F / ||W||_F per layer and module type")  # fmt: skip
    ranking = [r for r in result.ranking if r.rel_diff is not None][:top]
    rows = [
        [r.layer if r.layer is not None else "-", r.module or "-", f"{r.rel_diff:.3g}",
         f"{r.fro_diff:.3g}", r.n_tensors]
        for r in ranking
    ]  # fmt: skip
    sections: list[dict[str, Any]] = [
        heatmap,
        {"title": "Most changed layers and modules", "kind": "table",
         "columns": ["layer", "module", "rel ||dW||", "||dW||", "tensors"], "rows": rows},
    ]  # fmt: skip
    outliers: list[str] = []
    for label, rep in (("embedding", result.embedding), ("unembedding", result.unembedding)):
        if rep is None:
            continue
        if not rep.top:
            sections.append({"title": f"{label.capitalize()} rows", "kind": "text",
                             "text": f"No {label} row changed: the matrix is unchanged."})  # fmt: skip
            continue
        sections.append({
            "title": f"{label.capitalize()} rows that moved most (trigger candidates)",
            "kind": "table",
            "columns": ["token id", "token", "rel change", "residual", "robust z"],
            "rows": [[t.token_id, t.token, f"{t.rel_change:.3g}", f"{t.residual_rel:.3g}",
                      f"{t.z:.1f}"] for t in rep.top[:top]],
            "note": f"global scale {rep.global_scale:.4f} removed; {rep.method}",
        })  # fmt: skip
        if label == "embedding":
            outliers = [t.token or str(t.token_id) for t in rep.top if t.z >= 6.0][:10]
    notes = list(result.notes)
    for what, items in (("missing", result.missing), ("extra", result.extra),
                        ("non-finite", result.nonfinite)):  # fmt: skip
        if items:
            notes.append(f"{len(items)} {what} tensor(s): {', '.join(map(str, items[:5]))}")
    if result.shape_changed:
        notes.append(f"{len(result.shape_changed)} tensor(s) changed shape")
    if notes:
        sections.append({"title": "Notes", "kind": "text", "text": "\n".join(notes)})
    top_cell = ranking[0] if ranking else None
    evidence = WeightEvidence(
        top_module=_cell_name(top_cell) if top_cell else None,
        top_relative_change=top_cell.rel_diff if top_cell else None,
        outlier_tokens=tuple(outliers),
    )
    summary = (
        f"{len(result.rows)} tensors compared; most changed: {_cell_name(top_cell)} "
        f"(relative {top_cell.rel_diff:.3g})"
        if top_cell
        else f"{len(result.rows)} tensors compared; nothing changed"
    )
    return StageOutput(summary, result.to_json(), sections, evidence=to_jsonable(evidence))


def _cell_name(cell: Any) -> str:
    """``layer 3 down`` for a layer's module, the module alone outside the layers."""
    return f"layer {cell.layer} {cell.module}" if cell.layer is not None else str(cell.module)
