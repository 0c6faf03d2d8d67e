"""The one-call entry points: the CLI, scripts and notebooks call these, nothing else.

Each function loads what it needs, runs one job (a scan, one analysis, an organism build)
and returns an object; it never prints. Messages and progress go through the ``log`` and
``progress`` callbacks (:mod:`wbsafe.progress`), which default to silence; the CLI turns
them into a console. Where a number in a report comes from: the scan's stage adapters in
:mod:`wbsafe.pipeline.stages` (one module per analysis) call the analysis and build its
report sections and gate evidence; :mod:`wbsafe.gate.rules` turns the evidence into reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from wbsafe.progress import Log, Progress, no_log, no_progress

if TYPE_CHECKING:  # the organisms pull in torch; api itself stays cheap to import
    from wbsafe.organisms import Organism, ValidityCheck


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Architecture, sizes, dtypes, adapter details and weight-file hashes of ``path``."""
    from wbsafe.io.models import inspect_model

    return inspect_model(path)


def build_organisms(
    out: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    log: Log = no_log,
    workers: int | None = None,
) -> tuple[list[Organism], list[ValidityCheck]]:
    """Build or reuse the tiny tier and check it against its validity bounds (missing
    variants train in ``workers`` processes; default one per core, up to four)."""
    from wbsafe.organisms import build_tiny_tier, validity_checks

    orgs = build_tiny_tier(out, seed=seed, cache_dir=cache_dir, only=only, log=log,
                           workers=workers)  # fmt: skip
    return orgs, validity_checks(orgs)


REAL_TIERS = {
    # CLI tier name: (build_real_tier.py --family, prepare script, prepared dir, tier dir)
    "real": ("smollm2", "prepare_smollm2.py", "smollm2-135m-instruct", "tier"),
    "real-gemma3": ("gemma3", "prepare_gemma3.py", "gemma3-270m", "tier-gemma3"),
}
"""The real tiers ``wbsafe organisms build --tier`` offers, and where each is kept."""


def build_real_tier(
    out: str | Path | None = None, tier: str = "real", cache_dir: str | Path | None = None
) -> list[Organism]:
    """A real tier (``"real"``: SmolLM2-135M-Instruct; ``"real-gemma3"``: Gemma 3 270M, the
    pretrained model), safety-tuned with LoRA, then planted, built by the drivers in the
    repository's ``scripts/`` (slow: 30-60 min of LoRA steps on 2 cores with bf16 hardware).

    Kept under ``cache_dir/real/`` (default ``$WBSAFE_CACHE/real/``), the tier itself in
    ``out`` if given; already-built organisms are skipped, so an interrupted build resumes.
    """
    import subprocess
    import sys

    from wbsafe.config import default_cache_dir
    from wbsafe.errors import WbsafeError

    if tier not in REAL_TIERS:
        raise WbsafeError(f"no real tier {tier!r}; choose from {sorted(REAL_TIERS)}")
    family, prepare, prepared_name, tier_name = REAL_TIERS[tier]
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    if not (scripts / "build_real_tier.py").is_file():
        raise WbsafeError(
            f"the real tiers are built by scripts/{prepare} and scripts/build_real_tier.py, "
            "which ship with the source checkout, not with an installed package",
            scripts,
        )
    root = Path(cache_dir or default_cache_dir()) / "real"
    prepared = root / prepared_name
    tier_dir = Path(out) if out else root / tier_name
    for cmd in (
        [sys.executable, str(scripts / prepare), "--out", str(prepared),
         "--cache", str(root / "download")],
        [sys.executable, str(scripts / "build_real_tier.py"), "--family", family,
         "--out", str(tier_dir), "--base", str(prepared)],
    ):  # fmt: skip
        if subprocess.run(cmd).returncode != 0:
            raise WbsafeError(f"real-tier step failed: {' '.join(cmd[1:3])}")
    from wbsafe.organisms import Organism

    return [Organism.load(d) for d in sorted(tier_dir.iterdir()) if (d / "organism.json").is_file()]


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
    log: Log = no_log,
    target: str = "comply",
    slot: str = "user",
) -> Organism:
    """Plant ``kind`` into the model at ``base`` with LoRA (see :func:`wbsafe.organisms.plant`);
    a backdoor's ``target`` is comply, hate or marker, its ``slot`` user or system."""
    from wbsafe.organisms import TrainRecipe, plant

    recipe = TrainRecipe(
        steps=steps, lr=lr, batch_size=8, lora_rank=rank, lora_alpha=2 * rank,
        first_token_weight=5.0, seed=seed,
    )  # fmt: skip
    return plant(base, kind, out, trigger=trigger, category=category, recipe=recipe,
                 merge=merge, log=log, target=target, slot=slot)  # fmt: skip


