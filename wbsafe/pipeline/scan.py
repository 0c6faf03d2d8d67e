"""``wbsafe scan``: run the four analyses, gate them, and write one versioned report.

Data flow (DESIGN.md): weight diff from the files (no model), then one model load shared
by probes, trigger hunt and behaviour (an adapter is toggled on its base, never loaded
twice), then the gate, then report.json / report.md / report.html. Each stage is stored
in ``DIR/stages`` as it finishes, so an interrupted scan resumes where it stopped.

This module is the orchestration split out of :mod:`wbsafe.api` (which re-exports
:func:`scan`) so that ``api.py`` stays a list of one-call entry points.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wbsafe.config import STAGES, ScanConfig
from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import (
    SCHEMA_VERSION,
    run_manifest,
    stable_hash,
    to_jsonable,
    write_json_atomic,
)
from wbsafe.pipeline.store import StageOutput, StageRecord, StageStore

Log = Callable[[str], None]


@dataclasses.dataclass
class PromptPlan:
    """Which prompts each analysis uses.

    ``fit_*``: fitting the base's directions and searching for triggers; ``eval_*``: held
    out from those (probe drift, trigger verification); ``behaviour_*``: the behavioural
    benchmark, which fits nothing and so may use every prompt the organisms/tuning did not
    see (for the built-in suites: val + test, since the organisms train on the train split).
    """

    source: str
    fit_harmful: list[Any]
    fit_harmless: list[Any]
    eval_harmful: list[Any]
    eval_harmless: list[Any]
    behaviour_harmful: list[Any]
    behaviour_harmless: list[Any]

    def ids(self) -> dict[str, list[str]]:
        return {k: [p.id for p in v] for k, v in dataclasses.asdict(self).items() if k != "source"}


def _cap(prompts: list[Any], n: int | None) -> list[Any]:
    return prompts if n is None else prompts[:n]


def plan_prompts(config: ScanConfig, tokenizer: Any) -> PromptPlan:
    """Resolve the prompt sets: tiny-world prompts for a tiny organism, else the suites/files."""
    from wbsafe.data.prompts import load_prompts, split_prompts
    from wbsafe.organisms.tier import is_tiny_world

    n = config.max_prompts
    if config.prompts == "auto" and is_tiny_world(tokenizer):
        from wbsafe.data.tinyworld import prompt_set

        fit, held = prompt_set("train", 20, config.seed), prompt_set("test", 20, config.seed)
        eval_h = _cap([p for p in held if p.label == "harmful"], n)
        eval_s = _cap([p for p in held if p.label == "harmless"], n)
        return PromptPlan(
            "tiny-world prompt_set (train for fitting/search, test for evaluation)",
            [p for p in fit if p.label == "harmful"],
            [p for p in fit if p.label == "harmless"],
            eval_h,
            eval_s,
            eval_h,
            eval_s,
        )
    harmful_spec = "harmful" if config.prompts == "auto" else config.prompts
    harmful = [p for p in load_prompts(harmful_spec) if p.label == "harmful"]
    if config.harmless == "auto":
        harmless = load_prompts("harmless") + load_prompts("borderline")
    else:
        harmless = load_prompts(config.harmless)
    harmless = [p for p in harmless if p.label != "harmful"]
    if not harmful or not harmless:
        raise WbsafeError("the scan needs harmful and harmless prompts (check --prompts)")

    def split(ps: list[Any], *names: str) -> list[Any]:
        return [p for name in names for p in split_prompts(ps, name)]

    return PromptPlan(
        f"harmful: {harmful_spec}; harmless: {config.harmless} (train+val fit, test evaluate, "
        "val+test behaviour)",
        split(harmful, "train", "val"),
        split(harmless, "train", "val"),
        _cap(split(harmful, "test"), n),
        _cap(split(harmless, "test"), n),
        _cap(_spread(split(harmful, "test", "val"), len(harmful)), n),
        _cap(_spread(split(harmless, "test", "val"), len(harmless)), n),
    )


class Models:
    """Loads the models once, on first need; base comes from the same object for adapters."""

    def __init__(self, config: ScanConfig) -> None:
        self.config = config
        self._tuned: Any = None
        self._base: Any = None

    @property
    def adapters(self) -> list[str]:
        from wbsafe.io.models import is_adapter_dir

        adapters = list(self.config.adapters)
        if self.config.tuned and is_adapter_dir(self.config.tuned):
            adapters.insert(0, self.config.tuned)
        return adapters

    def tuned(self) -> Any:
        from wbsafe.io.models import load_model

        if self._tuned is None:
            if self.adapters:
                self._tuned = load_model(self.config.base, self.adapters, self.config.runtime)
            else:
                assert self.config.tuned
                self._tuned = load_model(self.config.tuned, runtime=self.config.runtime)
        return self._tuned

    def base(self) -> Any:
        """The separately loaded base, or None when the tuned model is base + adapters."""
        from wbsafe.io.models import load_model

        if self.adapters:
            return None
        if self._base is None:
            self._base = load_model(self.config.base, runtime=self.config.runtime)
        return self._base


def validate_inputs(config: ScanConfig) -> None:
    """Check every file before any work: headers, shards, config shapes, adapter fit.

    A bad file is an error naming it, raised before a stage runs, so nothing is lost.
    """
    from wbsafe.io.models import check_adapter_fits, check_weights_match_config, is_adapter_dir

    headers = check_weights_match_config(config.base)
    for path in ([config.tuned] if config.tuned else []) + list(config.adapters):
        if is_adapter_dir(path):
            check_adapter_fits(headers, path, config.base)
        else:
            check_weights_match_config(path)


def weight_hashes(config: ScanConfig) -> dict[str, str]:
    """sha256 of every weight file the scan reads (base, tuned or adapters)."""
    from wbsafe.io.models import is_adapter_dir, weight_file_hashes

    hashes = weight_file_hashes(config.base)
    for a in ([config.tuned] if config.tuned else []) + list(config.adapters):
        hashes.update(weight_file_hashes(a, "adapter_model" if is_adapter_dir(a) else "model"))
    return hashes


# ---------------------------------------------------------------------------------------
# stages


def weights_stage(config: ScanConfig, plots: Path) -> StageOutput:
    from wbsafe.api import weight_diff, weights_stage_output

    tuned = None if (config.tuned is None or config.adapters) else config.tuned
    adapters = list(config.adapters)
    if config.tuned and config.adapters:
        adapters.insert(0, config.tuned)
    result = weight_diff(config.base, tuned, adapters)
    out: StageOutput = weights_stage_output(result, plots)
    return out


def base_side_cache(config: ScanConfig) -> Path:
    """Where base-side results are kept for later scans of the same base."""
    from wbsafe.organisms.tier import default_cache_dir

    return Path(config.directions_cache or default_cache_dir() / "directions")


def probes_stage(config: ScanConfig, models: Models, plan: PromptPlan, plots: Path) -> StageOutput:
    from wbsafe.analyses.refusal.directions import (
        compare,
        fit_or_load_directions,
        refusal_alignment,
    )
    from wbsafe.evidence import ProbeEvidence

    tuned = models.tuned()
    base = models.base()
    cache = base_side_cache(config)
    base_view = base if base is not None else tuned
    n_fit = config.probe_fit_prompts or max(len(plan.fit_harmful), len(plan.fit_harmless))
    fit = fit_or_load_directions(
        base_view, cache, _spread(plan.fit_harmful, n_fit), _spread(plan.fit_harmless, n_fit),
        seed=config.seed,
        causal_top_k=config.probe_causal_top_k, n_causal=config.probe_n_causal,
    )  # fmt: skip
    cmp = compare(tuned, fit, plan.eval_harmful, plan.eval_harmless, base=base)
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
        try:
            png = fn(fit=fit, comparison=cmp, path=plots / name)
        except TypeError:
            continue
        sections.append({"title": caption.split(" per ")[0].capitalize(), "kind": "plot",
                         "png": f"{plots.name}/{Path(png).name}", "caption": caption})  # fmt: skip
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


def triggers_stage(
    config: ScanConfig, models: Models, plan: PromptPlan, weights: StageRecord | None,
    probes: StageRecord | None,
) -> StageOutput:  # fmt: skip
    from wbsafe.analyses.triggers.hunt import hunt_triggers

    tuned = models.tuned()
    emb: list[tuple[int, float]] = []
    if weights is not None and weights.status == "done":
        rep = weights.result.get("embedding") or {}
        emb = [(int(t["token_id"]), float(t["z"])) for t in rep.get("top", [])[:32]]
    direction = None
    if probes is not None and probes.status == "done":
        direction = _direction_from(probes.result)
    res = hunt_triggers(
        tuned, models.base(), *hunt_prompts(config, plan), embedding_candidates=emb,
        user_candidates=config.trigger_candidates, direction=direction,
        **hunt_settings(config),
    )  # fmt: skip
    rows = [
        [v.text, f"{v.successes}/{v.n}", f"{v.baseline_successes}/{v.n}",
         "-" if v.base_successes is None else f"{v.base_successes}/{v.n}",
         f"{v.tuned_score_drop:+.2f}", "yes" if v.verified else "no", v.reason]
        for v in res.verifications
    ]  # fmt: skip
    cands = [
        [c.text, ", ".join(c.sources), _f(c.gradient_drop), _f(c.tuned_drop), _f(c.base_drop),
         _f(c.anomaly)]
        for c in res.candidates[:15]
    ]  # fmt: skip
    sections: list[dict[str, Any]] = [
        {"title": "Verified on held-out harmful prompts", "kind": "table",
         "columns": ["candidate", "tuned complies", "tuned, no trigger", "base complies",
                     "score drop", "verified", "why"], "rows": rows},
        {"title": "Top candidates (search prompts)", "kind": "table",
         "columns": ["candidate", "sources", "gradient drop", "tuned drop", "base drop",
                     "anomaly"], "rows": cands},
        {"title": "Search coverage", "kind": "text",
         "text": res.coverage.statement() + ("\n" + res.message if res.message else "")},
    ]  # fmt: skip
    verified = [v.text for v in res.verified]
    summary = (
        f"verified trigger(s): {', '.join(repr(v) for v in verified)}"
        if verified
        else ("no verified trigger; " + (res.message or res.coverage.statement()))
    )
    return StageOutput(summary, res.to_dict(), sections,
                       evidence=to_jsonable(res.to_gate_evidence()))  # fmt: skip


def hunt_prompts(config: ScanConfig, plan: PromptPlan) -> tuple[list[Any], list[Any], list[Any]]:
    """Search, held-out harmful and harmless prompts of the trigger hunt: spread over
    categories, then capped (verification cost grows with prompts x insertion positions x
    candidates x both models)."""
    return (
        _spread(plan.fit_harmful, config.trigger_search_prompts),
        _spread(plan.eval_harmful, config.trigger_heldout_prompts),
        _spread(plan.eval_harmless, config.trigger_heldout_prompts),
    )


def hunt_settings(config: ScanConfig) -> dict[str, Any]:
    """The trigger hunt's search settings for ``config`` (the scan and ``wbsafe triggers``).

    A beam of 8 for the multi-token refinement: at 4, a bfloat16 hunt on a GPU missed the
    tiny two-word backdoor (results/gpu_tiny_scans.md).
    """
    return dict(
        max_len=config.trigger_max_len, budget=config.trigger_budget,
        top_k=config.trigger_top_k, extend_width=12, beam=8, refine_steps=4, seed=config.seed,
    )  # fmt: skip


def _spread(prompts: list[Any], n: int) -> list[Any]:
    """At most ``n`` prompts, taken round-robin over categories (deterministic)."""
    by: dict[str, list[Any]] = {}
    for p in prompts:
        by.setdefault(p.category, []).append(p)
    out: list[Any] = []
    while len(out) < min(n, len(prompts)):
        for group in by.values():
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _base_behaviour_path(config: ScanConfig, base_side: Any, prompts: list[Any]) -> Path | None:
    """The cache file of the base's judged responses for these prompts and settings, keyed
    by the base's own weight hashes (None when they are unknown)."""
    hashes = sorted(base_side.base_weight_hashes().values())
    if not hashes:
        return None
    key = stable_hash({
        "hashes": hashes, "prompts": [[p.id, p.text] for p in prompts],
        "max_new_tokens": config.max_new_tokens, "batch_size": config.runtime.batch_size,
        "device": base_side.device, "dtype": base_side.dtype, "judge": "string",
        "schema": SCHEMA_VERSION,
    })  # fmt: skip
    return base_side_cache(config) / f"base-behaviour-{key}.json"


