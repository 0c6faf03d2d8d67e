"""Benchmark: adapters per hour through ``scan-many``, in-process vs Ray with 1 and 2 workers,
and with the base loaded once and the adapters swapped in vs reloaded per adapter.

The fleet is ``--n`` tiny-tier LoRA adapters (byte copies of the tier's LoRA organisms,
each in its own directory). Every run starts with an empty base-side cache, so each
computes the base's refusal directions and behaviour exactly once (the first scan) and
re-uses them for the rest: the base work is counted once per run. Scans use the default
settings less the trigger hunt (``--skip triggers``; ``--with-triggers`` keeps it), on the
CPU in float32, one torch thread per worker. A Ray run's wall time includes starting the
local Ray instance (``ray.init``), reported apart too. Every run must give the same
``summary.csv``; the file records whether it did.

    nice -n 10 python scripts/bench_fleet.py               # 16 adapters, ~12 min on 2 cores
    python scripts/bench_fleet.py --n 4 --runs local       # a quick look

Writes results/bench_fleet.json and results/bench_fleet.md (``--results`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LORAS = ("benign_lora", "backdoor_lora", "backdoor_hate_lora")
# name -> (Ray workers, None: in-process; adapters per Ray task; swap adapters over one base)
RUNS = {
    "local": (None, 1, False),
    "local_switch": (None, 1, True),
    "ray1": (1, 1, False),
    "ray2": (2, 1, False),
    "ray2_batch4": (2, 4, True),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_fleet(n: int, root: Path) -> tuple[str, list[Path]]:
    """The tier's base and ``n`` adapter copies, cycling through its LoRA organisms."""
    from wbsafe.organisms import build_tiny_tier

    orgs = {o.name: o for o in build_tiny_tier()}
    root.mkdir(parents=True, exist_ok=True)
    fleet = []
    for i in range(n):
        kind = LORAS[i % len(LORAS)]
        fleet.append(Path(shutil.copytree(orgs[kind].path, root / f"{i:02d}_{kind}")))
    return orgs["base"].path, fleet