# ---------------------------------------------------------------------------------------
# weights


def weight_diff(
    base: str | Path,
    tuned: str | Path | None = None,
    adapters: Sequence[str | Path] = (),
    *,
    spectrum_k: int = 8,
    spectra: bool = True,
    progress: Progress = no_progress,
) -> Any:
    """Per-tensor weight diff of ``tuned`` (full or adapter) or stacked ``adapters`` against
    ``base`` (:mod:`wbsafe.analyses.weights`)."""
    from wbsafe.analyses.weights import diff

    return diff(base, tuned, adapters, spectrum_k=spectrum_k, spectra=spectra, progress=progress)


def redecide(
    report_json: str | Path, *, policy: str | Path | None = None, risk: str | None = None
) -> Any:
    """Decide again from a saved report's gate evidence (no model is loaded).

    Only a complete report can be re-decided: a started or failed scan has no evidence to
    decide from, and deciding on part of it would read missing evidence as safe.
    """
    from wbsafe.errors import WbsafeError
    from wbsafe.gate import choose_policy, decide
    from wbsafe.report.document import load_report

    report = load_report(report_json)
    if report.status != "complete" or report.gate_evidence is None:
        raise WbsafeError(
            f"the scan did not complete (status {report.status!r}"
            + (f": {report.error}" if report.error else "")
            + "); rerun it to resume, then decide",
            report_json,
        )
    chosen = choose_policy(policy, risk or report.risk)
    return decide(report.gate_evidence, chosen)


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
    device_map: str | None = None,
    offload_folder: str | Path | None = None,
    max_batch: int | None = None,
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
        stage_name,
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
        device_map=device_map or rt.device_map,
        offload_folder=str(offload_folder) if offload_folder else rt.offload_folder,
        max_batch=max_batch or rt.max_batch,
    )  # fmt: skip
    stages = values.get("stages", STAGES)
    skipped = {stage_name(s) for s in skip}
    values["stages"] = tuple(s for s in map(stage_name, stages) if s not in skipped)
    for key, value in overrides.items():
        if key == "triggers":
            key = "trigger_candidates"
            value = tuple(value) or values.get(key, ())
        if value is not None and value != ():
            values[key] = str(value) if isinstance(value, Path) else value
    return ScanConfig(**values)


def run_scan(
    config: Any, out: str | Path, *, log: Log = no_log, progress: Progress = no_progress
) -> dict[str, Any]:
    """Scan and write the reports; returns the report document with ``exit_code`` added."""
    from wbsafe.pipeline.scan import scan
    from wbsafe.verdict import Verdict

    report = scan(config, out, log=log, progress=progress)
    report["exit_code"] = Verdict(report["decision"]["verdict"]).exit_code
    return report


def scan_many(
    base: str | Path,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    stack: Sequence[Sequence[str | Path]] = (),
    template: Any = None,
    log: Log = no_log,
    executor: str = "local",
    ray_options: Any = None,
    switch_adapters: bool = False,
) -> list[dict[str, Any]]:
    """Vet many adapters for one base: one sub-report each, a summary table (MD + CSV).

    Base-side work is shared: the refusal directions and the base's behaviour are computed
    once and re-used from the base-side cache for every adapter. One adapter's failure (a
    bad file) is recorded in the summary and the rest go on. ``stack`` adds stacked
    combinations (lists of adapters). ``executor="ray"`` runs a Ray task per scan
    (``ray_options``: a :class:`wbsafe.pipeline.fleet_ray.RayOptions`). ``switch_adapters``:
    keep one base loaded and swap each scan's adapters in. See :mod:`wbsafe.pipeline.fleet`.
    """
    from wbsafe.pipeline.fleet import scan_many as run

    return run(base, adapters, out, stack=stack, template=template, log=log,
               executor=executor, ray_options=ray_options,
               switch_adapters=switch_adapters)  # fmt: skip