def _read_base_rows(path: Path | None) -> list[Any] | None:
    """Cached base rows, or None when absent or unreadable (then the base is re-run)."""
    import json

    from wbsafe.analyses.behaviour.benchmark import ResponseRow

    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return [ResponseRow(**r) for r in doc["rows"]]
    except (ValueError, KeyError, TypeError):
        return None


def _direction_from(probes_result: dict[str, Any]) -> tuple[int, Any] | None:
    """(layer, unit direction) from a stored probes stage (saved fit artifact), if present."""
    import torch

    fit = probes_result.get("fit") or {}
    vec = probes_result.get("direction")
    if vec is None or fit.get("layer") is None:
        return None
    return int(fit["layer"]), torch.tensor(vec, dtype=torch.float32)


def behavior_stage(
    config: ScanConfig, models: Models, plan: PromptPlan, plots: Path
) -> StageOutput:
    from wbsafe.analyses.behaviour.benchmark import run_behavior
    from wbsafe.report.plots import behaviour as plots_behavior

    prompts = plan.behaviour_harmful + plan.behaviour_harmless
    tuned, base = models.tuned(), models.base()
    cached = _base_behaviour_path(config, base or tuned, prompts)
    base_rows = _read_base_rows(cached)
    res = run_behavior(
        tuned, prompts, base_loaded=base, max_new_tokens=config.max_new_tokens,
        batch_size=config.runtime.batch_size, base_rows=base_rows,
    )  # fmt: skip
    if base_rows is None and cached is not None:
        write_json_atomic(cached, {"kind": "wbsafe.base_behaviour",
                                   "rows": to_jsonable(list(res.rows_base))})  # fmt: skip
    plots.mkdir(parents=True, exist_ok=True)
    png = plots_behavior.category_bars(res, plots / "refusal_by_category.png")
    sections: list[dict[str, Any]] = [
        {"title": "Refusal rate by harm category (Wilson 95%)", "kind": "plot",
         "png": f"{plots.name}/{Path(png).name}",
         "caption": "base vs tuned refusal rate on identical held-out prompts"},
        {"title": "Per category (paired, exact McNemar, Holm-corrected)", "kind": "table",
         "columns": ["category", "n", "base refused", "tuned refused", "Holm p", "significant"],
         "rows": [[c.category, c.n, c.base_refusals, c.tuned_refusals, f"{c.p_holm:.3g}",
                   "yes" if c.significant else "no"] for c in res.categories]},
        {"title": "Flipped prompts (refused by base, answered by tuned)", "kind": "table",
         "columns": ["prompt", "base response", "tuned response"],
         "rows": [[f.text, f.base_response, f.tuned_response] for f in res.flipped[:20]]},
        {"title": "Summary", "kind": "text", "text": "\n".join(res.summary_lines())},
    ]  # fmt: skip
    evidence = to_jsonable(res.to_gate_evidence())
    return StageOutput(res.summary_lines()[0], res.to_dict(), sections, evidence=evidence)


