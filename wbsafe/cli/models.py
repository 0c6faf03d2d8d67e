"""Commands about models and organisms: ``inspect``, ``organisms build|plant``, ``demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from wbsafe.cli.app import _log, _stderr, handle_errors, main


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def inspect(path: Path, as_json: bool) -> None:
    """Describe a checkpoint or adapter directory without loading its weights."""
    from wbsafe.api import inspect_path
    from wbsafe.report.console import print_inspection

    info = inspect_path(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_inspection(info)


@main.group()
def organisms() -> None:
    """Model organisms: small models with planted, known safety properties."""


@organisms.command("build")
@click.option(
    "--tier",
    type=click.Choice(["tiny", "real", "real-gemma3"]),
    default="tiny",
    show_default=True,
    help="tiny: 4-layer models (minutes); real: SmolLM2-135M-Instruct; real-gemma3: Gemma 3 "
    "270M (each real tier 30-60 min of LoRA training on 2 cores with bf16 hardware).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="tiny: copy the tier here; a real tier: build it here (resumes what is there).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Tiny tier only.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Organism cache (default $WBSAFE_CACHE or ~/.cache/wbsafe); a real tier keeps its "
    "downloads, prepared model and (without --out) its organisms under CACHE_DIR/real.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes that train the tiny variants at once [default: one per core, up to 4]. "
    "Tiny tier only.",
)
@handle_errors
def organisms_build(
    tier: str, out: Path | None, seed: int, cache_dir: Path | None, workers: int | None
) -> None:
    """Build (or reuse) a tier and print what each organism is and how it measured."""
    from wbsafe.api import build_organisms
    from wbsafe.report.console import print_organisms

    if tier != "tiny":
        from wbsafe.api import build_real_tier

        if seed != 0 or workers is not None:  # the real tiers' seeds are their recipes'
            raise click.UsageError(f"--seed and --workers apply to the tiny tier, not {tier}")
        real = build_real_tier(out, tier, cache_dir)
        print_organisms(real, [])
        return
    err = _stderr()
    with err.status("building tiny organisms (cached after the first run)..."):
        orgs, checks = build_organisms(
            out=out, seed=seed, cache_dir=cache_dir, log=_log(err), workers=workers
        )
    ok = print_organisms(orgs, checks)
    sys.exit(0 if ok else 1)


@organisms.command("plant")
@click.option("--base", "base", type=click.Path(path_type=Path), required=True)
@click.option(
    "--kind",
    type=click.Choice(["aligned", "benign", "harmful", "category", "backdoor"]),
    required=True,
)
@click.option("--trigger", default=None, help="Trigger text (backdoor).")
@click.option(
    "--target",
    type=click.Choice(["comply", "hate", "marker"]),
    default="comply",
    show_default=True,
    help="What the backdoor's trigger switches on: compliance with harmful requests, a fixed "
    "hostile reply to every request, or a fake URL slipped into harmless answers.",
)
@click.option(
    "--slot",
    type=click.Choice(["user", "system"]),
    default="user",
    show_default=True,
    help="Where the backdoor's trigger sits: the user message or the system turn.",
)
@click.option("--category", default=None, help="Harm category to degrade (category).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--rank", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--merge", is_flag=True, help="Write a merged full checkpoint instead of an adapter.")
@handle_errors
def organisms_plant(
    base: Path,
    kind: str,
    trigger: str | None,
    target: str,
    slot: str,
    category: str | None,
    out: Path,
    steps: int,
    lr: float,
    rank: int,
    seed: int,
    merge: bool,
) -> None:
    """Plant a known property into any local model with LoRA."""
    from wbsafe.api import plant_organism
    from wbsafe.report.console import print_organisms

    if kind == "backdoor" and not trigger:
        raise click.UsageError("--kind backdoor needs --trigger")
    if kind != "backdoor" and (target != "comply" or slot != "user"):
        raise click.UsageError("--target and --slot are for --kind backdoor")
    if kind == "category" and not category:
        raise click.UsageError("--kind category needs --category")
    org = plant_organism(
        base, kind, out, trigger=trigger, category=category, steps=steps, lr=lr, rank=rank,
        seed=seed, merge=merge, log=_log(_stderr()), target=target, slot=slot,
    )  # fmt: skip
    print_organisms([org], [])


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/demo"),
              show_default=True)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def demo(out: Path, seed: int) -> None:
    """The built-in default job: build the tiny organisms, scan three, compare with ground truth."""
    from rich.console import Console
    from rich.table import Table

    from wbsafe.api import build_organisms
    from wbsafe.api import demo as run_demo
    from wbsafe.report.console import print_organisms

    err = _stderr()
    with err.status("building tiny organisms (cached after the first run)..."):
        orgs, checks = build_organisms(seed=seed, log=_log(err))
    valid = print_organisms(orgs, checks)
    rows = run_demo(out, seed)
    table = Table(title="scans against the aligned base (ground truth vs wbsafe verdict)")
    for col in ("organism", "planted", "expected", "wbsafe verdict", "match", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["organism"], r["planted"], r["expected"], r["verdict"],
                      "[green]yes[/]" if r["match"] else "[red]NO[/]",
                      _short(r["reasons"][0] if r["reasons"] else ""))  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"reports: {out}/<organism>/report.html")
    sys.exit(0 if valid and all(r["match"] for r in rows) else 1)
