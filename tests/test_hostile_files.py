"""Hostile files beyond safetensors headers, one test per finding, and links that leave.

What the fuzz campaign (``tests/fuzz_targets.py``) found on ba2cb14, each a traceback then:
a 5,000-digit number or deep nesting in config.json, adapter_config.json or report.json; a
non-UTF-8, NUL-holding or lone-surrogate prompt file; a 5,000-digit integer in a policy or
scan.toml; scan.toml values of the wrong type. And by reading: a config claiming a million
layers built a skeleton for as long as that takes; tokenizer files were parsed unchecked;
a weight or tokenizer file that is a symlink out of its folder, and an adapter naming a base
outside itself, were followed silently.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from wbsafe.config import read_scan_toml
from wbsafe.data.prompts import load_prompts
from wbsafe.errors import (
    AdapterMismatchError,
    CheckpointFormatError,
    DatasetError,
    UnsafeCheckpointError,
    WbsafeError,
)
from wbsafe.gate.policy import load_policy
from wbsafe.io.checkpoints import weight_files
from wbsafe.io.containment import ALLOW_ENV, OutsideLinkWarning
from wbsafe.io.models import (
    check_weights_match_config,
    load_model,
    read_adapter_config,
    read_config,
)
from wbsafe.io.tokenizer_files import check_tokenizer_files
from wbsafe.organisms import Organism
from wbsafe.report.document import load_report


def _named(exc: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "text", ['{"hidden_size": ' + "9" * 5000 + "}", "[" * 5000 + "]" * 5000,
             '{"a": ' * 100 + "1" + "}" * 100]
)  # fmt: skip
def test_config_json_numbers_and_nesting_are_clear_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    (tmp_path / "adapter_config.json").write_text(text)
    (tmp_path / "report.json").write_text(text)
    with pytest.raises(CheckpointFormatError) as err:
        read_config(tmp_path)
    _named(err, tmp_path / "config.json")
    with pytest.raises(AdapterMismatchError) as err2:
        read_adapter_config(tmp_path)
    _named(err2, tmp_path / "adapter_config.json")
    with pytest.raises(WbsafeError) as err3:
        load_report(tmp_path / "report.json")
    _named(err3, tmp_path / "report.json")


def test_config_sizes_are_bounded_before_a_skeleton_is_built(
    tiny_base: Path, tmp_path: Path
) -> None:
    d = tmp_path / "m"
    shutil.copytree(tiny_base, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1_000_000}))
    with pytest.raises(CheckpointFormatError, match="num_hidden_layers") as err:
        check_weights_match_config(d)
    _named(err, d / "config.json")
    (d / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 7}))
    with pytest.raises(CheckpointFormatError, match="not a multiple") as err:
        check_weights_match_config(d)  # 7 heads do not divide the width: transformers' error
    _named(err, d)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"r": 0}, "r is 0"), ({"lora_alpha": float("nan")}, "lora_alpha"),
     ({"target_modules": {"q": 1}}, "target_modules"), ({"rank_pattern": {"q": -2}}, "rank_pattern"),
     ({"base_model_name_or_path": ["x"]}, "base_model_name_or_path")],
)  # fmt: skip
def test_adapter_config_values_are_typed(tmp_path: Path, change: dict, message: str) -> None:
    good = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps({**good, **change}))
    with pytest.raises(AdapterMismatchError, match=message):
        read_adapter_config(tmp_path)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [("p.jsonl", b'{"text": "caf\xe9", "label": "harmful"}\n', "UTF-8"),
     ("p.jsonl", b'{"text": "a\\ud800b", "label": "harmful"}\n', "surrogate"),
     ("p.jsonl", b'{"text": "a", "label": "harmful", "n": ' + b"9" * 5000 + b"}\n", "malformed"),
     ("p.jsonl", b"[" * 5000 + b"]" * 5000 + b"\n", "malformed"),
     ("p.csv", b"text,label\n" + b"x" * 200_000 + b",harmful\n", "malformed CSV"),
     ("p.csv", b"text,label\n\xff\xfe,harmful\n", "UTF-8")],
)  # fmt: skip
def test_hostile_prompt_files_are_dataset_errors(
    tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=message) as err:
        load_prompts(path, default_label="harmful")
    _named(err, path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("seed = " + "9" * 5000, "not valid TOML"), ('max_prompts = "many"', "max_prompts"),
     ("stages = 3", "stages"), ('stages = ["weights", "vibes"]', "vibes"),
     ('[runtime]\ndevice = "tpu"', "device"), ("[runtime]\nbatch_size = 0", "batch_size"),
     ('risk = "extreme"', "risk"), ("x = " + "[" * 3000 + "]" * 3000, "not valid TOML")],
)  # fmt: skip
def test_scan_toml_values_are_typed(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "scan.toml"
    path.write_text(text)
    with pytest.raises(WbsafeError, match=message) as err:
        read_scan_toml(str(path))
    _named(err, path)


def test_policy_with_a_huge_integer_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[behaviour]\nmin_prompts = " + "9" * 5000 + "\n")
    with pytest.raises(WbsafeError, match="not valid TOML") as err:
        load_policy(path)
    _named(err, path)
    path.write_text("[behaviour]\nmonitor = " + "9" * 400 + "\n")
    with pytest.raises(WbsafeError, match=r"behaviour\.monitor"):
        load_policy(path)


def _tokenizer_dir(tiny_base: Path, tmp_path: Path) -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_base / name, d / name)
    return d


def test_tokenizer_files_are_checked_before_transformers_reads_them(
    tiny_base: Path, tmp_path: Path
) -> None:
    d = _tokenizer_dir(tiny_base, tmp_path)
    assert [p.name for p in check_tokenizer_files(d)] == [
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]  # fmt: skip
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "auto_map": {"x": "y.Z"}}))
    with pytest.raises(UnsafeCheckpointError, match="remote"):
        check_tokenizer_files(d)
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": {"content": 3}}))
    with pytest.raises(CheckpointFormatError, match="eos_token"):
        check_tokenizer_files(d)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = json.loads((d / "tokenizer.json").read_text())
    (d / "tokenizer.json").write_text(json.dumps({**tok, "model": [1, 2]}))
    with pytest.raises(CheckpointFormatError, match="model") as err:
        check_tokenizer_files(d)
    _named(err, d / "tokenizer.json")
    with open(d / "tokenizer.json", "wb") as fh:  # sparse: 65 MiB claimed, nothing written
        fh.truncate(65 * 1024 * 1024)
    with pytest.raises(CheckpointFormatError, match="larger than"):
        check_tokenizer_files(d)


def _weights_outside(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    save_file({"w": torch.zeros(2)}, str(elsewhere / "secret.safetensors"))
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(elsewhere / "secret.safetensors", model / "model.safetensors")
    return model, elsewhere / "secret.safetensors"


def test_a_weight_file_linking_out_of_its_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    model, target = _weights_outside(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="points outside") as err:
        weight_files(model)
    assert str(target) in str(err.value) and "--allow-outside-links" in str(err.value)
    inside = model / "real.safetensors"  # a link that stays inside is fine
    shutil.copy(target, inside)
    (model / "model.safetensors").unlink()
    os.symlink(inside, model / "model.safetensors")
    assert weight_files(model) == [model / "model.safetensors"]
    (model / "model.safetensors").unlink()
    os.symlink("model.safetensors", model / "model.safetensors")
    with pytest.raises(UnsafeCheckpointError, match="symlink loop"):
        weight_files(model)


def test_the_opt_in_follows_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, target = _weights_outside(tmp_path)
    monkeypatch.setenv(ALLOW_ENV, "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert weight_files(model) == [model / "model.safetensors"]
    assert any(issubclass(w.category, OutsideLinkWarning) and str(target) in str(w.message)
               for w in seen)  # fmt: skip


def test_cli_refuses_then_follows_with_the_flag(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wbsafe.cli import main

    monkeypatch.setenv(ALLOW_ENV, "0")  # the flag below sets it in-process; undone after the test
    d = tmp_path / "model"
    d.mkdir()
    for f in tiny_base.iterdir():
        if f.name != "tokenizer.json":
            shutil.copy(f, d / f.name)
    os.symlink(tiny_base / "tokenizer.json", d / "tokenizer.json")  # a tokenizer from elsewhere
    res = CliRunner().invoke(main, ["inspect", str(d), "--json"])
    assert res.exit_code == 1 and "tokenizer file tokenizer.json points outside" in res.output
    res = CliRunner().invoke(main, ["--allow-outside-links", "inspect", str(d), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tokenizer"]["vocab"] > 0


def test_an_adapter_naming_a_base_outside_itself_is_refused(
    tiny_organisms: dict[str, Organism], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny adapters name their base as ``../base``: outside the adapter, so loading
    the adapter alone refuses unless the caller (or the user's flag) says to follow it."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    adapter = Path(tiny_organisms["benign_lora"].path)
    with pytest.raises(UnsafeCheckpointError, match=r"named by adapter_config\.json") as err:
        load_model(adapter, hash_weights=False)
    assert "--base" in str(err.value)
    monkeypatch.setenv(ALLOW_ENV, "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loaded = load_model(adapter, hash_weights=False)
    assert loaded.adapter_names and any(issubclass(w.category, OutsideLinkWarning) for w in seen)


def test_a_hugging_face_cache_snapshot_may_link_into_its_own_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HF cache stores a snapshot's files as links to ``../../blobs``: that is the
    cache's layout, not a link out of what the user gave; a link elsewhere still is."""
    import torch

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    repo = tmp_path / "hub" / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(repo / "blobs" / "abc123"))
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    os.symlink("../../blobs/abc123", snap / "model.safetensors")
    assert weight_files(snap) == [snap / "model.safetensors"]
    other, _ = _weights_outside(tmp_path)
    (snap / "model.safetensors").unlink()
    os.symlink(other / "model.safetensors", snap / "model.safetensors")
    with pytest.raises(UnsafeCheckpointError, match="points outside"):
        weight_files(snap)


