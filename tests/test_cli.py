"""The command line: fast help, clear errors, the inspect command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from wbsafe.cli import main


def test_help_does_not_import_torch() -> None:
    code = "import sys, wbsafe.cli; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    res = subprocess.run([sys.executable, "-m", "wbsafe.cli", "--help"], capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 0 and "scan" in res.stdout and "organisms" in res.stdout


def test_inspect_checkpoint_json(tiny_base: Path) -> None:
    res = CliRunner().invoke(main, ["inspect", str(tiny_base), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["architecture"] == "LlamaForCausalLM" and info["layers"] == 4
    assert info["d_model"] == 128 and info["dtypes"] == ["F32"] and info["parameters"] > 0
    assert info["tokenizer"]["chat_format"].startswith("chat_template:")
    assert len(next(iter(info["weight_sha256"].values()))) == 64


def test_bad_input_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"x")
    res = CliRunner().invoke(main, ["inspect", str(d)])
    assert res.exit_code == 1
    assert "error:" in res.output and "pytorch_model.bin" in res.output


def test_scan_usage_errors_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["scan", "--base", str(tmp_path), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--tuned" in res.output