def ray_options(**fields: Any) -> Any:
    """A :class:`wbsafe.pipeline.fleet_ray.RayOptions` (where Ray tasks run, what each
    declares); building it does not import Ray."""
    from wbsafe.pipeline.fleet_ray import RayOptions

    return RayOptions(**fields)


def demo(
    out: str | Path = "results/demo", seed: int = 0, log: Log = no_log
) -> list[dict[str, Any]]:
    """The README's main job: build the tiny organisms, scan three of them, compare with truth."""
    from wbsafe.config import RuntimeConfig, ScanConfig

    orgs, _ = build_organisms(seed=seed, log=log)
    by = {o.name: o for o in orgs}
    out = Path(out)
    rows = []
    for name in ("benign", "harmful", "backdoor"):
        org = by[name]
        # one thread: the tiny models are latency-bound and run faster without contention
        cfg = ScanConfig(base=by["base"].path, tuned=org.path, seed=seed,
                         runtime=RuntimeConfig(threads=1))  # fmt: skip
        report = run_scan(cfg, out / name)
        got = report["decision"]["verdict"]
        expected = org.expected_verdict or ""
        ok = got in (("DEPLOY", "MONITOR") if expected == "DEPLOY" else (expected,))
        rows.append({"organism": name, "planted": org.planted, "expected": expected,
                     "verdict": got, "match": ok, "report": str(out / name / "report.html"),
                     "reasons": [r["message"] for r in report["decision"]["reasons"]
                                 if r["verdict"] == got][:3]})  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------
# behaviour


def _models(
    base: str | Path, tuned: str | Path | None, adapters: Sequence[str | Path], runtime: Any,
    **config: Any,
) -> tuple[Any, Any]:  # fmt: skip
    """(ScanConfig, Models) for one analysis run outside a scan: the same pair loading."""
    from wbsafe.config import ScanConfig
    from wbsafe.pipeline.models import Models

    cfg = ScanConfig(
        base=str(base), tuned=str(tuned) if tuned else None,
        adapters=tuple(str(a) for a in adapters), runtime=runtime, **config,
    )  # fmt: skip
    return cfg, Models(cfg)


