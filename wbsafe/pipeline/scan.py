"""``wbsafe scan``: run the four analyses, gate them, and write one versioned report.

Data flow (docs/design.md): weight diff from the files (no model), then one model load shared
by probes, trigger hunt and behaviour (an adapter is toggled on its base, never loaded
twice), then the gate, then report.json / report.md / report.html. Each stage is stored
in ``DIR/stages`` as it finishes, so an interrupted scan resumes where it stopped, and
report.json is rewritten after each stage (``status`` ``started`` until the gate has
decided, ``failed`` with the error if the scan itself stopped on one).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.config import STAGES, ScanConfig
from wbsafe.errors import WbsafeError
from wbsafe.evidence import GateEvidence, parse_evidence
from wbsafe.gate import GatePolicy, choose_policy, decide
from wbsafe.io.serialize import (
    SCHEMA_VERSION,
    run_manifest,
    stable_hash,
    to_jsonable,
    write_json_atomic,
)
from wbsafe.pipeline.models import (
    Models,
    describe_source,
    named_base_notes,
    validate_inputs,
    weight_hashes,
)
from wbsafe.pipeline.plan import PromptPlan, cap_for_policy, plan_prompts
from wbsafe.pipeline.stages.behaviour import behaviour_stage
from wbsafe.pipeline.stages.probes import probes_stage
from wbsafe.pipeline.stages.triggers import triggers_stage
from wbsafe.pipeline.stages.weights import weights_stage
from wbsafe.pipeline.store import StageOutput, StageRecord, StageStore
from wbsafe.progress import Log, Progress, no_log, no_progress
from wbsafe.report.document import REPORT_KIND, ReportDocument, StageEntry, as_json

if TYPE_CHECKING:
    from wbsafe.io.adapter_switch import AdapterSwitcher


def stage_key(name: str, config: ScanConfig, hashes: dict[str, str]) -> str:
    """What determines a stage's result: its inputs' hashes and the config (not the out dir,
    nor where caches live or how many threads ran: a resumed run may differ in those)."""
    cfg = to_jsonable(dataclasses.replace(
        config, directions_cache=None,
        runtime=dataclasses.replace(config.runtime, threads=None),
    ))  # fmt: skip
    return stable_hash({"stage": name, "config": cfg, "weights": sorted(hashes.values()),
                        "schema": SCHEMA_VERSION})  # fmt: skip


def behaviour_samples(config: ScanConfig, policy: GatePolicy) -> int | None:
    """Sampled responses per prompt: the config's, else 4 when the policy requires sampling
    (a greedy benchmark would fail its ``require_sampling`` check), else None (greedy)."""
    if config.behaviour_samples is not None:
        return config.behaviour_samples
    return 4 if policy.behaviour.require_sampling else None


def scan(
    config: ScanConfig,
    out_dir: str | Path,
    *,
    log: Log = no_log,
    progress: Progress = no_progress,
    switcher: AdapterSwitcher | None = None,
) -> dict[str, Any]:
    """Run the enabled stages (resuming finished ones), gate, and write the reports.

    ``switcher``: an adapter scan takes its model from it (a base kept loaded across scans).

    Returns the report document's JSON form (also written to ``out_dir/report.json``).
    """
    from wbsafe.io.models import set_seed
    from wbsafe.report.render import write_reports

    unknown = set(config.stages) - set(STAGES)
    if unknown:
        raise WbsafeError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    if config.tuned is None and not config.adapters:
        raise WbsafeError("nothing to scan: give a tuned checkpoint or adapters")
    policy, capped, config = choose_policy(config.policy, config.risk), config, effective(config)
    if config is not capped:
        log(f"prompt cap raised from {capped.max_prompts} to {config.max_prompts}: the "
            f"{policy.name} policy needs {policy.behaviour.min_prompts} behaviour prompts")  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = out / "plots"
    store = StageStore(out)
    t_start = time.perf_counter()
    set_seed(config.seed)
    validate_inputs(config)
    for note in named_base_notes(config):
        log(f"note: {note}")
    hashes = weight_hashes(config)
    models = Models(config, switcher)
    records: dict[str, StageRecord] = {}
    plan: PromptPlan | None = None
    doc = ReportDocument(
        schema_version=SCHEMA_VERSION,
        kind=REPORT_KIND,
        status="started",
        manifest=run_manifest(seed=config.seed, config=config),
        weight_files=hashes,
        risk=policy.risk,
        policy=policy,
    )

    def save(**changes: Any) -> None:
        nonlocal doc
        doc = dataclasses.replace(
            doc,
            models=describe_source(config, models),
            stages={n: StageEntry(**r.report_entry()) for n, r in records.items()},
            timings={**{n: r.seconds for n, r in records.items()},
                     "total": round(time.perf_counter() - t_start, 2)},
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **changes,
        )  # fmt: skip
        write_json_atomic(out / "report.json", doc)

    def need_plan() -> PromptPlan:
        nonlocal plan
        if plan is None:
            plan = plan_prompts(config, models.tuned().tokenizer)
        return plan

    runners: dict[str, Callable[[], StageOutput]] = {
        "weights": lambda: weights_stage(config, plots, progress),
        "probes": lambda: probes_stage(config, models, need_plan(), plots),
        "triggers": lambda: triggers_stage(config, models, need_plan(), records.get("weights"),
                                           records.get("probes"), log=log),
        "behaviour": lambda: behaviour_stage(config, models, need_plan(), plots, progress,
                                             samples=behaviour_samples(config, policy)),
    }  # fmt: skip
    save()
    try:
        for name in STAGES:
            if name not in config.stages:
                records[name] = StageRecord(name, "skipped", "", summary="switched off")
                continue
            records[name] = store.run(name, stage_key(name, config, hashes), runners[name], log=log)
            save()
        evidence = gate_evidence(records)
        decision = decide(evidence, policy)
    except BaseException as exc:  # Ctrl-C included: the document says the scan stopped
        save(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    save(status="complete", decision=decision, gate_evidence=evidence)
    report = as_json(doc)
    write_reports(report, out)
    return report


def effective(config: ScanConfig) -> ScanConfig:
    """The config a scan runs (and keys its stages) with: the prompt cap raised to the
    policy's need."""
    policy = choose_policy(config.policy, config.risk)
    return cap_for_policy(config, policy.behaviour.min_prompts)


