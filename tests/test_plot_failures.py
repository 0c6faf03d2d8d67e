"""A figure that fails to draw is said in the report, and never sinks its stage.

Before: the probes stage said a failed plot, but a failing weight heatmap or behaviour bar
chart raised out of its stage, so the stage (and its gate evidence) was lost for a figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wbsafe.api import run_scan
from wbsafe.config import RuntimeConfig, ScanConfig
from wbsafe.organisms import Organism
from wbsafe.pipeline.stages.figures import plot_section


def test_plot_section_says_what_failed(tmp_path: Path) -> None:
    png = tmp_path / "plots" / "x.png"

    def broken() -> Path:
        raise MemoryError("figure too large")

    failed = plot_section(broken, png, "X per layer", "the caption")
    assert failed == {"title": "Plot x.png failed", "kind": "text",
                      "text": "the caption: not drawn (MemoryError: figure too large)"}  # fmt: skip
    drawn = plot_section(lambda: png, png, "X per layer", "the caption")
    assert drawn == {"title": "X per layer", "kind": "plot", "png": "plots/x.png",
                     "caption": "the caption"}  # fmt: skip


def test_a_failing_heatmap_keeps_the_weights_stage(
    tiny_organisms: dict[str, Organism], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wbsafe.report.plots import weights as plots_weights

    def broken(*args: Any, **kwargs: Any) -> Path:
        raise RuntimeError("no display")

    monkeypatch.setattr(plots_weights, "weight_heatmap", broken)
    config = ScanConfig(base=tiny_organisms["base"].path, tuned=tiny_organisms["harmful"].path,
                        stages=("weights",), runtime=RuntimeConfig(device="cpu", threads=1))  # fmt: skip
    report = run_scan(config, tmp_path)
    stage = report["stages"]["weights"]
    assert stage["status"] == "done"
    said = [s for s in stage["sections"] if s["title"] == "Plot weights_heatmap.png failed"]
    assert said and "no display" in said[0]["text"]
    assert report["gate_evidence"]["weights"] is not None  # the numbers stand
    assert "Plot weights_heatmap.png failed" in (tmp_path / "report.md").read_text()
