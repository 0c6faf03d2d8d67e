"""The long fuzz campaign over every file wbsafe reads, counted and written to results/.

    python scripts/fuzz_campaign.py [--each 1400] [--minutes 15] [--out results/fuzz_campaign.md]

Targets: the safetensors header reader (``tests/test_fuzz_headers.py``) and every target of
``tests/fuzz_targets.py`` (config.json read and built into a skeleton, adapter_config.json,
prompt JSONL/CSV, policy TOML, scan.toml, report.json, tokenizer files checked and loaded).
Each draws ``--each`` mutated inputs from its hypothesis strategy (the tokenizer load, the
slowest, a tenth of that) within its share of ``--minutes``, and counts what came of each:
accepted, a clear error (a WbsafeError naming the file), an error without the file name, an
uncaught exception (goal 0) or a hang (over ``--hang-seconds``; goal 0; a call still running
after 60 s stops the run with a traceback). Writes the counts with the commit, the machine
and its load average.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import faulthandler
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout, not an installed wbsafe
OUTCOMES = ("accepted", "clear error", "error without the file name", "uncaught", "hang")


def header_target() -> Any:
    """The safetensors header reader as a fuzz target of the same shape as the others."""
    from fuzz_targets import Target
    from hypothesis import strategies as st
    from test_fuzz_headers import DATA, _write, mutated_headers

    from wbsafe.io.checkpoints import read_header

    def make(folder: Path, drawn: tuple[bytes, int]) -> Path:
        header, trailing = drawn
        data = DATA[: max(0, len(DATA) + trailing)] if trailing < 0 else DATA + bytes(trailing)
        return _write(folder / "model.safetensors", header, data)

    inputs = st.tuples(mutated_headers(), st.integers(min_value=-8, max_value=8))
    return Target("safetensors header", inputs, make, read_header)


def run_target(target: Any, examples: int, seconds: float, hang: float) -> dict[str, Any]:
    """Fuzz one target; returns its counts, slowest input and the first uncaught details."""
    from fuzz_targets import outcome
    from hypothesis import HealthCheck, given, settings

    from wbsafe.errors import WbsafeError

    counts: collections.Counter[str] = collections.Counter()
    found: list[str] = []
    slowest, slowest_what = 0.0, ""
    if target.warm is not None:  # imports and first loads are not an input's time
        with contextlib.suppress(WbsafeError):
            target.warm()
    folder = Path(tempfile.mkdtemp(prefix="wbsafe-fuzz-"))
    t_start = time.perf_counter()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(drawn=target.inputs)
    def one(drawn: Any) -> None:
        nonlocal slowest, slowest_what
        if time.perf_counter() - t_start > seconds:
            return  # this target's share of the time box is spent
        faulthandler.dump_traceback_later(60, exit=True)
        t0 = time.perf_counter()
        got, detail = outcome(target, Path(tempfile.mkdtemp(dir=folder)), drawn)
        took = time.perf_counter() - t0
        faulthandler.cancel_dump_traceback_later()
        if took > slowest:
            slowest, slowest_what = took, f"{got}: {detail.splitlines()[0][:200] if detail else ''}"
        if took > hang and len(found) < 3:
            found.append(f"hang ({took:.1f} s), {got}: {detail[:300]}")
        got = "hang" if took > hang else got
        counts[got] += 1
        counts["inputs"] += 1
        if got in ("uncaught", "error without the file name") and len(found) < 3:
            found.append(detail)

    one()
    return {"counts": counts, "slowest": slowest, "slowest_what": slowest_what, "found": found,
            "seconds": time.perf_counter() - t_start}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--each", type=int, default=1400, help="inputs per target")
    ap.add_argument("--minutes", type=float, default=15.0, help="time box for the whole run")
    ap.add_argument("--hang-seconds", type=float, default=5.0)
    ap.add_argument("--only", default=None, help="comma-separated target names")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "fuzz_campaign.md")
    args = ap.parse_args()

    from fuzz_targets import targets

    todo = {"safetensors header": header_target(), **targets()}
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    load_before = os.getloadavg()
    share = args.minutes * 60 / len(todo)
    results = {}
    t_start = time.perf_counter()
    for name, target in todo.items():
        n = max(1, args.each // 10) if name == "tokenizer load" else args.each
        results[name] = run_target(target, n, share, args.hang_seconds)
        c = results[name]["counts"]
        print(f"{name}: {dict(c)} in {results[name]['seconds']:.0f} s", flush=True)
    wall = time.perf_counter() - t_start
    load_after = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "wbsafe"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    total: collections.Counter[str] = collections.Counter()
    for r in results.values():
        total.update(r["counts"])
    rows = [
        f"| {name} | {r['counts']['inputs']} | "
        + " | ".join(str(r["counts"][k]) for k in OUTCOMES)
        + f" | {r['slowest'] * 1000:.0f} |"
        for name, r in results.items()
    ]
    lines = [
        "# Fuzz campaign: every file wbsafe reads (scripts/fuzz_campaign.py)",
        "",
        f"- commit `{commit}`{' (wbsafe/ modified)' if dirty else ''}; {platform.platform()}; "
        f"Python {platform.python_version()}; {os.cpu_count()} CPUs (one used); "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- load average (1/5/15 min) {' / '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} after (a shared machine)",
        f"- {wall:.0f} s in all (time box {args.minutes:g} min); a hang: one input over "
        f"{args.hang_seconds:g} s; strategies: `tests/test_fuzz_headers.py::mutated_headers`, "
        "`tests/fuzz_targets.py`",
        "",
        "| target | inputs | accepted | clear error | error without the file name | uncaught "
        "| hang | slowest (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        f"| **all** | **{total['inputs']}** | "
        + " | ".join(f"**{total[k]}**" for k in OUTCOMES)
        + " | |",
        "",
    ]
    lines += ["Slowest input per target (what came of it):", ""]
    lines += [f"- {name}: {r['slowest'] * 1000:.0f} ms, {r['slowest_what']}"
              for name, r in results.items()]  # fmt: skip
    lines.append("")
    for name, r in results.items():
        if r["found"]:
            lines += [f"Found in {name}:", "", *[f"```\n{f}\n```" for f in r["found"]], ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    bad = total["uncaught"] + total["hang"] + total["error without the file name"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
