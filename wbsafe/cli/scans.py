"""Scans and their reports: ``scan``, ``scan-many``, ``gate``, ``report``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wbsafe import verdict
from wbsafe.cli.app import (
    _log,
    _need_tuned,
    _stderr,
    handle_errors,
    main,
    model_options,
    placement_options,
    runtime_options,
)
from wbsafe.config import STAGES


@main.command()
@model_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Report directory.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="scan.toml with ScanConfig fields; flags given here override it.",
)
@click.option("--risk", type=click.Choice(["low", "standard", "high"]), default=None)
@click.option("--policy", type=click.Path(path_type=Path), default=None, help="Gate policy TOML.")
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice([*STAGES, "behavior"]),
    help="Switch a stage off (repeatable).",
)
@click.option("--prompts", default=None, help="Harmful prompts: suite name, JSONL or CSV.")
@click.option("--max-prompts", type=int, default=None, help="Cap per evaluation set.")
@click.option("--trigger", "triggers", multiple=True, help="Extra trigger candidate (repeatable).")
@click.option("--seed", type=int, default=None)
@runtime_options
@placement_options
@handle_errors
def scan(
    base: Path, tuned: Path | None, adapters: tuple[Path, ...], out: Path,
    config_file: Path | None, risk: str | None, policy: Path | None, skip: tuple[str, ...],
    prompts: str | None, max_prompts: int | None, triggers: tuple[str, ...], seed: int | None,
    device: str, dtype: str, device_map: str | None, offload_folder: Path | None,
    max_batch: int | None,
) -> None:  # fmt: skip
    """Run every analysis, gate the evidence, write report.json/.md/.html; exit with the verdict."""
    from wbsafe.api import build_scan_config, run_scan

    _need_tuned(tuned, adapters)
    config = build_scan_config(
        base=base, tuned=tuned, adapters=adapters, config_file=config_file, risk=risk,
        policy=policy, skip=skip, prompts=prompts, max_prompts=max_prompts, triggers=triggers,
        seed=seed, device=device, dtype=dtype, device_map=device_map,
        offload_folder=offload_folder, max_batch=max_batch,
    )  # fmt: skip
    from rich.console import Console

    from wbsafe.report.console import print_console_summary, progress_bars

    err = _stderr()  # one console: messages print above the live bars
    with progress_bars(err) as progress:
        report = run_scan(config, out, log=_log(err), progress=progress)
    files = {name: out / name for name in ("report.json", "report.md", "report.html")}
    print_console_summary(report, Console(), files=files)
    sys.exit(report["exit_code"])


@main.command("gate")
@click.argument("report_json", type=click.Path(path_type=Path))
@click.option("--policy", type=click.Path(path_type=Path), default=None, help="Policy TOML.")
@click.option("--risk", type=click.Choice(["low", "standard", "high"]), default=None)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the decision as JSON here.")  # fmt: skip
@handle_errors
def gate_cmd(
    report_json: Path, policy: Path | None, risk: str | None, json_out: Path | None
) -> None:
    """Re-decide a saved report.json under a policy, without loading any model."""
    from wbsafe.api import redecide, save_decision
    from wbsafe.report.console import print_decision

    decision = redecide(report_json, policy=policy, risk=risk)
    print_decision(decision)
    if json_out:
        save_decision(decision, json_out)
    sys.exit(decision.exit_code)


@main.command("report")
@click.argument("report_json", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="html",
              show_default=True)  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=None)
@handle_errors
def report_cmd(report_json: Path, fmt: str, out: Path | None) -> None:
    """Re-render a saved report.json as Markdown or self-contained HTML."""
    from wbsafe.api import rerender

    path = rerender(report_json, fmt, out)
    click.echo(str(path))


@main.command("scan-many")
@click.option("--base", type=click.Path(path_type=Path), required=True)
@click.option("--adapters", "adapter_dirs", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="Adapter dir, or a dir of adapter dirs (repeatable).")  # fmt: skip
@click.option("--stack", multiple=True, help="Comma-separated adapter dirs to scan stacked.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None)
@click.option("--risk", type=click.Choice(["low", "standard", "high"]), default=None)
@click.option("--skip", multiple=True,
              type=click.Choice([*STAGES, "behavior"]))  # fmt: skip
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="local: one scan after another here; ray: a Ray task per scan.")  # fmt: skip
@click.option("--ray-address", default=None,
              help="Ray cluster to join (ray start --head prints it); default: RAY_ADDRESS, "
                   "else a local Ray on this machine.")  # fmt: skip
@click.option("--task-cpus", type=float, default=1.0, show_default=True,
              help="CPUs each Ray task declares (and its torch threads).")  # fmt: skip
@click.option("--task-gpus", type=float, default=0.0, show_default=True,
              help="GPUs each Ray task declares.")  # fmt: skip
@click.option("--task-batch", type=int, default=1, show_default=True,
              help="Adapters per Ray task: a task loads the base once and swaps them in.")  # fmt: skip
@click.option("--switch-adapters", is_flag=True,
              help="In-process: load the base once and swap each adapter in (PEFT) instead "
                   "of loading base and adapter per scan.")  # fmt: skip
@runtime_options
@placement_options
@handle_errors
def scan_many_cmd(
    base: Path, adapter_dirs: tuple[Path, ...], stack: tuple[str, ...], out: Path,
    config_file: Path | None, risk: str | None, skip: tuple[str, ...], executor: str,
    ray_address: str | None, task_cpus: float, task_gpus: float, task_batch: int,
    switch_adapters: bool, device: str, dtype: str,
    device_map: str | None, offload_folder: Path | None, max_batch: int | None,
) -> None:  # fmt: skip
    """Vet many adapters for one base (base-side work done once); writes summary.md/.csv."""
    from wbsafe.api import build_scan_config, find_adapters, ray_options, scan_many

    found = find_adapters(adapter_dirs)
    template = build_scan_config(base=base, config_file=config_file, risk=risk, skip=skip,
                                 device=device, dtype=dtype, device_map=device_map,
                                 offload_folder=offload_folder, max_batch=max_batch)  # fmt: skip
    combos = [tuple(Path(x) for x in s.split(",")) for s in stack]
    opts = ray_options(address=ray_address, num_cpus=task_cpus, num_gpus=task_gpus,
                       batch=task_batch)  # fmt: skip
    rows = scan_many(base, found, out, stack=combos, template=template, log=_log(_stderr()),
                     executor=executor, ray_options=opts, switch_adapters=switch_adapters)  # fmt: skip
    for r in rows:
        click.echo(f"{r['verdict']:<8} {r['adapter']}: {r['top_reason']}")
    click.echo(f"wrote {out / 'summary.md'} and {out / 'summary.csv'}")
    worst = max((r["verdict"] for r in rows), key=verdict.rank, default="DEPLOY")
    sys.exit(1 if worst == verdict.ERROR else verdict.EXIT_CODES[worst])
