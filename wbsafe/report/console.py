"""What a person sees on the terminal: rich tables for command results, the scan's verdict
summary, and the ``Log``/``Progress`` callbacks of :mod:`wbsafe.progress` as a console and
progress bars. Only the CLI calls these."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wbsafe.progress import Progress
from wbsafe.report.view import (
    VERDICT_MEANING,
    decision_of,
    fmt_seconds,
    ordered_reasons,
    ordered_stages,
    settle_text,
    verdict_of,
)


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
    orgs: Sequence[Any], checks: Sequence[Any], console: Console | None = None
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
        if o.trigger and o.trigger.get("slot", "user") != "user":
            what += f" (in the {o.trigger['slot']} turn)"
        target = getattr(o, "target", None) or {}
        if target.get("text"):
            what += f" -> {target['kind']} {target['text']!r}"
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


_RICH_STYLE = {
    "DEPLOY": "bold white on green",
    "MONITOR": "bold black on yellow",
    "REVIEW": "bold black on dark_orange",
    "BLOCK": "bold white on red",
    "UNKNOWN": "bold white on grey50",
}
_RICH_FG = {
    "DEPLOY": "green",
    "MONITOR": "yellow",
    "REVIEW": "dark_orange",
    "BLOCK": "red",
    "UNKNOWN": "grey50",
}
_STATUS_STYLE = {"done": "green", "failed": "bold red", "skipped": "yellow", "not_run": "dim"}


def print_console_summary(
    report: Mapping[str, Any],
    console: Console | None = None,
    files: Mapping[str, Path] | None = None,
) -> None:
    """Verdict first, then the checks that drove it, stage statuses with times, and file paths."""
    from rich.text import Text

    console = console or Console()
    decision = decision_of(report)
    verdict = verdict_of(decision.get("verdict"))
    head = Text()
    head.append(f" {verdict} ", style=_RICH_STYLE[verdict])
    head.append(f"  {VERDICT_MEANING.get(verdict, 'no gate decision in the report')}", style="bold")
    console.print(head)
    console.print(
        Text(
            f"policy {decision.get('policy_name') or '—'} · risk "
            f"{decision.get('risk') or report.get('risk') or '—'}"
            + (" · inconclusive checks failed closed" if decision.get("inconclusive") else ""),
            style="dim",
        )
    )
    reasons = ordered_reasons(report)
    if reasons:
        table = Table(title="checks (the ones that drove the verdict first)", title_justify="left")
        table.add_column("verdict", no_wrap=True)
        table.add_column("check", overflow="fold")
        table.add_column("message", overflow="fold")
        for r in reasons:
            v = verdict_of(r.get("verdict"))
            deciding = v == verdict
            text_style = "" if deciding or v != "DEPLOY" else "dim"
            msg = Text(str(r.get("message") or ""), style=text_style)
            if r.get("inconclusive"):
                msg.append(f" ({settle_text(r)})", style="italic")
            table.add_row(
                Text(v, style=_RICH_STYLE[v] if deciding else _RICH_FG[v]),
                Text(str(r.get("check") or "?"), style=text_style),
                msg,
            )
        console.print(table)
    stages = ordered_stages(report)
    if stages:
        st_table = Table(title="stages", title_justify="left")
        for col in ("stage", "status", "time", "summary"):
            st_table.add_column(col, overflow="fold")
        for name, st in stages:
            status = str(st.get("status") or "not_run")
            summary = Text(str(st.get("summary") or ""))
            if st.get("error"):
                summary.append(f"\n{st['error']}", style="red")
            st_table.add_row(
                Text(name),
                Text(status, style=_STATUS_STYLE.get(status, "")),
                Text(fmt_seconds(st.get("seconds"))),
                summary,
            )
        console.print(st_table)
    for label, path in (files or {}).items():
        console.print(Text(f"{label}: ", style="bold") + Text(str(path)))


@contextmanager
def progress_bars(console: Console | None = None) -> Iterator[Progress]:
    """A :class:`wbsafe.progress.Progress` callback drawn as rich progress bars (one per task,
    gone when the block ends)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    bars = Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console or Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(task: str, done: int, total: int, detail: str = "", /) -> None:
        if task not in tasks:
            tasks[task] = bars.add_task(task, total=total, detail=detail)
        bars.update(tasks[task], completed=done, total=total, detail=detail)

    with bars:
        yield update
