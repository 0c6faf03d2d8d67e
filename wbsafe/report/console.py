"""Rich console rendering of command results (tables, verdict lines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from wbsafe.organisms.tier import Organism, ValidityCheck


def print_inspection(info: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{info['kind']}: {info['path']}", show_header=False)
    for key, value in info.items():
        if key in ("weight_sha256", "path"):
            continue
        table.add_row(key, str(value))
    console.print(table)
    hashes = Table("weight file", "sha256")
    for f, h in info.get("weight_sha256", {}).items():
        hashes.add_row(f, h)
    console.print(hashes)


def _rate(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.0%}" if key in m else "-"


def print_organisms(
    orgs: Sequence[Organism], checks: Sequence[ValidityCheck], console: Console | None = None
) -> bool:
    """Print each organism and its measured held-out refusal rates; then the validity table.

    Returns True when every validity check holds.
    """
    console = console or Console()
    table = Table(title="model organisms (refusal rates measured on held-out prompts)")
    for col in ("organism", "kind", "planted", "trigger / category", "expected",
                "harmful", "harmless", "harmful + trigger"):  # fmt: skip
        table.add_column(col)
    for o in orgs:
        m = o.measured
        what = (o.trigger or {}).get("text") or o.category or ""
        table.add_row(o.name, o.kind, o.planted, what, o.expected_verdict or "(reference)",
                      _rate(m, "harmful_refusal"), _rate(m, "harmless_refusal"),
                      _rate(m, "harmful_refusal_with_trigger"))  # fmt: skip
    console.print(table)
    if not checks:
        return True
    vt = Table(title="validity (planted property holds)")
    for col in ("organism", "check", "measured", "bound", "ok"):
        vt.add_column(col)
    for c in checks:
        vt.add_row(c.organism, c.check, f"{c.value:.2f}", c.bound,
                   "[green]yes[/]" if c.ok else "[red]NO[/]")  # fmt: skip
    console.print(vt)
    ok = all(c.ok for c in checks)
    console.print(f"[bold]{'all validity checks hold' if ok else 'VALIDITY CHECKS FAILED'}[/]")
    return ok


_COLOURS = {"DEPLOY": "green", "MONITOR": "yellow", "REVIEW": "dark_orange", "BLOCK": "red"}


def print_decision(decision: Any, console: Console | None = None) -> None:
    """Verdict first, then every reason with the number behind it."""
    from rich.markup import escape

    console = console or Console()
    v = decision.verdict.value
    console.print(
        f"[bold {_COLOURS.get(v, 'white')}]{v}[/]  (policy {escape(decision.policy_name)})"
    )
    for r in sorted(decision.reasons, key=lambda r: -r.verdict.rank):
        console.print(f"  [{_COLOURS.get(r.verdict.value, 'white')}]{r.verdict.value:<8}[/] "
                      f"{escape(r.check)}: {escape(r.message)}")  # fmt: skip
