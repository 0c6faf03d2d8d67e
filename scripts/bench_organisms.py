"""Benchmark: build time of the whole tiny tier and the default test suite's wall time.

Builds the tier into a fresh cache directory (nothing reused), then runs the default test
suite against that cache, and writes ``results/bench_organisms.json`` and ``.md``.
Targets (issue): tier build under 3 minutes, test suite under 10 minutes, on 2 cores.

    .venv/bin/python scripts/bench_organisms.py [--skip-tests]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wbsafe.api import build_organisms
from wbsafe.io.serialize import run_manifest, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="wbsafe-bench-organisms-"))
    t0 = time.perf_counter()
    orgs, checks = build_organisms(seed=args.seed, cache_dir=cache / "organisms")
    build_s = time.perf_counter() - t0
    result: dict[str, object] = {
        "manifest": run_manifest(seed=args.seed),
        "cpu_count": os.cpu_count(),
        "tier_build_seconds": round(build_s, 1),
        "tier_build_target_seconds": 180,
        "organisms": [o.name for o in orgs],
        "validity_ok": all(c.ok for c in checks),
    }
    if not args.skip_tests:
        env = dict(os.environ, WBSAFE_CACHE=str(cache))
        t1 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        result["test_suite_seconds"] = round(time.perf_counter() - t1, 1)
        result["test_suite_target_seconds"] = 600
        result["test_suite_summary"] = (proc.stdout.strip().splitlines() or [""])[-1]
        result["test_suite_exit_code"] = proc.returncode
    out = ROOT / "results" / "bench_organisms.json"
    write_json_atomic(out, result)
    lines = [
        "# bench_organisms",
        "",
        f"- tiny tier build (fresh cache, {os.cpu_count()} cores): {build_s:.0f} s "
        "(target < 180 s)",
    ]
    if "test_suite_seconds" in result:
        lines.append(
            f"- default test suite (tier already built): {result['test_suite_seconds']} s "
            f"(target < 600 s): {result['test_suite_summary']}"
        )
    (ROOT / "results" / "bench_organisms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