def finished_report(config: ScanConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """The complete report in ``out_dir`` when every enabled stage's record there is finished
    and keyed by these inputs and this config (so a rerun may re-use it), else None. A bad
    input file reads as not finished: the scan itself then says what is wrong."""
    from wbsafe.io.serialize import read_json

    config, path = effective(config), Path(out_dir) / "report.json"
    try:
        report = read_json(path) if path.is_file() else None
        if not isinstance(report, dict) or report.get("status") != "complete":
            return None  # decided before hashing any weights
        hashes = weight_hashes(config)
    except (WbsafeError, OSError):
        return None
    store = StageStore(out_dir)
    for name in config.stages:
        if store.load(name, stage_key(name, config, hashes)) is None:
            return None
    return report


def gate_evidence(records: dict[str, StageRecord]) -> GateEvidence:
    """What the gate reads: each stage's evidence (None when it did not run) and the
    analyses that were asked for and failed. A stage whose evidence does not parse (a
    record edited or damaged on disk) is marked failed, with the error: the others stand."""
    parts: dict[str, Any] = {}
    for name, rec in records.items():
        if rec.status != "done" or rec.evidence is None:
            continue
        try:
            parsed = parse_evidence({name: rec.evidence}, where=f"{name} stage evidence")
        except WbsafeError as exc:
            records[name] = dataclasses.replace(rec, status="failed", error=str(exc))
            continue
        parts[name] = getattr(parsed, name)
    failed = tuple(n for n, r in records.items() if r.status == "failed")
    return GateEvidence(**parts, failed=failed)
