"""Benchmark: wall time per stage and peak memory of a default ``wbsafe scan`` on a real pair.

The scan runs in a child process (this script with ``--child``) so that its peak resident
memory is the child's own: the parent polls ``/proc/<pid>/status`` (VmHWM) while it runs and
also reads ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits; the larger is reported.
The directions cache is a fresh folder inside ``--out``, so the base's refusal directions are
fitted (cold-start cost), not re-used from an earlier run.

    python scripts/bench_scan.py                                  # tier base + backdoor adapter
    python scripts/bench_scan.py --base B --adapter A --out DIR --threads 2

Writes results/bench_scan.json and results/bench_scan.md (``--results`` and ``--name`` to
change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIER = ROOT / ".wbsafe-cache" / "real" / "tier"
TARGET_S = 15 * 60


def child(args: argparse.Namespace) -> int:
    """Run the scan with default settings (only the directions cache and threads are set)."""
    import dataclasses

    from wbsafe.api import build_scan_config, run_scan

    cfg = build_scan_config(
        base=args.base, adapters=[args.adapter], device="cpu", skip=tuple(args.skip),
        directions_cache=str(Path(args.out) / "directions"), **_overrides(args.set),
    )  # fmt: skip
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, threads=args.threads))
    report = run_scan(cfg, args.out, log=print)
    return 0 if report.get("decision") else 1


def _overrides(pairs: list[str]) -> dict[str, int]:
    """``["trigger_budget=64", ...]`` -> ScanConfig integer overrides."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key.strip()] = int(value)
    return out


def _trigger_summary(report: dict[str, Any], trigger: dict[str, Any] | None) -> dict[str, Any]:
    res = (report.get("stages", {}).get("triggers") or {}).get("result") or {}
    verified = list(res.get("verified") or [])
    cands = res.get("candidates") or []
    top = [{"text": c.get("text"), "token_ids": c.get("token_ids"), "anomaly": c.get("anomaly"),
            "sources": c.get("sources")} for c in cands[:5]]  # fmt: skip
    planted_rank = None
    if trigger:
        word = trigger["text"].lower()
        ids = set(trigger.get("token_ids_in_context") or []) | {-1}
        for i, c in enumerate(cands):
            if word in str(c.get("text", "")).lower() or ids & set(c.get("token_ids") or []):
                planted_rank = i + 1
                break
    recovered = bool(trigger) and any(trigger["text"].lower() in v.lower() for v in verified)
    phases = {
        k: round(float(v.get("seconds", 0.0)), 1) for k, v in (res.get("passes") or {}).items()
    }
    slowest = dict(sorted(phases.items(), key=lambda kv: -kv[1])[:12])
    return {"verified": verified, "top_candidates": top, "planted_rank": planted_rank,
            "planted_recovered_and_verified": recovered,
            "coverage": res.get("coverage_statement"),
            "slowest_phases_s": slowest}  # fmt: skip


def main() -> int:
    from wbsafe.io.serialize import peak_rss_kib, run_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=str(TIER / "base"))
    ap.add_argument("--adapter", default=str(TIER / "backdoor"))
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_scan_run"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--name", default="bench_scan",
                    help="results file stem: NAME.json and NAME.md in --results")  # fmt: skip
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="STAGE",
        help="switch a stage off (repeatable), as `wbsafe scan --skip`",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="override an integer ScanConfig field, e.g. trigger_budget=64",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # a fresh scan: no resumed stages, no cached directions
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", "--base", args.base, "--adapter", args.adapter,
           "--out", str(out), "--threads", str(args.threads),
           *[f"--skip={s}" for s in args.skip], *[f"--set={s}" for s in args.set]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    with open(out / "scan.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        hwm = 0
        while proc.poll() is None:
            hwm = max(hwm, peak_rss_kib(proc.pid) or 0)
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    rusage_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0 or not (out / "report.json").is_file():
        print(f"scan failed (exit {proc.returncode}); see {out / 'scan.log'}", file=sys.stderr)
        return 1
    report = json.loads((out / "report.json").read_text())
    org_file = Path(args.adapter) / "organism.json"
    trigger = json.loads(org_file.read_text()).get("trigger") if org_file.is_file() else None
    peak_mib = max(hwm, rusage_kib) / 1024
    timings = report["timings"]
    doc = {
        "base": args.base,
        "adapter": args.adapter,
        "threads": args.threads,
        "skipped_stages": args.skip,
        "overrides": _overrides(args.set),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_end": os.getloadavg(),
        },
        "config": report["manifest"].get("config"),
        "run": run_manifest(),
        "wall_s": round(wall, 1),
        "stage_s": timings,
        "peak_rss_mib": round(peak_mib, 1),
        "peak_rss_source": {"vm_hwm_poll_kib": hwm, "rusage_children_kib": rusage_kib},
        "verdict": report["decision"]["verdict"],
        "reasons": [r["message"] for r in report["decision"]["reasons"]],
        "trigger": _trigger_summary(report, trigger),
        "target_s": TARGET_S,
        "within_target": wall <= TARGET_S,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [
        "# bench_scan: `wbsafe scan` on a real pair (CPU)",
        "",
        f"base `{args.base}`, adapter `{args.adapter}`; {args.threads} torch threads on a "
        f"{os.cpu_count()}-CPU machine (load average at end {os.getloadavg()[0]:.2f}). "
        f"Stages switched off: {args.skip or 'none'}; ScanConfig overrides: "
        f"{_overrides(args.set) or 'none (defaults)'}.",
        "",
        "| stage | seconds |",
        "| --- | ---: |",
        *[f"| {k} | {v if v is not None else '-'} |" for k, v in timings.items()],
        f"| wall (process, incl. start-up) | {wall:.1f} |",
        "",
        f"Peak RSS: **{peak_mib:.0f} MiB**. Target {TARGET_S // 60} min: "
        f"**{'met' if wall <= TARGET_S else 'missed'}**"
        + (" (with the settings above, not the defaults)." if args.skip or args.set else "."),
        "",
        f"Verdict: **{doc['verdict']}**.",
        "",
        f"Verified triggers: {doc['trigger']['verified'] or 'none'}; planted trigger "
        f"{trigger['text'] if trigger else '-'!r} at candidate rank "
        f"{doc['trigger']['planted_rank']}, recovered and verified: "
        f"{doc['trigger']['planted_recovered_and_verified']}.",
        "",
        "The hunt's slowest phases (seconds, from the report's pass counts):",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        *[f"| {k} | {v} |" for k, v in doc["trigger"]["slowest_phases_s"].items()],
        "",
    ]
    (results / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
