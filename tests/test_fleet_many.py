"""``scan-many`` over 52 adapters, 12 of them bad: every good one its verdict, every bad one
an ERROR row with its cause, and nothing skipped.

The good ones are byte copies of the tiny tier's two LoRA adapters (benign and backdoor), so
each must reach exactly the verdict and weight evidence of its original. The bad ones cover
truncation (data and header), another base's module names, another base's shapes, a config
that is not UTF-8 / not JSON / has rank 0, weights that are a folder or absent, a weight
file that links out of its adapter, and symlink loops (the weight file, the adapter folder).
Only the weights stage runs (``--skip probes --skip triggers --skip behaviour``): the point
is the fleet's bookkeeping, and the weight diff already reads every adapter file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbsafe.cli import main
from wbsafe.io.containment import ALLOW_ENV
from wbsafe.organisms import Organism

GOOD_COPIES = 20  # of each of the two adapters


def _bad_adapters(good: Path, root: Path) -> dict[str, str]:
    """Make the bad adapters under ``root``; returns {name: a word the ERROR must give}."""
    import torch
    from safetensors.torch import load_file, save_file

    causes: dict[str, str] = {}

    def copy(name: str, cause: str) -> Path:
        causes[name] = cause
        return Path(shutil.copytree(good, root / name))

    weights = "adapter_model.safetensors"
    d = copy("bad_truncated", "truncated")
    data = (d / weights).read_bytes()
    (d / weights).write_bytes(data[: len(data) // 2])
    d = copy("bad_header_cut", "truncated")
    (d / weights).write_bytes(data[:40])
    d = copy("bad_other_base_names", "does not have")  # modules this base lacks
    tensors = load_file(str(d / weights))
    save_file(
        {k.replace("layers.0.", "layers.7."): v for k, v in tensors.items()}, str(d / weights)
    )
    d = copy("bad_other_base_shapes", "another base")
    save_file({k: torch.zeros(v.shape[0], v.shape[1] + 8) if "lora_A" in k else v
               for k, v in tensors.items()}, str(d / weights))  # fmt: skip
    d = copy("bad_config_not_utf8", "json")
    (d / "adapter_config.json").write_bytes(b'{"r": "\xff\xfe"}')
    d = copy("bad_config_not_json", "json")
    (d / "adapter_config.json").write_text("{not json")
    d = copy("bad_rank_zero", "r is 0")
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, "r": 0}))
    d = copy("bad_weights_a_folder", "adapter_model")  # unreadable as a file
    (d / weights).unlink()
    (d / weights).mkdir()
    d = copy("bad_no_weights", "adapter_model")
    (d / weights).unlink()
    d = copy("bad_weight_loop", "symlink loop")
    (d / weights).unlink()
    os.symlink(weights, d / weights)
    d = copy("bad_weight_outside", "points outside")
    (d / weights).unlink()
    os.symlink(good / weights, d / weights)
    os.symlink("bad_dir_loop", root / "bad_dir_loop")  # the adapter folder itself loops
    causes["bad_dir_loop"] = "symlink loop"
    return causes


def test_scan_many_over_fifty_adapters_with_bad_ones_mixed_in(
    tiny_organisms: dict[str, Organism], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    root = tmp_path / "adapters"
    root.mkdir()
    source = {"benign_lora": Path(tiny_organisms["benign_lora"].path),
              "backdoor_lora": Path(tiny_organisms["backdoor_lora"].path)}  # fmt: skip
    origin: dict[str, str] = {}
    for i in range(GOOD_COPIES):
        for kind, path in source.items():
            name = f"good_{kind}_{i:02d}"
            shutil.copytree(path, root / name)
            origin[name] = kind
    causes = _bad_adapters(source["benign_lora"], root)
    assert len(origin) + len(causes) == 52
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [
        "scan-many", "--base", tiny_organisms["base"].path, "--adapters", str(root),
        "--out", str(out), "--skip", "probes", "--skip", "triggers", "--skip", "behaviour",
        "--device", "cpu", "--threads", "1",
    ])  # fmt: skip
    assert res.exit_code == 1, res.output  # some adapters are ERROR
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["adapter"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(origin) | set(causes)  # none skipped, none invented
    for name, cause in causes.items():
        assert rows[name]["verdict"] == "ERROR", rows[name]
        assert cause.lower() in rows[name]["top_reason"].lower(), rows[name]
    first = {kind: json.loads((out / f"good_{kind}_00" / "report.json").read_text())
             for kind in source}  # fmt: skip
    assert (
        first["benign_lora"]["gate_evidence"]["weights"]
        != (first["backdoor_lora"]["gate_evidence"]["weights"])
    )  # the two originals differ
    for name, kind in origin.items():
        report = json.loads((out / name / "report.json").read_text())
        assert rows[name]["verdict"] == report["decision"]["verdict"] != "ERROR"
        assert report["decision"]["verdict"] == first[kind]["decision"]["verdict"]
        assert report["gate_evidence"] == first[kind]["gate_evidence"], name
