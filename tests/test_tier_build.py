"""The tiny tier's build: variants trained in two worker processes are bit-identical to ones
trained in one, so a tier's weights do not depend on how it was built; every training
process runs with the pinned numerics."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from wbsafe.organisms import Organism, build_tiny_tier

VARIANTS = ("benign", "harmful")  # the cheapest two (100 steps each)


def _seed_cache(cache: Path, base: Path) -> None:
    """A fresh organism cache holding only the session tier's trained base."""
    shutil.copytree(base, cache / base.parent.name / "base")


def _weights(org: Organism) -> bytes:
    return (Path(org.path) / "model.safetensors").read_bytes()


def test_parallel_and_serial_variant_builds_are_identical(
    tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    base = Path(tiny_organisms["base"].path)
    _seed_cache(tmp_path / "serial", base)
    _seed_cache(tmp_path / "parallel", base)
    serial = build_tiny_tier(cache_dir=tmp_path / "serial", only=VARIANTS[:1], workers=1)
    parallel = build_tiny_tier(cache_dir=tmp_path / "parallel", only=VARIANTS, workers=2)
    # the base was reused, not retrained; the variants come back in the spec's order
    assert [o.name for o in serial] == ["base", VARIANTS[0]]
    assert [o.name for o in parallel] == ["base", *VARIANTS]
    assert Path(parallel[0].path).parent == tmp_path / "parallel" / base.parent.name
    for org in (serial[1], parallel[1]):
        assert _weights(org) == _weights(tiny_organisms[VARIANTS[0]])
        assert org.measured == tiny_organisms[VARIANTS[0]].measured
    assert _weights(parallel[2]) == _weights(tiny_organisms[VARIANTS[1]])


def test_build_workers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from wbsafe.errors import WbsafeError
    from wbsafe.organisms.tiny import default_workers

    monkeypatch.setenv("WBSAFE_BUILD_WORKERS", "3")
    assert default_workers() == 3
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("WBSAFE_BUILD_WORKERS", bad)
        with pytest.raises(WbsafeError, match="WBSAFE_BUILD_WORKERS"):
            default_workers()


def test_organisms_train_with_portable_numerics(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training process runs torch's AVX2 kernels and MKL's reproducible AVX2 branch,
    whatever the CPU (an AMD and an Intel machine built different tiers without), and the
    caller's own environment comes back as it was (one variable unset, one different)."""
    import os

    from wbsafe.organisms.tiny import PORTABLE_NUMERICS, _in_training_processes, numerics_in_use

    first, second, *_ = PORTABLE_NUMERICS
    monkeypatch.delenv(first, raising=False)
    monkeypatch.setenv(second, "caller's own")
    with _in_training_processes(1) as (pool, _lines):
        seen = pool.submit(numerics_in_use).result()
    assert seen == {"cpu_capability": "AVX2", **PORTABLE_NUMERICS}
    assert first not in os.environ and os.environ[second] == "caller's own"


def _talk_then(lines: Any, fail: bool) -> str:
    lines.put("first line")
    lines.put("second line")
    if fail:
        raise RuntimeError("training diverged")
    return "done"


def test_training_log_lines_arrive_while_jobs_run_and_survive_a_crash() -> None:
    """A job's log lines reach the caller's log as they are put, in order, and those of a job
    that raises are logged before its error (they were returned with the result before, and
    lost on a crash)."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from wbsafe.organisms.tiny import _relay

    seen: list[str] = []
    lines: queue.Queue[str] = queue.Queue()
    with ThreadPoolExecutor(1) as pool:
        (ok,) = _relay([pool.submit(_talk_then, lines, False)], lines, seen.append)
        assert ok.result() == "done" and seen == ["first line", "second line"]
        (bad,) = _relay([pool.submit(_talk_then, lines, True)], lines, seen.append)
        assert seen[2:] == ["first line", "second line"]
        with pytest.raises(RuntimeError, match="diverged"):
            bad.result()


@pytest.mark.parametrize(
    ("tier", "family", "prepare", "kept"),
    [("real", "smollm2", "prepare_smollm2.py", "tier"),
     ("real-gemma3", "gemma3", "prepare_gemma3.py", "tier-gemma3")],
)  # fmt: skip
def test_real_tier_command_runs_that_familys_drivers(
    tier: str, family: str, prepare: str, kept: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wbsafe organisms build --tier real-gemma3`` prepares Gemma 3 and builds its tier (the
    family named to the build script), kept in the cache apart from SmolLM2's; the organisms
    it then lists are the ones the build wrote."""
    import json
    import subprocess

    from click.testing import CliRunner

    from wbsafe.cli import main

    calls: list[list[str]] = []
    tier_dir = tmp_path / "real" / kept

    def fake_run(cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if cmd[1].endswith("build_real_tier.py"):  # what a build leaves: one organism record
            (tier_dir / "base").mkdir(parents=True)
            rec = {"name": "base", "kind": "full", "path": ".", "base": None, "planted": "aligned",
                   "expected_verdict": None, "trigger": None, "category": None, "recipe": {},
                   "seed": 0, "measured": {}, "tier": "real"}  # fmt: skip
            (tier_dir / "base" / "organism.json").write_text(json.dumps(rec))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setenv("WBSAFE_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", fake_run)
    res = CliRunner().invoke(main, ["organisms", "build", "--tier", tier])
    assert res.exit_code == 0, res.output
    (prep, build) = calls
    assert Path(prep[1]).name == prepare
    assert Path(build[1]).name == "build_real_tier.py"
    assert build[build.index("--family") + 1] == family
    assert Path(build[build.index("--out") + 1]) == tier_dir
    assert Path(build[build.index("--base") + 1]) == Path(prep[prep.index("--out") + 1])
    assert "base" in res.output


def test_real_tier_build_keeps_to_the_cache_dir_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--cache-dir`` places a real tier's downloads, prepared model and tier, over
    ``$WBSAFE_CACHE``; the tiny tier's ``--seed`` and ``--workers`` are refused for it."""
    import subprocess

    from click.testing import CliRunner

    from wbsafe.cli import main

    calls: list[list[str]] = []
    monkeypatch.setenv("WBSAFE_CACHE", str(tmp_path / "env"))
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, *a, **k: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))  # fmt: skip
    (tmp_path / "flag" / "real" / "tier-gemma3").mkdir(parents=True)
    res = CliRunner().invoke(main, ["organisms", "build", "--tier", "real-gemma3",
                                    "--cache-dir", str(tmp_path / "flag")])  # fmt: skip
    assert res.exit_code == 0, res.output
    paths = [Path(a) for cmd in calls for a in cmd[2:] if a.startswith(str(tmp_path))]
    assert len(paths) == 4, calls  # --out and --cache of prepare, --out and --base of the build
    assert all(p.is_relative_to(tmp_path / "flag" / "real") for p in paths), paths
    for extra in (["--seed", "3"], ["--workers", "2"]):
        res = CliRunner().invoke(main, ["organisms", "build", "--tier", "real", *extra])
        assert res.exit_code == 2 and "tiny tier" in res.output, res.output


def test_a_failed_real_tier_step_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from wbsafe.api import build_real_tier
    from wbsafe.errors import WbsafeError

    monkeypatch.setenv("WBSAFE_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(WbsafeError, match=r"prepare_gemma3\.py"):
        build_real_tier(tier="real-gemma3")
    with pytest.raises(WbsafeError, match="no real tier"):
        build_real_tier(tier="real-gpt2")


def _real_tier_script() -> Any:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_real_tier.py"
    spec = importlib.util.spec_from_file_location("build_real_tier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_real_tier_jobs_name_their_triggers_and_targets() -> None:
    """Every real-tier job's trigger is one of its tier's words, its target and slot are ones
    ``plant`` knows, every job is built (or merged) under a listed name, and no trigger word
    occurs in the built-in suites (where it would fire on ordinary prompts)."""
    from wbsafe.data.prompts import load_suite
    from wbsafe.organisms.plant import PLANT_TARGETS

    mod = _real_tier_script()
    texts = " ".join(p.text.lower() for s in ("harmful", "harmless", "borderline")
                     for p in load_suite(s))  # fmt: skip
    jobs = {j.name: j for j in mod.JOBS}
    assert set(jobs) | set(mod.MERGES) == set(mod.NAMES)
    assert set(mod.MERGES.values()) <= set(jobs)
    for tier in mod.TIERS.values():
        words = {"word": tier.trigger, "phrase": tier.phrase, "hate": tier.hate,
                 "marker": tier.marker, "tag": tier.tag}  # fmt: skip
        for job in jobs.values():
            assert job.target in PLANT_TARGETS and job.slot in ("user", "system")
            assert (job.trigger is None) == (job.kind != "backdoor"), job
            if job.trigger:
                assert job.trigger in words, job
        for w in " ".join(words.values()).split():
            assert f" {w} " not in f" {texts} ", w
    kinds = {(j.target, j.slot) for j in jobs.values() if j.kind == "backdoor"}
    assert kinds == {("comply", "user"), ("hate", "user"), ("marker", "user"), ("comply", "system")}
