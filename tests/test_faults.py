"""Faults: a scan killed at each stage resumes to the uninterrupted decision; one seed, one report.

A SIGKILL leaves no chance to clean up: what survives is what was already on disk (each
finished stage's record, report.json with ``status = "started"``). Rerunning the same scan
must re-use the finished stages, redo the rest and reach the same decision and evidence as a
scan that was never interrupted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from wbsafe.api import run_scan
from wbsafe.config import STAGES, RuntimeConfig, ScanConfig
from wbsafe.organisms import Organism
from wbsafe.report.document import check_report, json_schema

DRIVER = """
import json, os, signal, sys
from wbsafe.pipeline import store
from wbsafe.config import RuntimeConfig, ScanConfig
from wbsafe.api import run_scan

stage, out, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg["runtime"] = RuntimeConfig(**cfg["runtime"])
cfg["adapters"], cfg["stages"] = tuple(cfg["adapters"]), tuple(cfg["stages"])
real_run = store.StageStore.run

def run(self, name, key, fn, *, log):
    if name == stage:  # killed as this stage begins: every earlier stage is on disk
        os.kill(os.getpid(), signal.SIGKILL)
    return real_run(self, name, key, fn, log=log)

store.StageStore.run = run
run_scan(ScanConfig(**cfg), out)
"""


def _stable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what may differ between two runs: times, where caches live, the
    platform string, whether a stage was re-used."""
    out = json.loads(json.dumps(report))
    for key in ("created", "timings", "exit_code"):
        out.pop(key, None)
    out["manifest"].pop("platform", None)
    out["manifest"]["config"].pop("directions_cache", None)
    for stage in out["stages"].values():
        stage.pop("seconds", None)
        stage.pop("reused", None)
        for phase in ((stage.get("result") or {}).get("passes") or {}).values():
            phase.pop("seconds", None)
        fit = (stage.get("result") or {}).get("fit") or {}
        fit.pop("loaded_from", None)  # a resumed probes stage may re-use the fitted cache
    out["stages"].get("probes", {}).pop("summary", None)  # "(directions re-used from cache)"
    return out