def test_config_files_linking_out_are_refused(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.json and adapter_config.json are read first: a link out of the folder is refused
    before anything it says is believed."""
    from wbsafe.io.models import read_adapter_config, read_config

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    d = tmp_path / "model"
    d.mkdir()
    os.symlink(tiny_base / "config.json", d / "config.json")
    with pytest.raises(UnsafeCheckpointError, match=r"config\.json points outside"):
        read_config(d)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    a = tmp_path / "adapter"
    a.mkdir()
    os.symlink(tmp_path / "adapter_config.json", a / "adapter_config.json")
    with pytest.raises(UnsafeCheckpointError, match=r"adapter_config\.json points outside"):
        read_adapter_config(a)
    monkeypatch.setenv(ALLOW_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_config(d)["model_type"] == "llama"


def test_an_adapter_naming_another_base_is_reported_not_followed(
    tiny_organisms: dict[str, Organism], tiny_base: Path, tmp_path: Path
) -> None:
    """With --base given, the base an adapter names is never loaded; when it is not the base
    given, the report says which base the adapter named and which it was screened against."""
    from wbsafe.config import ScanConfig
    from wbsafe.pipeline.models import named_base_notes
    from wbsafe.report.markdown import render_markdown

    adapter = Path(tiny_organisms["benign_lora"].path)
    assert named_base_notes(ScanConfig(base=str(tiny_base), adapters=(str(adapter),))) == []
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/srv/models/some-other-base"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    (note,) = named_base_notes(ScanConfig(base=str(tiny_base), adapters=(str(moved),)))
    assert "/srv/models/some-other-base" in note and str(tiny_base) in note
    report = {"models": {"base": {"path": str(tiny_base)}, "tuned": {"base_notes": [note]}}}
    assert "some-other-base" in render_markdown(report, tmp_path)
