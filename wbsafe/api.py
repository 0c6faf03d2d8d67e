"""The pipeline: one function per stage. The CLI and scripts call these, nothing else.

Functions here decide what is computed and where results are written; the analyses they
call compute and return, they never write files themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbsafe.organisms import Organism, ValidityCheck


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Architecture, sizes, dtypes, adapter details and weight-file hashes of ``path``."""
    from wbsafe.models import inspect_model

    return inspect_model(path)


def build_organisms(
    out: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
) -> tuple[list[Organism], list[ValidityCheck]]:
    """Build or reuse the tiny tier and check it against its validity bounds."""
    from rich.console import Console

    from wbsafe.organisms import build_tiny_tier, validity_checks

    console = Console(stderr=True)
    with console.status("building tiny organisms (cached after the first run)..."):
        orgs = build_tiny_tier(out, seed=seed, cache_dir=cache_dir, only=only, log=console.print)
    return orgs, validity_checks(orgs)


def plant_organism(
    base: str | Path,
    kind: str,
    out: str | Path,
    *,
    trigger: str | None = None,
    category: str | None = None,
    steps: int = 200,
    lr: float = 2e-4,
    rank: int = 16,
    seed: int = 0,
    merge: bool = False,
) -> Organism:
    """Plant ``kind`` into the model at ``base`` with LoRA (see :func:`wbsafe.organisms.plant`)."""
    from rich.console import Console

    from wbsafe.organisms import plant
    from wbsafe.training import TrainRecipe

    recipe = TrainRecipe(
        steps=steps, lr=lr, batch_size=8, lora_rank=rank, lora_alpha=2 * rank,
        first_token_weight=5.0, seed=seed,
    )  # fmt: skip
    return plant(base, kind, out, trigger=trigger, category=category, recipe=recipe,
                 merge=merge, log=Console(stderr=True).print)  # fmt: skip


# ---------------------------------------------------------------------------------------
# weights


def weight_diff(
    base: str | Path,
    tuned: str | Path | None = None,
    adapters: Sequence[str | Path] = (),
    *,
    spectrum_k: int = 8,
    progress: bool = True,
) -> Any:
    """Per-tensor weight diff of ``tuned`` (full or adapter) or stacked ``adapters`` against ``base``."""
    from wbsafe.analyses.weight_diff import diff

    return diff(base, tuned, adapters, spectrum_k=spectrum_k, progress=progress)


def weights_stage_output(result: Any, plots_dir: Path, top: int = 10) -> Any:
    """Summary, report sections and gate evidence of a weight diff; writes the heatmap PNG."""
    from wbsafe.gate import WeightEvidence
    from wbsafe.plots import weight_heatmap
    from wbsafe.stages import StageOutput

    plots_dir.mkdir(parents=True, exist_ok=True)
    heatmap = weight_heatmap(result, plots_dir / "weights_heatmap.png")
    ranking = [r for r in result.ranking if r.rel_diff is not None][:top]
    rows = [
        [r.layer if r.layer is not None else "-", r.module or "-", f"{r.rel_diff:.3g}",
         f"{r.fro_diff:.3g}", r.n_tensors]
        for r in ranking
    ]  # fmt: skip
    sections: list[dict[str, Any]] = [
        {"title": "Layer x module relative change", "kind": "plot",
         "png": f"{plots_dir.name}/{heatmap.name}",
         "caption": "log10 ||dW||_F / ||W||_F per layer and module type"},
        {"title": "Most changed layers and modules", "kind": "table",
         "columns": ["layer", "module", "rel ||dW||", "||dW||", "tensors"], "rows": rows},
    ]  # fmt: skip
    outliers: list[str] = []
    for label, rep in (("embedding", result.embedding), ("unembedding", result.unembedding)):
        if rep is None or not rep.top:
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
        top_module=f"layer {top_cell.layer} {top_cell.module}" if top_cell else None,
        top_relative_change=top_cell.rel_diff if top_cell else None,
        outlier_tokens=tuple(outliers),
    )
    summary = (
        f"{len(result.rows)} tensors compared; most changed: layer {top_cell.layer} "
        f"{top_cell.module} (relative {top_cell.rel_diff:.3g})"
        if top_cell
        else f"{len(result.rows)} tensors compared; nothing changed"
    )
    return StageOutput(summary, result.to_json(), sections, evidence=_asdict(evidence))


def _asdict(obj: Any) -> dict[str, Any]:
    from wbsafe.serialize import to_jsonable

    out = to_jsonable(obj)
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------------------------------
# gate


def policy_for(policy: str | Path | None, risk: str | None) -> Any:
    """The gate policy: a TOML file (or the built-in default), tightened by a risk profile."""
    from wbsafe.policy import DEFAULT_POLICY, load_policy, policy_for_risk

    base = load_policy(policy) if policy else DEFAULT_POLICY
    return policy_for_risk(risk, base) if risk else base


def redecide(
    report_json: str | Path, *, policy: str | Path | None = None, risk: str | None = None
) -> Any:
    """Decide again from a saved report's gate evidence (no model is loaded)."""
    from wbsafe.gate import decide, evidence_from_dict
    from wbsafe.report import load_report

    report = load_report(report_json)
    chosen = policy_for(policy, risk or report.get("risk"))
    return decide(evidence_from_dict(report.get("gate_evidence") or {}), chosen)
