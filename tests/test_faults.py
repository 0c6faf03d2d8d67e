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

import pytest

from wbsafe.api import run_scan
from wbsafe.config import STAGES, RuntimeConfig, ScanConfig
from wbsafe.organisms import Organism
from wbsafe.report.document import check_report

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
    partial = check_report(json.loads((out / "report.json").read_text()))
    assert partial.status == "started" and partial.decision is None
    before = STAGES[: STAGES.index(stage)]
    assert sorted(partial.stages) == sorted(before)
    assert all(partial.stages[s].status == "done" for s in before)

    resumed = run_scan(cfg, out)
    assert resumed["status"] == "complete"
    assert all(resumed["stages"][s]["reused"] for s in before)
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
