"""The command line: fast help, clear errors, the inspect command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from wbsafe.cli import main
from wbsafe.organisms import Organism


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


def test_triggers_command_recovers_the_planted_trigger(
    tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    """`wbsafe triggers` runs the scan's hunt: the LoRA backdoor's trigger, verified."""
    org = tiny_organisms["backdoor_lora"]
    out = tmp_path / "triggers.json"
    res = CliRunner().invoke(main, ["triggers", "--base", tiny_organisms["base"].path,
                                    "--tuned", org.path, "--out", str(out), "--device", "cpu",
                                    "--threads", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert org.trigger is not None and f"VERIFIED {org.trigger['text']!r}" in res.output
    doc = json.loads(out.read_text())
    assert doc["verified"][0] == org.trigger["text"] and doc["coverage"]["budget"] == 2048


def test_log_lines_print_as_written_not_as_markup() -> None:
    """The CLI's log callback keeps a stage's "[weights]" prefix (rich read it as a style tag
    and dropped it) and styles nothing a scanned file names."""
    import io

    from rich.console import Console

    from wbsafe.cli.app import _log

    buf = io.StringIO()
    now = iter([100.0, 100.4, 163.0, 3825.0])  # made, then each line (seconds)
    say = _log(Console(file=buf, force_terminal=False, width=200), clock=lambda: next(now))
    say("[weights] done in 1.0 s")
    say("adapter [bold red]evil[/] loaded")
    say("[triggers] done")
    assert buf.getvalue().splitlines() == [
        "00:00 [weights] done in 1.0 s",
        "01:03 adapter [bold red]evil[/] loaded",
        "1:02:05 [triggers] done",
    ]
