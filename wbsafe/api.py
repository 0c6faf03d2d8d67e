"""The pipeline: one function per stage. The CLI and scripts call these, nothing else.

Functions here decide what is computed and where results are written; the analyses they
call compute and return, they never write files themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from wbsafe import verdict
from wbsafe.organisms.tier import Organism, ValidityCheck


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Architecture, sizes, dtypes, adapter details and weight-file hashes of ``path``."""
    from wbsafe.io.models import inspect_model

    return inspect_model(path)


def build_organisms(
    out: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
) -> tuple[list[Organism], list[ValidityCheck]]:
    """Build or reuse the tiny tier and check it against its validity bounds."""
    from rich.console import Console

    from wbsafe.organisms.tier import build_tiny_tier, validity_checks

    console = Console(stderr=True)
    with console.status("building tiny organisms (cached after the first run)..."):
        orgs = build_tiny_tier(out, seed=seed, cache_dir=cache_dir, only=only, log=console.print)
    return orgs, validity_checks(orgs)


def build_real_tier(out: str | Path | None = None) -> list[Organism]:
    """The real tier (SmolLM2-135M-Instruct, safety-tuned, then planted), built by the
    drivers in the repository's ``scripts/`` (slow: about an hour of LoRA steps on 2 cores).

    Already-built organisms are skipped, so an interrupted build resumes.
    """
    import subprocess
    import sys

    from wbsafe.errors import WbsafeError
    from wbsafe.organisms.tier import default_cache_dir

    scripts = Path(__file__).resolve().parent.parent / "scripts"
    if not (scripts / "build_real_tier.py").is_file():
        raise WbsafeError(
            "the real tier is built by scripts/prepare_smollm2.py and scripts/build_real_tier.py, "
            "which ship with the source checkout, not with an installed package",
            scripts,
        )
    root = default_cache_dir() / "real"
    prepared = root / "smollm2-135m-instruct"
    tier = Path(out) if out else root / "tier"
    for cmd in (
        [sys.executable, str(scripts / "prepare_smollm2.py"), "--out", str(prepared),
         "--cache", str(root / "download")],
        [sys.executable, str(scripts / "build_real_tier.py"), "--out", str(tier),
         "--base", str(prepared)],
    ):  # fmt: skip
        if subprocess.run(cmd).returncode != 0:
            raise WbsafeError(f"real-tier step failed: {' '.join(cmd[1:3])}")
    return [Organism.load(d) for d in sorted(tier.iterdir()) if (d / "organism.json").is_file()]


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
    """Plant ``kind`` into the model at ``base`` with LoRA (see :func:`wbsafe.organisms.tier.plant`)."""
    from rich.console import Console

    from wbsafe.organisms.tier import plant
    from wbsafe.organisms.training import TrainRecipe

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
    spectra: bool = True,
    progress: bool = True,
) -> Any:
    """Per-tensor weight diff of ``tuned`` (full or adapter) or stacked ``adapters`` against ``base``."""
    from wbsafe.analyses.weights.diff import diff

    return diff(base, tuned, adapters, spectrum_k=spectrum_k, spectra=spectra, progress=progress)


def weights_stage_output(result: Any, plots_dir: Path, top: int = 10) -> Any:
    """Summary, report sections and gate evidence of a weight diff; writes the heatmap PNG."""
    from wbsafe.evidence import WeightEvidence
    from wbsafe.pipeline.store import StageOutput
    from wbsafe.report.plots.weights import weight_heatmap

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
    return StageOutput(summary, result.to_json(), sections, evidence=_asdict(evidence))


def _cell_name(cell: Any) -> str:
    """``layer 3 down`` for a layer's module, the module alone outside the layers."""
    return f"layer {cell.layer} {cell.module}" if cell.layer is not None else str(cell.module)


def _asdict(obj: Any) -> dict[str, Any]:
    from wbsafe.io.serialize import to_jsonable

    out = to_jsonable(obj)
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------------------------------
# gate


def policy_for(policy: str | Path | None, risk: str | None) -> Any:
    """The gate policy: a TOML file (or the built-in default), tightened by a risk profile."""
    from wbsafe.gate.policy import DEFAULT_POLICY, load_policy, policy_for_risk

    base = load_policy(policy) if policy else DEFAULT_POLICY
    return policy_for_risk(risk, base) if risk else base


def redecide(
    report_json: str | Path, *, policy: str | Path | None = None, risk: str | None = None
) -> Any:
    """Decide again from a saved report's gate evidence (no model is loaded)."""
    from wbsafe.evidence import parse_evidence
    from wbsafe.gate import decide
    from wbsafe.report.render import load_report

    report = load_report(report_json)
    chosen = policy_for(policy, risk or report.get("risk"))
    return decide(parse_evidence(report.get("gate_evidence") or {}), chosen)


