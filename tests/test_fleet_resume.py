"""What a fleet rerun may re-use: a complete report whose stage records match the inputs
and the config; anything else is scanned again."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from wbsafe.config import RuntimeConfig, ScanConfig
from wbsafe.organisms import Organism
from wbsafe.pipeline.scan import finished_report, scan


def test_only_a_matching_finished_report_is_reused(
    tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    adapter = Path(shutil.copytree(tiny_organisms["benign_lora"].path, tmp_path / "a"))
    cfg = ScanConfig(base=tiny_organisms["base"].path, adapters=(str(adapter),),
                     stages=("weights",), runtime=RuntimeConfig(device="cpu", threads=1))  # fmt: skip
    out = tmp_path / "out"
    assert finished_report(cfg, out) is None  # nothing there
    report = scan(cfg, out)
    assert finished_report(cfg, out) == json.loads((out / "report.json").read_text())
    assert report["decision"] == finished_report(cfg, out)["decision"]  # type: ignore[index]
    assert finished_report(dataclasses.replace(cfg, seed=1), out) is None  # another config
    weights = adapter / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # another adapter
    assert finished_report(cfg, out) is None
    weights.write_bytes(original)
    doc = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps({**doc, "status": "failed"}))
    assert finished_report(cfg, out) is None  # not complete