@pytest.fixture(scope="module")
def scan_config(tiny_organisms: dict[str, Organism]) -> ScanConfig:
    return ScanConfig(
        base=tiny_organisms["base"].path, tuned=tiny_organisms["backdoor"].path,
        runtime=RuntimeConfig(device="cpu", threads=1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(scan_config: ScanConfig, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("whole")
    cfg = replace(scan_config, directions_cache=str(root / "cache"))
    return _stable(run_scan(cfg, root / "scan"))


@pytest.mark.parametrize("stage", STAGES)
def test_killed_at_each_stage_resumes_to_the_same_decision(
    stage: str, scan_config: ScanConfig, uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    cfg = replace(scan_config, directions_cache=str(tmp_path / "cache"))
    out = tmp_path / "scan"
    payload = json.dumps(asdict(cfg))
    proc = subprocess.run([sys.executable, "-c", DRIVER, stage, str(out), payload],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL, not a crash of its own
    # a valid, partial document: started, no decision yet, every earlier stage done
    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, json_schema())
    partial = check_report(doc)
    assert partial.status == "started" and partial.decision is None
    before = STAGES[: STAGES.index(stage)]
    assert sorted(partial.stages) == sorted(before)
    assert all(partial.stages[s].status == "done" for s in before)
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    assert set(done_before) == {f"{s}.json" for s in before}

    resumed = run_scan(cfg, out)
    assert resumed["status"] == "complete"
    assert all(resumed["stages"][s]["reused"] for s in before)
    for name, mtime in done_before.items():  # re-used, not redone
        assert (out / "stages" / name).stat().st_mtime_ns == mtime, name
    assert not any(resumed["stages"][s]["reused"] for s in STAGES[len(before) :])
    got = _stable(resumed)
    assert got["decision"] == uninterrupted["decision"]
    assert got["gate_evidence"] == uninterrupted["gate_evidence"]
    assert got["stages"] == uninterrupted["stages"]


def test_one_seed_gives_one_report(
    scan_config: ScanConfig, uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    """A second run with the same seed, its own caches and output: the same report.json,
    timings and paths aside."""
    cfg = replace(scan_config, directions_cache=str(tmp_path / "cache"))
    again = _stable(run_scan(cfg, tmp_path / "scan"))
    assert again == uninterrupted


def test_a_full_disk_loses_nothing_finished(
    scan_config: ScanConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after the weights stage: the scan stops with a clear error that
    names the file, the finished stage stays on disk, and a rerun (disk freed) completes."""
    import errno
    import os

    from wbsafe.errors import WbsafeError

    cfg = replace(scan_config, directions_cache=str(tmp_path / "cache"))
    out = tmp_path / "scan"
    real_replace = os.replace

    def full(src: Any, dst: Any) -> None:
        if str(dst).endswith("probes.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WbsafeError, match="No space left on device") as err:
        run_scan(cfg, out)
    assert "probes.json" in str(err.value)
    assert (out / "stages" / "weights.json").is_file()
    assert not list((out / "stages").glob(".*.tmp"))  # no half-written temporary left
    monkeypatch.setattr(os, "replace", real_replace)
    resumed = run_scan(cfg, out)
    assert resumed["status"] == "complete" and resumed["stages"]["weights"]["reused"]


def test_a_damaged_stage_record_fails_that_stage_not_the_scan(
    scan_config: ScanConfig, tmp_path: Path
) -> None:
    cfg = replace(scan_config, directions_cache=str(tmp_path / "cache"),
                  stages=("weights", "behaviour"))  # fmt: skip
    out = tmp_path / "scan"
    first = run_scan(cfg, out)
    assert first["stages"]["behaviour"]["status"] == "done"
    behaviour = out / "stages" / "behaviour.json"
    record = json.loads(behaviour.read_text())
    # evidence that cannot be (more refusals than prompts), under a key that still matches
    record["evidence"]["tuned_refusals"] = record["evidence"]["n"] + 7
    behaviour.write_text(json.dumps(record))
    # and a weights record that does not parse at all: it is redone
    weights = out / "stages" / "weights.json"
    broken = json.loads(weights.read_text())
    broken["seconds"] = "soon"
    weights.write_text(json.dumps(broken))

    again = run_scan(cfg, out)
    assert again["status"] == "complete"
    assert again["stages"]["weights"]["status"] == "done"
    assert again["stages"]["weights"]["reused"] is False  # redone, not trusted
    stage = again["stages"]["behaviour"]
    assert stage["status"] == "failed" and "outside" in stage["error"]
    checks = {r["check"]: r for r in again["decision"]["reasons"]}
    assert checks["behaviour.failed"]["verdict"] == "REVIEW"
    assert again["decision"]["verdict"] in ("REVIEW", "BLOCK")


def test_scan_many_gives_every_bad_adapter_an_error_row(
    tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    """Good adapters get their verdicts; each bad one (truncated, another base's shapes,
    an unreadable config, no weights, a symlink loop) an ERROR row naming the cause."""
    import os
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from wbsafe.api import scan_many

    good = tiny_organisms["benign_lora"].path
    root = tmp_path / "adapters"
    made: dict[str, str] = {}

    def copy(name: str) -> Path:
        d = root / name
        shutil.copytree(good, d)
        return d

    d = copy("truncated")
    data = (d / "adapter_model.safetensors").read_bytes()
    (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    made["truncated"] = "truncated"
    d = copy("other_base")  # factors of a wider model: they cannot fit this base
    tensors = load_file(str(d / "adapter_model.safetensors"))
    tensors = {k: torch.zeros(v.shape[0], v.shape[1] + 8) if "lora_A" in k else v
               for k, v in tensors.items()}  # fmt: skip
    save_file(tensors, str(d / "adapter_model.safetensors"))
    made["other_base"] = "another base"
    d = copy("bad_config")
    (d / "adapter_config.json").write_text("{not json")
    made["bad_config"] = "JSON"
    d = copy("no_weights")
    (d / "adapter_model.safetensors").unlink()
    made["no_weights"] = "adapter"
    d = copy("loop")
    (d / "adapter_model.safetensors").unlink()
    os.symlink("adapter_model.safetensors", d / "adapter_model.safetensors")
    made["loop"] = "adapter"
    template = ScanConfig(base=tiny_organisms["base"].path, stages=("weights",),
                          runtime=RuntimeConfig(device="cpu", threads=1))  # fmt: skip
    adapters = [good, tiny_organisms["backdoor_lora"].path, *sorted(root.iterdir())]
    rows = {r["adapter"]: r for r in scan_many(template.base, adapters, tmp_path / "out",
                                               template=template)}  # fmt: skip
    assert rows["benign_lora"]["verdict"] != "ERROR"
    assert rows["backdoor_lora"]["verdict"] != "ERROR"
    for name, cause in made.items():
        assert rows[name]["verdict"] == "ERROR", rows[name]
        assert cause.lower() in rows[name]["top_reason"].lower(), rows[name]
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert summary.count("ERROR") == len(made)
