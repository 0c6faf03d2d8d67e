"""Render a scan's report.json: console summary (rich), Markdown, and self-contained HTML.

The renderers read the report document only (a dict as written by the scan), never the
models, so ``wbsafe report report.json`` can re-render a saved scan. Plot paths in the
document are relative to the directory holding report.json (``base_dir``). The HTML
renderer lives in :mod:`wbsafe.report.html`; this module holds the shared helpers, the
Markdown and console renderers, and the file I/O.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard
from urllib.parse import quote

from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import SCHEMA_VERSION, read_json
from wbsafe.verdict import MEANING as VERDICT_MEANING
from wbsafe.verdict import VERDICTS
from wbsafe.verdict import rank as verdict_rank

if TYPE_CHECKING:
    from rich.console import Console

REPORT_KIND = "wbsafe.scan"
STAGE_ORDER: tuple[str, ...] = ("weights", "probes", "triggers", "behavior")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Format = Literal["md", "html"]

# ----------------------------------------------------------------------------- document helpers


def check_report(report: Any, path: str | Path | None = None) -> dict[str, Any]:
    """Return ``report`` if it is a wbsafe scan document of a readable schema, else raise.

    Accepts any schema version with the same major number as ``SCHEMA_VERSION``.
    """
    if not isinstance(report, dict):
        raise WbsafeError("not a wbsafe report: the top level is not a JSON object", path)
    kind = report.get("kind")
    if kind != REPORT_KIND:
        raise WbsafeError(
            f"not a wbsafe scan report: kind is {kind!r}, expected {REPORT_KIND!r}", path
        )
    version = report.get("schema_version")
    major = SCHEMA_VERSION.split(".")[0]
    if not isinstance(version, str) or version.split(".")[0] != major:
        raise WbsafeError(
            f"unsupported report schema_version {version!r}; this wbsafe reads {major}.x",
            path,
        )
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check a report.json; errors name the file."""
    return check_report(read_json(path), path)


def verdict_of(value: Any) -> str:
    """A verdict name from the document, or ``"UNKNOWN"`` for anything else."""
    return value if value in VERDICTS else "UNKNOWN"


def decision_of(report: Mapping[str, Any]) -> dict[str, Any]:
    d = report.get("decision")
    return d if isinstance(d, dict) else {}


def ordered_reasons(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Reasons, worst verdict first (the ones that drove the decision lead), stable otherwise."""
    reasons = [r for r in decision_of(report).get("reasons") or [] if isinstance(r, dict)]
    return sorted(reasons, key=lambda r: -verdict_rank(r.get("verdict")))


def ordered_stages(report: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Stages in the order weights, probes, triggers, behavior, then any others as written."""
    stages = report.get("stages") or {}
    if not isinstance(stages, dict):
        return []
    names = [n for n in STAGE_ORDER if n in stages] + [n for n in stages if n not in STAGE_ORDER]
    return [(n, stages[n] if isinstance(stages[n], dict) else {}) for n in names]


def fmt_cell(value: Any) -> str:
    """Plain-text form of a table cell: floats to 4 significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(fmt_cell(v) for v in value) if value else "—"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt_seconds(seconds: Any) -> str:
    """``12.3 s``, ``2 min 05 s``, ``1 h 04 min``; ``—`` when unknown."""
    if not is_number(seconds):
        return "—"
    s = float(seconds)
    if s < 59.95:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(round(s / 60), 60)
    return f"{hours} h {minutes:02d} min"


def settle_text(reason: Mapping[str, Any]) -> str:
    """How an inconclusive reason would be settled, in words."""
    n = reason.get("prompts_to_settle")
    if is_number(n):
        return f"inconclusive: about {int(n)} more prompts would settle it"
    return "inconclusive: more prompts at the observed rate would not settle it"


def numeric_columns(rows: list[list[Any]]) -> list[bool]:
    """Per column: every value is a number or missing (and at least one is a number)."""
    width = len(rows[0]) if rows else 0
    return [
        all(is_number(r[i]) or r[i] is None for r in rows) and any(is_number(r[i]) for r in rows)
        for i in range(width)
    ]


def table_rows(section: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a table section, rows padded or cut to the column count."""
    columns = [fmt_cell(c) for c in section.get("columns") or []]
    rows = [list(r) if isinstance(r, list | tuple) else [r] for r in section.get("rows") or []]
    width = max([len(columns), *(len(r) for r in rows)], default=0)
    columns += [""] * (width - len(columns))
    return columns, [r + [None] * (width - len(r)) for r in rows]


def resolve_png(base_dir: Path, png: Any) -> tuple[Path | None, str]:
    """The plot file for a ``png`` entry and its path as written; None when missing or not a PNG."""
    shown = str(png) if png else "(no path given)"
    if not isinstance(png, str) or not png:
        return None, shown
    path = Path(png) if Path(png).is_absolute() else base_dir / png
    try:
        with open(path, "rb") as fh:
            ok = fh.read(len(PNG_MAGIC)) == PNG_MAGIC
    except OSError:
        return None, shown
    return (path if ok else None), shown


def model_label(report: Mapping[str, Any], which: str) -> str:
    """``path`` or ``path + adapter, ...`` for the base or tuned model."""
    models = report.get("models") or {}
    m = models.get(which) if isinstance(models, dict) else None
    if not isinstance(m, dict):
        return "—"
    adapters = [str(a) for a in m.get("adapters") or []]
    return " + ".join([str(m.get("path") or "—"), *adapters])


# ----------------------------------------------------------------------------- Markdown

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: Any) -> str:
    """Inline Markdown text: no raw HTML tags (``<`` before a tag name becomes ``&lt;``)."""
    return _TAG_START.sub("&lt;", fmt_cell(text))