# ---------------------------------------------------------------------------------------
# scan


def build_scan_config(
    *,
    base: str | Path,
    tuned: str | Path | None = None,
    adapters: Sequence[str | Path] = (),
    config_file: str | Path | None = None,
    skip: Sequence[str] = (),
    device: str = "auto",
    dtype: str = "auto",
    **overrides: Any,
) -> Any:
    """A ScanConfig from a TOML file (optional) and explicit values (None = keep the file's)."""
    from wbsafe.config import (
        STAGES,
        DeviceName,
        DtypeName,
        RuntimeConfig,
        ScanConfig,
        read_scan_toml,
    )

    values: dict[str, Any] = read_scan_toml(str(config_file)) if config_file else {}
    values.update({"base": str(base)})
    if tuned is not None:
        values["tuned"] = str(tuned)
    if adapters:
        values["adapters"] = tuple(str(a) for a in adapters)
    rt = values.get("runtime") or RuntimeConfig()
    values["runtime"] = RuntimeConfig(
        device=cast(DeviceName, device if device != "auto" else rt.device),
        dtype=cast(DtypeName, dtype if dtype != "auto" else rt.dtype),
        seed=rt.seed, batch_size=rt.batch_size, threads=rt.threads,
    )  # fmt: skip
    stages = values.get("stages", STAGES)
    values["stages"] = tuple(s for s in stages if s not in skip)
    for key, value in overrides.items():
        if key == "triggers":
            key = "trigger_candidates"
            value = tuple(value) or values.get(key, ())
        if value is not None and value != ():
            values[key] = str(value) if isinstance(value, Path) else value
    return ScanConfig(**values)


def run_scan(config: Any, out: str | Path, *, quiet: bool = False) -> dict[str, Any]:
    """Scan, write the reports, print the console summary; the report gets ``exit_code``."""
    from rich.console import Console

    from wbsafe.pipeline.scan import scan
    from wbsafe.report.render import print_console_summary

    console = Console(stderr=True, quiet=quiet)
    report = scan(config, out, log=console.print)
    out = Path(out)
    files = {"report.json": out / "report.json", "report.md": out / "report.md",
             "report.html": out / "report.html"}  # fmt: skip
    if not quiet:
        print_console_summary(report, Console(), files=files)
    from wbsafe.verdict import Verdict

    report["exit_code"] = Verdict(report["decision"]["verdict"]).exit_code
    return report