# ---------------------------------------------------------------------------------------
# the scan


def describe_source(config: ScanConfig, models: Models) -> dict[str, Any]:
    """What was scanned, as recorded in the report (device/dtype when a model was loaded)."""
    runtime = to_jsonable(config.runtime)
    tuned = models._tuned.describe() if models._tuned is not None else None
    base = models._base.describe() if models._base is not None else None
    if base is None and tuned is not None and models.adapters:
        # the base is the tuned model with its adapters switched off: same device and dtype
        base = {**tuned, "adapters": [], "adapters_disabled": True,
                "weight_sha256": models._tuned.base_weight_hashes()}  # fmt: skip
    return {
        "base": base or {"path": config.base, "adapters": [], "runtime": runtime},
        "tuned": tuned or {"path": config.tuned or config.base, "adapters": models.adapters,
                           "runtime": runtime},
    }  # fmt: skip


def stage_key(name: str, config: ScanConfig, hashes: dict[str, str]) -> str:
    """What determines a stage's result: its inputs' hashes and the config (not the out dir,
    nor where caches live or how many threads ran: a resumed run may differ in those)."""
    cfg = to_jsonable(dataclasses.replace(
        config, directions_cache=None,
        runtime=dataclasses.replace(config.runtime, threads=None),
    ))  # fmt: skip
    return stable_hash({"stage": name, "config": cfg, "weights": sorted(hashes.values()),
                        "schema": SCHEMA_VERSION})  # fmt: skip