def _md_cell(value: Any) -> str:
    """A table cell: pipes escaped, newlines as ``<br>``, no raw HTML from the value."""
    text = _md_text(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    if not columns:
        return []
    numeric = numeric_columns(rows) or [False] * len(columns)
    align = ["---:" if num else "---" for num in numeric]
    out = [
        "| " + " | ".join(_md_cell(c) for c in columns) + " |",
        "| " + " | ".join(align) + " |",
    ]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return out


def _md_code(text: str, lang: str = "") -> list[str]:
    """A fenced block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text, fence]


def _md_link_target(path: Path, link_dir: Path) -> str:
    rel = os.path.relpath(path.resolve(), link_dir.resolve())
    return quote(Path(rel).as_posix())


def _md_section(section: Mapping[str, Any], base_dir: Path, link_dir: Path) -> list[str]:
    out = [f"#### {_md_text(section.get('title') or 'untitled')}", ""]
    kind = section.get("kind")
    if kind == "table":
        columns, rows = table_rows(section)
        out += _md_table(columns, rows) if rows else ["*(no rows)*"]
    elif kind == "plot":
        path, shown = resolve_png(base_dir, section.get("png"))
        caption = section.get("caption") or section.get("title") or "plot"
        if path is None:
            out.append(f"**plot missing: `{shown}`**")
        else:
            alt = _md_text(caption).replace("[", "\\[").replace("]", "\\]")
            out.append(f"![{alt}]({_md_link_target(path, link_dir)})")
        if section.get("caption"):
            out += ["", f"*{_md_text(section['caption'])}*"]
    elif kind == "text":
        lines = [ln.strip() for ln in str(section.get("text") or "").splitlines()]
        out += [p for ln in lines if ln for p in (_md_text(ln), "")][:-1] or ["*(empty)*"]
    else:
        out += [f"*section of unknown kind {kind!r}, shown as JSON:*", ""]
        out += _md_code(json.dumps(section, indent=2, ensure_ascii=False), "json")
    if section.get("note"):
        out += ["", f"*{_md_text(section['note'])}*"]
    return [*out, ""]


def render_markdown(report: Mapping[str, Any], base_dir: Path, link_dir: Path | None = None) -> str:
    """The report as Markdown: verdict, reasons, stages with their sections, reproducibility.

    ``base_dir`` holds report.json (plot paths are relative to it); ``link_dir`` is where the
    Markdown file will live (image links are made relative to it; default ``base_dir``).
    """
    base_dir = Path(base_dir)
    link_dir = Path(link_dir) if link_dir is not None else base_dir
    decision = decision_of(report)
    verdict = verdict_of(decision.get("verdict"))
    out = [f"# Verdict: {verdict}", ""]
    meaning = VERDICT_MEANING.get(verdict, "the report holds no gate decision")
    inconclusive = (
        " Some checks are inconclusive; the gate failed closed."
        if decision.get("inconclusive")
        else ""
    )
    out += [
        f"**{verdict}**: {meaning}.{inconclusive}",
        "",
        f"- Risk profile: `{_md_text(decision.get('risk') or report.get('risk') or '—')}`",
        f"- Policy: `{_md_text(decision.get('policy_name') or '—')}`",
        f"- Base model: `{_md_text(model_label(report, 'base'))}`",
        f"- Tuned model: `{_md_text(model_label(report, 'tuned'))}`",
        f"- Created: {_md_text(report.get('created') or '—')}",
        "",
        "## Reasons",
        "",
    ]
    reasons = ordered_reasons(report)
    for r in reasons:
        line = f"- **{verdict_of(r.get('verdict'))}** `{_md_text(r.get('check') or '?')}`: "
        line += _md_text(r.get("message") or "").replace("\n", " ")
        if r.get("inconclusive"):
            line += f" — *{settle_text(r)}*"
        out.append(line)
    if not reasons:
        out.append("*(no reasons recorded)*")
    out += ["", "## Stages", ""]
    stages = ordered_stages(report)
    for name, st in stages:
        status = st.get("status") or "not_run"
        out += [f"### {_md_text(name)}: {_md_text(status)} ({fmt_seconds(st.get('seconds'))})", ""]
        if st.get("summary"):
            out += [_md_text(st["summary"]), ""]
        if st.get("error"):
            out += ["**Error:**", "", *_md_code(str(st["error"])), ""]
        for section in st.get("sections") or []:
            if isinstance(section, dict):
                out += _md_section(section, base_dir, link_dir)
    if not stages:
        out += ["*(no stages recorded)*", ""]
    out += _md_reproducibility(report)
    return "\n".join(out).rstrip() + "\n"


def _md_reproducibility(report: Mapping[str, Any]) -> list[str]:
    manifest = report.get("manifest") or {}
    out = ["## Reproducibility", ""]
    out += [
        f"- Git commit: `{_md_text(manifest.get('git_commit') or 'unknown')}`",
        f"- Seed: `{_md_text(manifest.get('seed'))}`",
        f"- Platform: `{_md_text(manifest.get('platform') or '—')}`",
        f"- Schema: `{_md_text(report.get('schema_version'))}`",
        "",
    ]
    timings = report.get("timings") or {}
    if timings:
        out += [
            "### Timings",
            "",
            *_md_table(["stage", "time"], [[k, fmt_seconds(v)] for k, v in timings.items()]),
            "",
        ]
    versions = manifest.get("versions") or {}
    if versions:
        out += [
            "### Versions",
            "",
            *_md_table(["package", "version"], [[k, v] for k, v in versions.items()]),
            "",
        ]
    files = report.get("weight_files") or {}
    out += ["### Weight files (sha256)", ""]
    out += (
        _md_table(["file", "sha256"], [[k, v] for k, v in files.items()])
        if files
        else ["*(none recorded)*"]
    )
    out += [
        "",
        "### Config",
        "",
        *_md_code(json.dumps(manifest.get("config"), indent=2, ensure_ascii=False), "json"),
    ]
    if report.get("policy") is not None:
        out += [
            "",
            "### Policy",
            "",
            *_md_code(json.dumps(report["policy"], indent=2, ensure_ascii=False), "json"),
        ]
    return [*out, ""]


# ----------------------------------------------------------------------------- HTML


def render_html(report: Mapping[str, Any], base_dir: Path) -> str:
    """One self-contained HTML page (inline CSS, plots as data URIs); see :mod:`wbsafe.report.html`."""
    from wbsafe.report.html import render_html as _render

    return _render(report, base_dir)


# ----------------------------------------------------------------------------- console

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
    from rich.console import Console
    from rich.table import Table
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


# ----------------------------------------------------------------------------- files


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` via a temporary file in the same directory and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_reports(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.md and report.html into ``out_dir`` (where report.json lives)."""
    out_dir = Path(out_dir)
    return {
        "md": write_text_atomic(out_dir / "report.md", render_markdown(report, out_dir)),
        "html": write_text_atomic(out_dir / "report.html", render_html(report, out_dir)),
    }


def rerender(report_json: Path, fmt: Format = "html", out: Path | None = None) -> Path:
    """Render a saved report.json as ``md`` or ``html``; default output next to it.

    Raises WbsafeError naming the file when it is missing, malformed, or not a wbsafe scan of a
    readable schema version.
    """
    report_json = Path(report_json)
    if fmt not in ("md", "html"):
        raise WbsafeError(f"unknown report format {fmt!r}; choose 'md' or 'html'")
    report = load_report(report_json)
    base_dir = report_json.parent
    target = Path(out) if out is not None else report_json.with_suffix(f".{fmt}")
    if fmt == "md":
        text = render_markdown(report, base_dir, link_dir=target.parent)
    else:
        text = render_html(report, base_dir)
    return write_text_atomic(target, text)