def scan_many(
    base: str | Path,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    stack: Sequence[Sequence[str | Path]] = (),
    template: Any = None,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Vet many adapters for one base: one sub-report each, a summary table (MD + CSV).

    Base-side work is shared: the refusal directions are fitted once and re-used from the
    directions cache for every adapter. One adapter's failure (a bad file) is recorded in
    the summary and the rest go on. ``stack`` adds stacked combinations (lists of adapters).
    """
    import csv
    import dataclasses

    from rich.console import Console

    from wbsafe.config import ScanConfig
    from wbsafe.errors import WbsafeError
    from wbsafe.report.render import write_text_atomic

    console = Console(stderr=True, quiet=quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = template or ScanConfig(base=str(base))
    jobs: list[tuple[str, tuple[str, ...]]] = [(Path(a).name, (str(a),)) for a in adapters]
    jobs += [("+".join(Path(a).name for a in combo), tuple(str(a) for a in combo))
             for combo in stack]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for name, combo in jobs:
        console.rule(f"[bold]{name}")
        cfg = dataclasses.replace(base_cfg, base=str(base), tuned=None, adapters=combo)
        try:
            report = run_scan(cfg, out / name, quiet=quiet)
        except WbsafeError as exc:
            console.print(f"[red]{name}: {exc}")
            rows.append({"adapter": name, "verdict": "ERROR", "top_reason": str(exc),
                         "report": ""})  # fmt: skip
            continue
        reasons = report["decision"]["reasons"]
        top = max(reasons, key=lambda r: verdict.rank(r["verdict"]), default=None)
        rows.append({
            "adapter": name,
            "verdict": report["decision"]["verdict"],
            "top_reason": top["message"] if top else "",
            "report": str(Path(name) / "report.html"),
        })  # fmt: skip
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["adapter", "verdict", "top_reason", "report"])
        writer.writeheader()
        writer.writerows(rows)
    md = [
        "# wbsafe scan-many",
        "",
        f"base: `{base}`",
        "",
        "| adapter | verdict | top reason | report |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        reason = r["top_reason"].replace("|", "\\|").replace("\n", " ")
        md.append(f"| {r['adapter']} | **{r['verdict']}** | {reason} | {r['report']} |")
    write_text_atomic(out / "summary.md", "\n".join(md) + "\n")
    return rows


def demo(out: str | Path = "results/demo", seed: int = 0) -> list[dict[str, Any]]:
    """The README's main job: build the tiny organisms, scan three of them, compare with truth."""
    from wbsafe.config import RuntimeConfig, ScanConfig

    orgs, _ = build_organisms(seed=seed)
    by = {o.name: o for o in orgs}
    out = Path(out)
    rows = []
    for name in ("benign", "harmful", "backdoor"):
        org = by[name]
        # one thread: the tiny models are latency-bound and run faster without contention
        cfg = ScanConfig(base=by["base"].path, tuned=org.path, seed=seed,
                         runtime=RuntimeConfig(threads=1))  # fmt: skip
        report = run_scan(cfg, out / name, quiet=True)
        verdict = report["decision"]["verdict"]
        expected = org.expected_verdict or ""
        ok = verdict in (("DEPLOY", "MONITOR") if expected == "DEPLOY" else (expected,))
        rows.append({"organism": name, "planted": org.planted, "expected": expected,
                     "verdict": verdict, "match": ok, "report": str(out / name / "report.html"),
                     "reasons": [r["message"] for r in report["decision"]["reasons"]
                                 if r["verdict"] == verdict][:3]})  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------
# behaviour


def load_pair(
    base: str | Path, tuned: str | Path | None, adapters: Sequence[str | Path], runtime: Any
) -> tuple[Any, Any]:
    """(tuned, base): base is None when the tuned model is base + adapters (one object)."""
    from wbsafe.io.models import is_adapter_dir, load_model

    adapter_list = [str(a) for a in adapters]
    if tuned is not None and is_adapter_dir(tuned):
        adapter_list.insert(0, str(tuned))
        tuned = None
    if adapter_list:
        return load_model(base, adapter_list, runtime), None
    assert tuned is not None
    return load_model(tuned, runtime=runtime), load_model(base, runtime=runtime)


def behavior_benchmark(
    base: str | Path,
    tuned: str | Path | None,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    prompts: str = "auto",
    judge: str = "string",
    samples: int | None = None,
    temperature: float = 1.0,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
) -> Any:
    """Run the behavioural benchmark and write its JSON to ``out``."""
    from wbsafe.analyses.behaviour.benchmark import run_behavior
    from wbsafe.capture.generation import SamplingConfig
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.pipeline.scan import plan_prompts

    runtime = RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype))
    tuned_m, base_m = load_pair(base, tuned, adapters, runtime)
    plan = plan_prompts(ScanConfig(base=str(base), prompts=prompts, max_prompts=None),
                        tuned_m.tokenizer)  # fmt: skip
    sampling = SamplingConfig(n_samples=samples, temperature=temperature) if samples else None
    result = run_behavior(
        tuned_m, plan.eval_harmful + plan.eval_harmless, judge=judge, base_loaded=base_m,
        sampling=sampling, seeds=seeds, max_new_tokens=max_new_tokens, batch_size=batch_size,
    )  # fmt: skip
    write_json_atomic(out, {"manifest": run_manifest(seed=seeds[0]), **result.to_dict()})
    return result


# ---------------------------------------------------------------------------------------
# probes


def probe_fit(
    base: str | Path, out: str | Path, *, prompts: str = "auto", seed: int = 0,
    device: str = "auto", dtype: str = "auto",
) -> str:  # fmt: skip
    """Fit the base's refusal directions and save them to ``out``; returns a summary line."""
    from wbsafe.analyses.refusal.directions import fit_base_directions, save_fit
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.io.models import load_model
    from wbsafe.pipeline.scan import plan_prompts

    loaded = load_model(
        base, runtime=RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype))
    )
    cfg = ScanConfig(base=str(base), prompts=prompts, seed=seed)
    plan = plan_prompts(cfg, loaded.tokenizer)
    fit = fit_base_directions(
        loaded, plan.fit_harmful, plan.fit_harmless, seed=seed,
        causal_top_k=cfg.probe_causal_top_k, n_causal=cfg.probe_n_causal,
    )  # fmt: skip
    path = save_fit(fit, out)
    sel = fit.selected()
    return (f"refusal direction at layer {fit.layer} ({fit.position}): held-out AUROC "
            f"{sel.auroc}, bypass {sel.bypass}, induce {sel.induce}; saved to {path}")  # fmt: skip


