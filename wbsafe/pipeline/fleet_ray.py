"""``scan-many --executor ray``: a Ray task per adapter (or per small batch of adapters
sharing one loaded base), on one machine or a cluster.

Ray is an optional extra (``pip install wbsafe[ray]``), imported only when this executor
runs. Each scan is a Ray task declaring ``num_cpus``/``num_gpus``; the driver gathers the
rows into the same ``summary.md``/``summary.csv`` as the in-process executor, and each task
writes the same per-adapter reports (byte-identical, timings aside).

Base-side work (the base's refusal directions and its judged behaviour) goes through the
**content-addressed on-disk cache** (:mod:`wbsafe.pipeline.caches`), not Ray's object
store: the first scan that succeeds runs alone, before the fan-out, and fills the cache;
every later task finds the entry through the same key (the base's weight hashes and the
settings), so what a task reads is exactly what an in-process scan would read. The object
store would need the driver to know each stage's cache key ahead of the scans and a second
path into the stages for the same data. The cost: on a cluster, the cache directory
(``directions_cache`` in scan.toml) and ``--out`` must be on storage every node sees, as
the tasks write their reports and resume records there; a node that sees neither still
scans correctly but recomputes the base side.

Failures stay local: a scan's own error (a bad file) is its ERROR row from inside the task;
an unexpected exception is not retried (``retry_exceptions=False``: it would fail the same
way) and becomes an ERROR row with its cause; a worker that dies (killed, out of memory) is
retried by Ray up to ``max_retries`` times and, if it still dies, reported as an ERROR row.
A rerun re-uses every adapter whose finished report matches its inputs and config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from wbsafe import verdict
from wbsafe.config import ScanConfig
from wbsafe.errors import WbsafeError
from wbsafe.io.containment import ALLOW_ENV
from wbsafe.pipeline.fleet import ScanFn, error_row, run_job, summary_row
from wbsafe.pipeline.fleet_progress import FleetProgress
from wbsafe.pipeline.scan import finished_report, scan
from wbsafe.progress import Log, no_log

INSTALL_HINT = (
    "--executor ray needs Ray, which is not installed: pip install 'wbsafe[ray]' "
    "(or pip install 'ray>=2.40')"
)


@dataclass(frozen=True)
class RayOptions:
    """Where the tasks run and what each declares.

    ``address``: a running cluster (``ray start --head`` prints it; None: ``RAY_ADDRESS`` or
    a local instance started for the run, with ``local_cpus`` CPUs, None: all). ``num_cpus``
    is also the task's torch thread count. ``batch``: scans per task, sharing one loaded
    base (their adapters swapped in). ``scan_fn`` replaces the scan (tests only)."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2
    local_cpus: int | None = None
    batch: int = 1
    scan_fn: ScanFn | None = None


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`WbsafeError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise WbsafeError(INSTALL_HINT) from exc
    return ray


FORWARDED_ENV = (ALLOW_ENV, "WBSAFE_CACHE", "WBSAFE_NATIVE")
"""The driver's settings a worker must see as well: the user's opt-in to links leaving a
model folder (``--allow-outside-links``), the cache folder, the diff engine. A worker on
another node, or one Ray started before the flag was set, would otherwise not have them."""


def forwarded_env() -> dict[str, str]:
    """The :data:`FORWARDED_ENV` variables set in this process, for the tasks' runtime env."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def scan_task(
    jobs: list[tuple[str, ScanConfig]], out: str, threads: int, scan_fn: ScanFn | None
) -> list[dict[str, Any]]:
    """A batch of scans inside a Ray worker; returns their summary rows. More than one
    share a loaded base, their adapters swapped in (:mod:`wbsafe.io.adapter_switch`)."""
    import torch

    from wbsafe.io.adapter_switch import AdapterSwitcher

    torch.set_num_threads(max(1, threads))
    switcher = AdapterSwitcher(jobs[0][1].runtime) if len(jobs) > 1 else None
    return [run_job(name, cfg, Path(out), scan_fn=scan_fn or scan, switcher=switcher)
            for name, cfg in jobs]  # fmt: skip


def task_failure(ray: ModuleType, exc: Exception, name: str, retries: int) -> dict[str, Any]:
    """The ERROR row of a task Ray could not finish."""
    if isinstance(exc, ray.exceptions.RayTaskError):  # the scan raised: not retried
        cause = getattr(exc, "cause", None) or exc
        return error_row(name, f"the scan raised {type(cause).__name__}: {cause}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return error_row(name, f"the Ray worker died ({type(exc).__name__}), also on each of "
                           f"{retries} retries: {first}")  # fmt: skip


def run_on_ray(
    jobs: Sequence[tuple[str, ScanConfig]],
    out: Path,
    options: RayOptions,
    *,
    log: Log = no_log,
) -> list[dict[str, Any]]:
    """Run the jobs as Ray tasks; the rows come back in job order."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        extra = {} if options.local_cpus is None else {"num_cpus": options.local_cpus}
        ray.init(address=options.address, include_dashboard=False, **extra)
    try:
        return _fan_out(ray, jobs, out, options, log)
    finally:
        if started:
            ray.shutdown()


def _fan_out(
    ray: ModuleType,
    jobs: Sequence[tuple[str, ScanConfig]],
    out: Path,
    options: RayOptions,
    log: Log,
) -> list[dict[str, Any]]:
    env = forwarded_env()
    task = ray.remote(scan_task).options(
        num_cpus=options.num_cpus, num_gpus=options.num_gpus,
        max_retries=options.max_retries, retry_exceptions=False,
        **({"runtime_env": {"env_vars": env}} if env else {}),
    )  # fmt: skip
    progress = FleetProgress(len(jobs), log)
    rows: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, (name, cfg) in enumerate(jobs):
        report = finished_report(cfg, out / name)
        if report is None:
            todo.append(i)
            continue
        rows[i] = summary_row(name, report)
        progress.finish(name, error=False, reused=True, started=False)

    def submit(batch: list[int]) -> Any:
        for i in batch:
            progress.start(jobs[i][0])
        threads = max(1, int(options.num_cpus))
        return task.remote([jobs[i] for i in batch], str(out), threads, options.scan_fn)

    def collect(batch: list[int], ref: Any) -> list[dict[str, Any]]:
        try:
            got: list[dict[str, Any]] = ray.get(ref)
        except ray.exceptions.RayError as exc:  # a batch's scans that finished still count
            got = []
            for i in batch:
                name, cfg = jobs[i]
                report = finished_report(cfg, out / name)
                got.append(task_failure(ray, exc, name, options.max_retries) if report is None
                           else summary_row(name, report))  # fmt: skip
        for i, row in zip(batch, got, strict=True):
            rows[i] = row
            progress.finish(row["adapter"], error=row["verdict"] == verdict.ERROR)
            if row["verdict"] == verdict.ERROR:
                log(f"{row['adapter']}: {row['top_reason']}")
        return got

    # the base side first: scans run alone until one succeeds and has filled the cache
    while todo:
        first = [todo.pop(0)]
        if collect(first, submit(first))[0]["verdict"] != verdict.ERROR:
            break
    size = max(1, options.batch)
    batches = [todo[k : k + size] for k in range(0, len(todo), size)]
    in_flight: dict[Any, list[int]] = {}
    slots = _slots(ray, options)
    while batches or in_flight:
        while batches and len(in_flight) < slots:
            batch = batches.pop(0)
            in_flight[submit(batch)] = batch
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            collect(in_flight.pop(ref), ref)
    return [rows[i] for i in range(len(jobs))]


def _slots(ray: ModuleType, options: RayOptions) -> int:
    """How many tasks the cluster can run at once (more would only queue: the console's
    running count stays true)."""
    res = ray.cluster_resources()
    n = res.get("CPU", 1.0) / options.num_cpus if options.num_cpus else float("inf")
    if options.num_gpus:
        n = min(n, res.get("GPU", 0.0) / options.num_gpus)
    return max(1, int(n)) if n != float("inf") else 1 << 16