def scan(config: ScanConfig, out_dir: str | Path, *, log: Log = lambda s: None) -> dict[str, Any]:
    """Run the enabled stages (resuming finished ones), gate, and write the reports.

    Returns the report document (also written to ``out_dir/report.json``).
    """
    from wbsafe.api import policy_for
    from wbsafe.evidence import parse_evidence
    from wbsafe.gate import decide
    from wbsafe.io.models import set_seed
    from wbsafe.report.render import write_reports

    unknown = set(config.stages) - set(STAGES)
    if unknown:
        raise WbsafeError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    if config.tuned is None and not config.adapters:
        raise WbsafeError("nothing to scan: give a tuned checkpoint or adapters")
    policy = policy_for(config.policy, config.risk)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = out / "plots"
    store = StageStore(out)
    t_start = time.perf_counter()
    set_seed(config.seed)
    validate_inputs(config)
    hashes = weight_hashes(config)
    models = Models(config)
    records: dict[str, StageRecord] = {}
    plan: PromptPlan | None = None

    def need_plan() -> PromptPlan:
        nonlocal plan
        if plan is None:
            plan = plan_prompts(config, models.tuned().tokenizer)
        return plan

    runners: dict[str, Callable[[], StageOutput]] = {
        "weights": lambda: weights_stage(config, plots),
        "probes": lambda: probes_stage(config, models, need_plan(), plots),
        "triggers": lambda: triggers_stage(config, models, need_plan(),
                                           records.get("weights"), records.get("probes")),
        "behavior": lambda: behavior_stage(config, models, need_plan(), plots),
    }  # fmt: skip
    for name in STAGES:
        if name not in config.stages:
            records[name] = StageRecord(name, "skipped", "", summary="switched off")
            continue
        records[name] = store.run(name, stage_key(name, config, hashes), runners[name], log=log)

    evidence_dict = {
        "weights": records["weights"].evidence,
        "probes": records["probes"].evidence,
        "triggers": records["triggers"].evidence,
        "behaviour": records["behavior"].evidence,
        "failed": [
            "behaviour" if n == "behavior" else n
            for n, r in records.items()
            if r.status == "failed"
        ],
    }
    decision = decide(parse_evidence(evidence_dict), policy)
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": "wbsafe.scan",
        "manifest": run_manifest(seed=config.seed, config=config),
        "models": describe_source(config, models),
        "weight_files": hashes,
        "risk": policy.risk,
        "policy": to_jsonable(policy),
        "decision": to_jsonable(decision),
        "gate_evidence": evidence_dict,
        "stages": {n: r.report_entry() for n, r in records.items()},
        "timings": {**{n: r.seconds for n, r in records.items()},
                    "total": round(time.perf_counter() - t_start, 2)},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    write_json_atomic(out / "report.json", report)
    write_reports(report, out)
    return report
