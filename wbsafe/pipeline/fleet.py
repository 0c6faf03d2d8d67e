"""``scan-many``: vet many adapters for one base, one report each and one summary table.

Base-side work is shared through the base-side caches (refusal directions, base behaviour),
keyed by the base's weight hashes: the first adapter computes them, the rest re-use them.
One adapter's bad file becomes an ERROR row and the rest go on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbsafe import verdict
from wbsafe.config import ScanConfig
from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import write_text_atomic
from wbsafe.pipeline.scan import scan
from wbsafe.progress import Log, no_log

SUMMARY_COLUMNS = ("adapter", "verdict", "top_reason", "report")


def fleet_jobs(
    adapters: Sequence[str | Path], stack: Sequence[Sequence[str | Path]] = ()
) -> list[tuple[str, tuple[str, ...]]]:
    """(name, adapter paths) per scan: each adapter alone, then each stacked combination."""
    jobs: list[tuple[str, tuple[str, ...]]] = [(Path(a).name, (str(a),)) for a in adapters]
    jobs += [("+".join(Path(a).name for a in c), tuple(str(a) for a in c)) for c in stack]
    return jobs


def summary_row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    """One adapter's summary row: its verdict and the worst reason behind it."""
    reasons = report["decision"]["reasons"]
    top = max(reasons, key=lambda r: verdict.rank(r["verdict"]), default=None)
    return {
        "adapter": name,
        "verdict": report["decision"]["verdict"],
        "top_reason": top["message"] if top else "",
        "report": str(Path(name) / "report.html"),
    }


def scan_many(
    base: str | Path,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    stack: Sequence[Sequence[str | Path]] = (),
    template: ScanConfig | None = None,
    log: Log = no_log,
) -> list[dict[str, Any]]:
    """Scan every adapter (and stacked combination) against ``base`` into ``out/<name>``;
    write ``summary.md`` and ``summary.csv``; return the summary rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = template or ScanConfig(base=str(base))
    rows: list[dict[str, Any]] = []
    for name, combo in fleet_jobs(adapters, stack):
        log(f"--- {name}")
        cfg = dataclasses.replace(base_cfg, base=str(base), tuned=None, adapters=combo)
        try:
            report = scan(cfg, out / name, log=log)
        except WbsafeError as exc:
            log(f"{name}: {exc}")
            rows.append({"adapter": name, "verdict": verdict.ERROR, "top_reason": str(exc),
                         "report": ""})  # fmt: skip
            continue
        rows.append(summary_row(name, report))
    write_summary(base, rows, out)
    return rows


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting with ``=``, ``+``, ``-``, ``@`` (or a
    tab or carriage return) gets a leading quote. Adapter names and reasons come from files
    wbsafe does not trust."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_summary(base: str | Path, rows: list[dict[str, Any]], out: Path) -> None:
    """``summary.csv`` (one row per scan) and ``summary.md`` (the same as a table)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS))
    writer.writeheader()
    writer.writerows([{k: csv_cell(v) for k, v in r.items()} for r in rows])
    write_text_atomic(out / "summary.csv", buf.getvalue())
    md = [
        "# wbsafe scan-many",
        "",
        f"base: `{base}`",
        "",
        "| adapter | verdict | top reason | report |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        reason = r["top_reason"].replace("|", "\\|").replace("\n", " ")
        md.append(f"| {r['adapter']} | **{r['verdict']}** | {reason} | {r['report']} |")
    write_text_atomic(out / "summary.md", "\n".join(md) + "\n")
