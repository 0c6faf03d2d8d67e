"""``scan-many --executor ray`` on a local Ray: the same summary and reports as the
in-process executor, ERROR rows for a truncated and a mismatched adapter, worker deaths
retried or reported, finished adapters re-used on a rerun, and a clear message without Ray.

One local Ray (2 CPUs, no dashboard, a small object store) serves the module; scans are cheap
(risk low, 50 prompts, no trigger hunt, no refusal depth) and few, since every Ray worker
imports torch when it starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from wbsafe.api import ray_options, scan_many
from wbsafe.cli import main
from wbsafe.config import RuntimeConfig, ScanConfig
from wbsafe.organisms import Organism

ray = pytest.importorskip("ray", reason="the ray extra is not installed (CI installs it)")

REPO = Path(__file__).resolve().parents[1]
GOOD = ("benign_lora", "backdoor_lora", "backdoor_hate_lora")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray whose workers import this tree's wbsafe."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # fmt: skip
    yield
    ray.shutdown()


def _template(base: Path, cache: Path, stages: tuple[str, ...]) -> ScanConfig:
    return ScanConfig(
        base=str(base), stages=stages, risk="low", max_prompts=50, probe_fit_prompts=24,
        probe_n_causal=8, refusal_depth=False, directions_cache=str(cache),
        runtime=RuntimeConfig(device="cpu", threads=1),
    )  # fmt: skip


def _adapters(orgs: dict[str, Organism], root: Path) -> list[Path]:
    """The tier's three LoRA adapters, one cut short and one shaped for another base."""
    from safetensors.torch import load_file, save_file

    good = [Path(shutil.copytree(orgs[n].path, root / n)) for n in GOOD]
    weights = "adapter_model.safetensors"
    cut = Path(shutil.copytree(good[0], root / "bad_truncated"))
    data = (cut / weights).read_bytes()
    (cut / weights).write_bytes(data[: len(data) // 2])
    other = Path(shutil.copytree(good[0], root / "bad_other_base"))
    tensors = load_file(str(other / weights))
    save_file({k: v.repeat(1, 2) if "lora_A" in k else v for k, v in tensors.items()},
              str(other / weights))  # fmt: skip
    return [*good, cut, other]


def _timeless(path: Path) -> Any:
    """A report's content without its timings and creation time."""
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        for key in ("timings", "created"):
            doc.pop(key)
        for stage in doc["stages"].values():
            stage.pop("seconds", None)
        return doc
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:]+\+00:00", "DATE", path.read_text())
    return re.sub(r"\d[\d.]* (min|s)\b", "T", text)


def test_ray_gives_the_in_process_summary_and_reports(
    local_ray: None, tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    """In-process, in-process with adapters swapped over one base, and Ray with two
    adapters per task (swapped likewise): the same summary and the same reports."""
    adapters = _adapters(tiny_organisms, tmp_path / "adapters")
    cache = tmp_path / "cache"  # the same path in every run: each starts it empty
    template = _template(Path(tiny_organisms["base"].path), cache,
                         ("weights", "probes", "behaviour"))  # fmt: skip
    runs = {
        "local": {"executor": "local"},
        "switched": {"executor": "local", "switch_adapters": True},
        "ray": {"executor": "ray", "ray_options": ray_options(max_retries=0, batch=2)},
    }
    for name, how in runs.items():
        scan_many(template.base, adapters, tmp_path / name, template=template, **how)
        shutil.move(cache, tmp_path / f"cache-{name}")
    local = tmp_path / "local"
    rows = (local / "summary.csv").read_text()
    assert re.search(r"bad_truncated,ERROR,.*truncated", rows), rows
    assert re.search(r"bad_other_base,ERROR,.*another base", rows), rows
    for other in ("switched", "ray"):
        for name in ("summary.csv", "summary.md"):
            assert (local / name).read_bytes() == (tmp_path / other / name).read_bytes()
        for name in GOOD:
            for report in ("report.json", "report.md", "report.html"):
                assert _timeless(local / name / report) == _timeless(
                    tmp_path / other / name / report
                ), (other, name, report)
    on_ray = tmp_path / "ray"
    # the base side was computed once, by the first scan, and re-used by the others
    probes = json.loads((on_ray / "backdoor_lora" / "report.json").read_text())["stages"]["probes"]
    assert "re-used from cache" in probes["summary"]
    assert len(list((tmp_path / "cache-ray").glob("refusal-*"))) == 1

    # a rerun re-uses the finished reports and redoes only the bad ones
    before = {n: (on_ray / n / "report.json").stat().st_mtime_ns for n in GOOD}
    lines: list[str] = []
    again = scan_many(template.base, adapters, on_ray, template=template, executor="ray",
                      log=lines.append)  # fmt: skip
    assert {n: (on_ray / n / "report.json").stat().st_mtime_ns for n in before} == before
    assert sum("; reused " in line for line in lines) == 3, lines
    assert [r["verdict"] for r in again][3:] == ["ERROR", "ERROR"]
    assert (on_ray / "summary.csv").read_text() == rows
    assert re.search(r"fleet: 5/5 finished \(3 done, 2 failed\), 0 running", "\n".join(lines))


def test_a_killed_worker_is_retried_then_reported(
    local_ray: None, tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    good = Path(shutil.copytree(tiny_organisms["benign_lora"].path, root / "dies_once"))
    doomed = Path(shutil.copytree(good, root / "dies_always"))
    template = _template(Path(tiny_organisms["base"].path), tmp_path / "cache", ("weights",))
    marks = tmp_path / "marks"
    marks.mkdir()

    def dying_scan(config: ScanConfig, out_dir: Path, **kw: Any) -> dict[str, Any]:
        from wbsafe.pipeline.scan import scan

        name = Path(config.adapters[0]).name
        mark = marks / name
        if name == "dies_always" or not mark.exists():
            mark.write_text("died")
            os._exit(3)  # the worker process dies, as on a kill or an OOM
        return scan(config, out_dir, **kw)

    opts = ray_options(num_cpus=1, max_retries=1, scan_fn=dying_scan)
    rows = {r["adapter"]: r for r in scan_many(template.base, [good, doomed], tmp_path / "out",
                                               template=template, executor="ray",
                                               ray_options=opts)}  # fmt: skip
    assert rows["dies_once"]["verdict"] != "ERROR", rows  # retried, then it finished
    assert rows["dies_always"]["verdict"] == "ERROR"
    assert "worker died" in rows["dies_always"]["top_reason"], rows
    assert (tmp_path / "out" / "dies_once" / "report.json").is_file()


def test_a_scan_that_raises_is_not_retried(
    local_ray: None, tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    adapter = Path(shutil.copytree(tiny_organisms["benign_lora"].path, tmp_path / "a" / "buggy"))
    template = _template(Path(tiny_organisms["base"].path), tmp_path / "cache", ("weights",))
    calls = tmp_path / "calls"
    calls.mkdir()

    def buggy_scan(config: ScanConfig, out_dir: Path, **kw: Any) -> dict[str, Any]:
        (calls / str(len(list(calls.iterdir())))).touch()
        raise ZeroDivisionError("a bug in an analysis")

    opts = ray_options(num_cpus=1, max_retries=3, scan_fn=buggy_scan)
    [row] = scan_many(template.base, [adapter], tmp_path / "out", template=template,
                      executor="ray", ray_options=opts)  # fmt: skip
    assert row["verdict"] == "ERROR"
    assert "ZeroDivisionError: a bug in an analysis" in row["top_reason"], row
    assert len(list(calls.iterdir())) == 1  # deterministic: not retried


def test_the_workers_see_the_drivers_opt_in_to_outside_links(
    local_ray: None,
    tiny_organisms: dict[str, Organism],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--allow-outside-links sets an environment variable; Ray started before it was set
    (and a node elsewhere) would not pass it to a worker, which would then refuse the
    adapter's link to its base."""
    from wbsafe.io.containment import ALLOW_ENV

    adapter = Path(shutil.copytree(tiny_organisms["benign_lora"].path, tmp_path / "a" / "env"))
    template = _template(Path(tiny_organisms["base"].path), tmp_path / "cache", ("weights",))

    def env_scan(config: ScanConfig, out_dir: Path, **kw: Any) -> dict[str, Any]:
        raise RuntimeError(f"allow={os.environ.get(ALLOW_ENV)}")

    monkeypatch.setenv(ALLOW_ENV, "1")
    opts = ray_options(num_cpus=1, scan_fn=env_scan)
    [row] = scan_many(template.base, [adapter], tmp_path / "out", template=template,
                      executor="ray", ray_options=opts)  # fmt: skip
    assert "allow=1" in row["top_reason"], row


def test_without_ray_the_executor_says_how_to_install_it(
    tiny_organisms: dict[str, Organism], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    res = CliRunner().invoke(main, [
        "scan-many", "--base", tiny_organisms["base"].path, "--adapters",
        tiny_organisms["benign_lora"].path, "--out", str(tmp_path / "out"),
        "--executor", "ray", "--skip", "probes", "--skip", "triggers", "--skip", "behaviour",
    ])  # fmt: skip
    assert res.exit_code != 0
    assert "pip install 'wbsafe[ray]'" in res.output, res.output


def test_scan_config_survives_the_trip_to_a_worker() -> None:
    """What a task receives is the driver's config, field for field."""
    import cloudpickle

    cfg = dataclasses.replace(ScanConfig(base="b"), adapters=("x",), stages=("weights",))
    assert cloudpickle.loads(cloudpickle.dumps(cfg)) == cfg


def test_the_cli_runs_the_ray_executor(
    local_ray: None, tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [
        "scan-many", "--base", tiny_organisms["base"].path, "--adapters",
        tiny_organisms["benign_lora"].path, "--adapters", tiny_organisms["backdoor_lora"].path,
        "--out", str(out), "--executor", "ray", "--task-cpus", "1", "--task-batch", "2",
        "--skip", "probes", "--skip", "triggers", "--skip", "behaviour", "--device", "cpu",
    ])  # fmt: skip
    assert res.exit_code in (0, 3, 4, 5), res.output
    assert "fleet: 2/2 finished (2 done, 0 failed)" in res.output, res.output
    assert (out / "summary.csv").read_text().count("\n") == 3
    assert (out / "backdoor_lora" / "report.json").is_file()