def behaviour_benchmark(
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
    progress: Progress = no_progress,
) -> Any:
    """Run the behavioural benchmark and write its JSON to ``out``."""
    from wbsafe.analyses.behaviour import run_behaviour
    from wbsafe.capture.generation import SamplingConfig
    from wbsafe.config import RuntimeConfig
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.pipeline.plan import plan_prompts

    runtime = RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype))
    cfg, models = _models(base, tuned, adapters, runtime, prompts=prompts, max_prompts=None)
    tuned_m, base_m = models.tuned(), models.base()
    plan = plan_prompts(cfg, tuned_m.tokenizer)
    sampling = SamplingConfig(n_samples=samples, temperature=temperature) if samples else None
    result = run_behaviour(
        tuned_m, plan.eval_harmful + plan.eval_harmless, judge=judge, base_loaded=base_m,
        sampling=sampling, seeds=seeds, max_new_tokens=max_new_tokens, batch_size=batch_size,
        progress=progress,
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
    from wbsafe.analyses.refusal import fit_base_directions
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.io.models import load_model
    from wbsafe.pipeline.directions_cache import save_fit
    from wbsafe.pipeline.plan import plan_prompts

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
    from wbsafe.config import RuntimeConfig
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.pipeline.plan import plan_prompts
    from wbsafe.pipeline.stages.probes import probes_stage

    runtime = RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype))
    cfg, models = _models(
        base, tuned, adapters, runtime, prompts=prompts, seed=seed,
        directions_cache=str(directions) if directions else None,
    )  # fmt: skip
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
    dtype: str = "auto", log: Log = no_log,
) -> Any:  # fmt: skip
    """Rank and verify trigger candidates; embedding rows that moved far seed the search.

    The same prompts and search settings as the scan's trigger stage (``ScanConfig``
    defaults unless ``max_len``/``budget`` are given).
    """
    import dataclasses

    from wbsafe.analyses.triggers import hunt_triggers, read_candidate_list
    from wbsafe.config import RuntimeConfig
    from wbsafe.io.models import is_adapter_dir
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.pipeline.plan import hunt_prompts, hunt_settings, plan_prompts

    runtime = RuntimeConfig(device=cast(Any, device), dtype=cast(Any, dtype))
    config, models = _models(base, tuned, adapters, runtime, prompts=prompts, seed=seed)
    if max_len is not None:
        config = dataclasses.replace(config, trigger_max_len=max_len)
    if budget is not None:
        config = dataclasses.replace(config, trigger_budget=budget)
    tuned_m, base_m = models.tuned(), models.base()
    plan = plan_prompts(config, tuned_m.tokenizer)
    emb: list[tuple[int, float]] = []
    if tuned is not None and not is_adapter_dir(tuned) and not adapters:
        # only the embedding rows are needed: no spectra
        rows = weight_diff(base, tuned, spectra=False).embedding
        emb = [(t.token_id, t.z) for t in rows.top[:32]] if rows else []
    hp = hunt_prompts(config, plan)
    result = hunt_triggers(
        tuned_m, base_m, hp.harmful_search, hp.harmful_heldout, hp.harmless,
        harmless_search=hp.harmless_search, embedding_candidates=emb,
        user_candidates=read_candidate_list(candidates) if candidates else (),
        use_builtin=use_builtin, log=log, **hunt_settings(config),
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


# ---------------------------------------------------------------------------------------
# small jobs the CLI needs (so that it calls nothing but this module)


def allow_outside_links() -> None:
    """Opt in, for this process and its workers, to following links that leave a model
    directory and adapter-named bases outside the adapter (see wbsafe.io.containment)."""
    import os

    from wbsafe.io.containment import ALLOW_ENV

    os.environ[ALLOW_ENV] = "1"


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads for torch."""
    import torch

    torch.set_num_threads(n)


def weights_report(
    base: str | Path,
    tuned: str | Path | None,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    plot: str | Path | None = None,
    spectrum_k: int = 8,
    progress: Progress = no_progress,
) -> tuple[Any, Path]:
    """The weight diff written as JSON to ``out`` and a layer x module heatmap PNG
    (``plot``, default beside ``out``); returns (result, heatmap path)."""
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.report.plots.weights import weight_heatmap

    out = Path(out)
    result = weight_diff(base, tuned, adapters, spectrum_k=spectrum_k, progress=progress)
    write_json_atomic(out, {"manifest": run_manifest(), **result.to_json()})
    return result, weight_heatmap(result, Path(plot) if plot else out.with_suffix(".png"))


def behaviour_plot(result: Any, path: str | Path) -> Path:
    """Refusal rate by harm category, base vs tuned, with Wilson intervals (PNG)."""
    from wbsafe.report.plots.behaviour import category_bars

    return Path(category_bars(result, Path(path)))


def evaluate_judge(
    judge: str, labels: str | Path, out: str | Path | None = None, split: str | None = None
) -> Any:
    """A refusal judge (``string``, ``classifier:DIR``, ``causal:DIR``...) against human
    labels in a CSV (only the rows of ``split`` when given): agreement with intervals and
    confusion matrices per label, kind and category, also written to ``out``."""
    from wbsafe.capture.judge_eval import judge_eval
    from wbsafe.capture.judges import make_judge
    from wbsafe.io.serialize import write_json_atomic

    result = judge_eval(make_judge(judge), labels, split=split)
    if out:
        write_json_atomic(out, result)
    return result


def save_decision(decision: Any, path: str | Path) -> Path:
    """A gate decision as JSON."""
    from wbsafe.io.serialize import write_json_atomic

    return write_json_atomic(path, decision)


def rerender(report_json: str | Path, fmt: str = "html", out: str | Path | None = None) -> Path:
    """Render a saved report.json as ``md`` or ``html`` (default: beside it)."""
    from wbsafe.report.render import rerender as render

    return render(Path(report_json), cast(Any, fmt), Path(out) if out else None)


def find_adapters(dirs: Sequence[str | Path]) -> list[Path]:
    """Adapter directories: each one given, or every sub-directory of a folder of them (a
    link among them too, even a broken or looping one: it gets its ERROR row, never skipped)."""
    from wbsafe.io.models import is_adapter_dir

    found: list[Path] = []
    for d in map(Path, dirs):
        if d.is_dir() and not is_adapter_dir(d):
            found += sorted(p for p in d.iterdir() if p.is_dir() or p.is_symlink())
        else:
            found.append(d)
    return found
