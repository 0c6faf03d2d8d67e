"""``scan-many``: vet many adapters for one base, one report each and one summary table.

Base-side work is shared through the base-side caches (refusal directions, base behaviour),
keyed by the base's weight hashes: the first adapter computes them, the rest re-use them.
One adapter's bad file becomes an ERROR row and the rest go on. Two executors give the same
rows and reports: ``local`` (here, one scan after another, optionally over one loaded base
with the adapters swapped in) and ``ray`` (:mod:`wbsafe.pipeline.fleet_ray`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe import verdict
from wbsafe.config import ScanConfig
from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import write_text_atomic
from wbsafe.pipeline.fleet_progress import FleetProgress
from wbsafe.pipeline.scan import scan
from wbsafe.progress import Log, no_log

if TYPE_CHECKING:
    from wbsafe.io.adapter_switch import AdapterSwitcher
    from wbsafe.pipeline.fleet_ray import RayOptions

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


ScanFn = Callable[..., dict[str, Any]]
"""What runs one scan: :func:`~wbsafe.pipeline.scan.scan`'s signature (``config, out_dir,
log=``); another callable only in tests."""


def error_row(name: str, cause: str) -> dict[str, Any]:
    """The summary row of a scan that could not finish, with its cause."""
    return {"adapter": name, "verdict": verdict.ERROR, "top_reason": cause, "report": ""}


def run_job(
    name: str, config: ScanConfig, out: Path, *, scan_fn: ScanFn = scan, log: Log = no_log,
    switcher: AdapterSwitcher | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Scan one job into ``out/name``; a :class:`WbsafeError` becomes its ERROR row.
    ``switcher``: the loaded base to swap this job's adapters into."""
    extra = {} if switcher is None else {"switcher": switcher}
    try:
        report = scan_fn(config, out / name, log=log, **extra)
    except WbsafeError as exc:
        log(f"{name}: {exc}")
        return error_row(name, str(exc))
    return summary_row(name, report)


def fleet_configs(
    base: str | Path,
    adapters: Sequence[str | Path],
    stack: Sequence[Sequence[str | Path]] = (),
    template: ScanConfig | None = None,
) -> list[tuple[str, ScanConfig]]:
    """(name, scan config) per job of :func:`fleet_jobs`, from the ``template``."""
    base_cfg = template or ScanConfig(base=str(base))
    return [(name, dataclasses.replace(base_cfg, base=str(base), tuned=None, adapters=combo))
            for name, combo in fleet_jobs(adapters, stack)]  # fmt: skip


def scan_many(
    base: str | Path,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    stack: Sequence[Sequence[str | Path]] = (),
    template: ScanConfig | None = None,
    log: Log = no_log,
    executor: str = "local",
    ray_options: RayOptions | None = None,
    switch_adapters: bool = False,
) -> list[dict[str, Any]]:
    """Scan every adapter (and stacked combination) against ``base`` into ``out/<name>``;
    write ``summary.md`` and ``summary.csv``; return the summary rows.

    ``executor``: ``local`` (one scan after another in this process) or ``ray`` (a Ray task
    per scan or per batch, :mod:`wbsafe.pipeline.fleet_ray`; ``ray_options`` say where and
    with what). ``switch_adapters`` (local): load the base once and swap each job's adapters
    in (:mod:`wbsafe.io.adapter_switch`) instead of loading base and adapters per job."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = fleet_configs(base, adapters, stack, template)
    if executor == "ray":
        from wbsafe.pipeline.fleet_ray import RayOptions, run_on_ray

        rows = run_on_ray(jobs, out, ray_options or RayOptions(), log=log)
    elif executor == "local":
        rows = run_local(jobs, out, log=log, switch_adapters=switch_adapters)
    else:
        raise WbsafeError(f"unknown executor {executor!r}; choose local or ray")
    write_summary(base, rows, out)
    return rows


def run_local(
    jobs: Sequence[tuple[str, ScanConfig]], out: Path, *, log: Log = no_log,
    switch_adapters: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """The jobs one after another in this process; the first computes the base side."""
    from wbsafe.io.adapter_switch import AdapterSwitcher

    switcher = AdapterSwitcher(jobs[0][1].runtime) if switch_adapters and jobs else None
    progress = FleetProgress(len(jobs), log)
    rows: list[dict[str, Any]] = []
    for name, cfg in jobs:
        log(f"--- {name}")
        progress.start(name)
        rows.append(run_job(name, cfg, out, log=log, switcher=switcher))
        progress.finish(name, error=rows[-1]["verdict"] == verdict.ERROR)
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