def run_one(name: str, base: str, fleet: list[Path], work: Path,
            skip: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """One fleet scan with a fresh cache and output; returns its timings and summary."""
    import torch

    workers, batch, switch = RUNS[name]
    from wbsafe.api import build_scan_config, ray_options, scan_many

    out, cache = work / name / "out", work / name / "cache"
    shutil.rmtree(work / name, ignore_errors=True)
    cfg = build_scan_config(base=base, skip=skip, device="cpu", dtype="float32",
                            directions_cache=str(cache))  # fmt: skip
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, threads=1))
    torch.set_num_threads(1)
    lines: list[str] = []
    ray_start, load_before = 0.0, os.getloadavg()[0]
    t0 = time.perf_counter()
    if workers is None:
        rows = scan_many(base, fleet, out, template=cfg, log=lines.append, switch_adapters=switch)
    else:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=100 * 1024**2)
        ray_start = time.perf_counter() - t0
        try:
            rows = scan_many(base, fleet, out, template=cfg, log=lines.append, executor="ray",
                             ray_options=ray_options(num_cpus=1, batch=batch))  # fmt: skip
        finally:
            ray.shutdown()
    wall = time.perf_counter() - t0
    first = json.loads((out / rows[0]["adapter"] / "report.json").read_text())
    rest = [json.loads((out / r["adapter"] / "report.json").read_text())["timings"]["total"]
            for r in rows[1:]]  # fmt: skip
    return {
        "run": name, "workers": workers or 1, "executor": "ray" if workers else "local",
        "adapters_per_task": batch if workers else None,
        "base_loaded_once_adapters_swapped": switch,
        "adapters": len(rows), "errors": sum(r["verdict"] == "ERROR" for r in rows),
        "wall_s": round(wall, 1), "ray_start_s": round(ray_start, 1),
        "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "adapters_per_hour": round(len(rows) / wall * 3600, 1),
        "first_scan_s (computes the base side)": first["timings"]["total"],
        "mean_later_scan_s": round(sum(rest) / max(1, len(rest)), 2),
        "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in sorted({r["verdict"] for r in rows})},
        "summary_csv": (out / "summary.csv").read_text(),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="adapters in the fleet")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--with-triggers", action="store_true", help="keep the trigger hunt")
    ap.add_argument("--work", default=str(ROOT / "results" / "bench_fleet_run"))
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args()

    from wbsafe.io.serialize import git_commit, package_versions, write_json_atomic

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    base, fleet = make_fleet(args.n, work / "adapters")
    skip = () if args.with_triggers else ("triggers",)
    load_start = os.getloadavg()
    runs = []
    for name in args.runs:
        print(f"--- {name}", flush=True)
        runs.append(run_one(name, base, fleet, work, skip))
        print(f"{name}: {runs[-1]['wall_s']} s, {runs[-1]['adapters_per_hour']} adapters/hour",
              flush=True)  # fmt: skip
    same = len({r["summary_csv"] for r in runs}) == 1
    import ray

    doc = {
        "adapters": args.n, "organisms": [LORAS[i % len(LORAS)] for i in range(args.n)],
        "skipped_stages": list(skip), "device": "cpu", "dtype": "float32",
        "torch_threads_per_worker": 1, "same_summary_in_every_run": same,
        "runs": [{k: v for k, v in r.items() if k != "summary_csv"} for r in runs],
        "manifest": {
            "git_commit": git_commit(ROOT), "versions": {**package_versions(), "ray": ray.__version__},
            "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(),
                        "platform": platform.platform(), "load_avg_at_start": load_start,
                        "load_avg_at_end": os.getloadavg()},
        },
    }  # fmt: skip
    by = {r["run"]: r for r in runs}

    def ratio(a: str, b: str) -> float | None:
        if a in by and b in by:
            return round(by[a]["adapters_per_hour"] / by[b]["adapters_per_hour"], 2)
        return None

    scaling, swapping = ratio("ray2", "ray1"), ratio("local_switch", "local")
    doc["ray_scaling_1_to_2_workers"] = scaling
    doc["switching_speedup_in_process"] = swapping
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results / "bench_fleet.json", doc)
    md = [
        "# bench_fleet: adapters per hour through scan-many",
        "",
        f"{args.n} tiny-tier LoRA adapters ({', '.join(LORAS)} in turn, each a copy in its own "
        f"dir), default scan settings less {', '.join(skip) or 'nothing'}, cpu float32, one "
        "torch thread per worker; each run starts with an empty base-side cache (the base "
        "work is done once, by its first scan). Ray wall time includes starting Ray.",
        "",
        "| run | workers | adapters per Ray task | base once, adapters swapped | wall (s) | "
        "Ray start (s) | adapters/hour | first scan (s) | later scans, mean (s) | load avg "
        "before -> after | verdicts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["runs"]:
        md.append(f"| {r['run']} | {r['workers']} | {r['adapters_per_task'] or '—'} | "
                  f"{'yes' if r['base_loaded_once_adapters_swapped'] else 'no'} | {r['wall_s']} | {r['ray_start_s']} | "
                  f"{r['adapters_per_hour']} | {r['first_scan_s (computes the base side)']} | "
                  f"{r['mean_later_scan_s']} | {r['load_avg_1min_before_after'][0]} -> "
                  f"{r['load_avg_1min_before_after'][1]} | {r['verdicts']} |")  # fmt: skip
    m = doc["manifest"]
    md += [
        "",
        f"Same summary.csv in every run: {'yes' if same else 'NO'}.",
        f"Ray throughput, 2 workers / 1 worker: {scaling if scaling is not None else 'not run'}.",
        "In-process throughput, base loaded once and adapters swapped / base reloaded per "
        f"adapter: {swapping if swapping is not None else 'not run'}.",
        "",
        f"Machine: {m['machine']['cpu_model']}, {m['machine']['cores']} cores, load average "
        f"{m['machine']['load_avg_at_start']} at start, {m['machine']['load_avg_at_end']} at "
        f"end (other jobs share these cores). Commit {m['git_commit']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
    ]
    (results / "bench_fleet.md").write_text("\n".join(md) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
