"""The house rules that keep the layout true: one-way imports, one spelling per stage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wbsafe.config import STAGES, ScanConfig, stage_name

ROOT = Path(__file__).resolve().parents[1]


def test_imports_go_one_way() -> None:
    """The layers contract in pyproject.toml ([tool.importlinter]) holds for the package."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra (scripts/setup.sh does)")
    res = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "KEPT" in res.stdout


def test_behaviour_is_one_stage_under_either_spelling() -> None:
    assert "behaviour" in STAGES and "behavior" not in STAGES
    assert stage_name("behavior") == stage_name("behaviour") == "behaviour"
    cfg = ScanConfig(base="b", tuned="t", stages=("weights", "behavior"))
    assert cfg.stages == ("weights", "behaviour")


def test_summary_csv_cells_cannot_run_as_formulas(tmp_path: Path) -> None:
    import csv

    from wbsafe.pipeline.fleet import write_summary

    rows = [
        {"adapter": "=HYPERLINK(\"http://x\")", "verdict": "ERROR", "top_reason": "-1+1",
         "report": ""},
        {"adapter": "plain", "verdict": "DEPLOY", "top_reason": "@SUM(A1)", "report": "a.html"},
    ]  # fmt: skip
    write_summary("base", rows, tmp_path)
    with open(tmp_path / "summary.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert got[0]["adapter"].startswith("'=") and got[0]["top_reason"] == "'-1+1"
    assert got[1]["adapter"] == "plain" and got[1]["top_reason"] == "'@SUM(A1)"