def probe_compare(
    base: str | Path, tuned: str | Path | None, adapters: Sequence[str | Path], out: str | Path,
    *, prompts: str = "auto", directions: str | Path | None = None, seed: int = 0,
    device: str = "auto", dtype: str = "auto",
) -> str:  # fmt: skip
    """Fit or re-use the base's directions, compare the tuned model, write JSON and plots."""
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.pipeline.scan import Models, probes_stage

    cfg = ScanConfig(
        base=str(base), tuned=str(tuned) if tuned else None,
        adapters=tuple(str(a) for a in adapters), prompts=prompts, seed=seed,
        directions_cache=str(directions) if directions else None,
        runtime=RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype)),
    )  # fmt: skip
    models = Models(cfg)
    from wbsafe.pipeline.scan import plan_prompts

    plan = plan_prompts(cfg, models.tuned().tokenizer)
    out = Path(out)
    stage = probes_stage(cfg, models, plan, out.parent / f"{out.stem}_plots")
    write_json_atomic(out, {"manifest": run_manifest(seed=seed, config=cfg), **stage.result})
    return stage.summary


# ---------------------------------------------------------------------------------------
# triggers


def trigger_hunt(
    base: str | Path, tuned: str | Path | None, adapters: Sequence[str | Path], out: str | Path,
    *, prompts: str = "auto", candidates: str | Path | None = None, use_builtin: bool = True,
    max_len: int | None = None, budget: int | None = None, seed: int = 0, device: str = "auto",
    dtype: str = "auto",
) -> Any:  # fmt: skip
    """Rank and verify trigger candidates; embedding rows that moved far seed the search.

    The same prompts and search settings as the scan's trigger stage (``ScanConfig``
    defaults unless ``max_len``/``budget`` are given).
    """
    import dataclasses

    from wbsafe.analyses.triggers.hunt import hunt_triggers, read_candidate_list
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.io.models import is_adapter_dir
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.pipeline.scan import hunt_prompts, hunt_settings, plan_prompts

    runtime = RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype))
    config = ScanConfig(base=str(base), prompts=prompts, seed=seed)
    if max_len is not None:
        config = dataclasses.replace(config, trigger_max_len=max_len)
    if budget is not None:
        config = dataclasses.replace(config, trigger_budget=budget)
    tuned_m, base_m = load_pair(base, tuned, adapters, runtime)
    plan = plan_prompts(config, tuned_m.tokenizer)
    emb: list[tuple[int, float]] = []
    if tuned is not None and not is_adapter_dir(tuned) and not adapters:
        # only the embedding rows are needed: no spectra
        rows = weight_diff(base, tuned, spectra=False, progress=False).embedding
        emb = [(t.token_id, t.z) for t in rows.top[:32]] if rows else []
    result = hunt_triggers(
        tuned_m, base_m, *hunt_prompts(config, plan), embedding_candidates=emb,
        user_candidates=read_candidate_list(candidates) if candidates else (),
        use_builtin=use_builtin, **hunt_settings(config),
    )  # fmt: skip
    write_json_atomic(out, {"manifest": run_manifest(seed=seed), **result.to_dict()})
    return result


def corrected_rates(result: Any, judge_eval_json: str | Path, out: str | Path) -> list[str]:
    """Harmful refusal rates corrected for judge error (Rogan-Gladen), added to ``out``'s JSON.

    ``judge_eval_json`` is what ``wbsafe judge-eval --out`` wrote: the judge's sensitivity
    (refusals it catches) and specificity (compliances it passes) on human labels.
    """
    from wbsafe.capture.judges import correct_rate
    from wbsafe.errors import WbsafeError
    from wbsafe.io.serialize import read_json, write_json_atomic

    ev = read_json(judge_eval_json)
    try:
        sens, spec = float(ev["sensitivity"]["rate"]), float(ev["specificity"]["rate"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WbsafeError("not a judge-eval result (no sensitivity/specificity)",
                          judge_eval_json) from exc  # fmt: skip
    corrected: dict[str, float] = {}
    lines = [f"judge error from {judge_eval_json}: sensitivity {sens:.3f}, specificity {spec:.3f}"]
    for side, summary in (("base", result.base), ("tuned", result.tuned)):
        observed = summary.harmful.rate
        if observed is None:
            continue
        corrected[side] = correct_rate(observed, sens, spec)
        lines.append(f"  {side}: observed harmful refusal {observed:.3f} -> corrected "
                     f"{corrected[side]:.3f}")  # fmt: skip
    doc = read_json(out)
    doc["judge_corrected"] = {"judge_eval": str(judge_eval_json), "sensitivity": sens,
                              "specificity": spec, "harmful_refusal": corrected}  # fmt: skip
    write_json_atomic(out, doc)
    return lines
