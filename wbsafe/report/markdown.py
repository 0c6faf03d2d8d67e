"""report.md: the report document as Markdown (verdict and reasons first, then each stage's
sections, then what it takes to reproduce the scan). Untrusted text stays data: no raw HTML
tag survives, pipes and newlines in table cells are escaped."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wbsafe.report.view import (
    VERDICT_MEANING,
    decision_of,
    fmt_cell,
    fmt_seconds,
    model_label,
    model_notes,
    numeric_columns,
    ordered_reasons,
    ordered_stages,
    resolve_png,
    settle_text,
    table_rows,
    verdict_of,
)

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
        *(f"- Note: {_md_text(n)}" for n in model_notes(report)),
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
