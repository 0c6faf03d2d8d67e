"""The long fuzz campaign of the safetensors header reader, counted and written to results/.

    python scripts/fuzz_campaign.py [--examples 10000] [--out results/fuzz_campaign.md]

Draws mutated headers from the same hypothesis strategy as ``tests/test_fuzz_headers.py``
and runs ``read_header`` on each, counting what came of it: accepted, a clear error
(CheckpointFormatError naming the file), an uncaught exception (goal 0) or a hang (more
than ``--hang-seconds``; goal 0). Writes the counts with the commit and the machine.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--hang-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "fuzz_campaign.md")
    args = ap.parse_args()

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_fuzz_headers import DATA, _write, mutated_headers

    from wbsafe.errors import CheckpointFormatError
    from wbsafe.io.checkpoints import read_header

    counts: collections.Counter[str] = collections.Counter()
    uncaught: list[str] = []
    slowest = 0.0
    folder = Path(tempfile.mkdtemp(prefix="wbsafe-fuzz-"))

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(header=mutated_headers(), trailing=st.integers(min_value=-8, max_value=8))
    def one(header: bytes, trailing: int) -> None:
        nonlocal slowest
        data = DATA[: max(0, len(DATA) + trailing)] if trailing < 0 else DATA + bytes(trailing)
        path = _write(folder / "model.safetensors", header, data)
        t0 = time.perf_counter()
        try:
            read_header(path)
            outcome = "accepted"
        except CheckpointFormatError as exc:
            outcome = "clear error" if str(path) in str(exc) else "error without the file name"
        except Exception:
            outcome = "uncaught exception"
            uncaught.append(traceback.format_exc(limit=2)[-600:])
        took = time.perf_counter() - t0
        slowest = max(slowest, took)
        counts["hang" if took > args.hang_seconds else outcome] += 1
        counts["inputs"] += 1

    t_start = time.perf_counter()
    one()
    wall = time.perf_counter() - t_start
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    lines = [
        "# Fuzz campaign: safetensors header reader (scripts/fuzz_campaign.py)",
        "",
        f"- commit `{commit}`; {platform.platform()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs; {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- strategy: `tests/test_fuzz_headers.py::mutated_headers`; {wall:.1f} s in all, "
        f"slowest input {slowest * 1000:.1f} ms (a hang: over {args.hang_seconds:g} s)",
        "",
        "| outcome | inputs |",
        "| --- | --- |",
        *[f"| {k} | {counts[k]} |" for k in ("inputs", "accepted", "clear error",
                                             "error without the file name",
                                             "uncaught exception", "hang")],
        "",
        *(["Uncaught:", "", *[f"```\n{u}\n```" for u in uncaught[:5]]] if uncaught else []),
    ]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 1 if uncaught or counts["hang"] or counts["error without the file name"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
