"""The report as one self-contained HTML page: inline CSS, plots as base64 data URIs, no scripts.

Every string from the document passes through ``html.escape``: prompt and response texts are
untrusted model input. Only verdict and status names from a fixed set become CSS classes.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from wbsafe.report.view import (
    VERDICT_MEANING,
    decision_of,
    fmt_cell,
    fmt_seconds,
    is_number,
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

_STATUSES = ("done", "failed", "skipped", "not_run")

CSS = """
:root {
  --ink: #1d2330; --muted: #5b6577; --line: #e3e7ee; --bg: #f5f7fa; --card: #ffffff;
  --DEPLOY: #1f8a4c; --MONITOR: #d4a106; --REVIEW: #e8630a; --BLOCK: #c62828; --UNKNOWN: #6b7280;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
}
* { box-sizing: border-box; }
html { scroll-padding-top: 4.5rem; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.5; font-size: 15px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
code, pre, .mono { font-family: var(--mono); font-size: 0.88em; }
a { color: inherit; }
.topbar { position: sticky; top: 0; z-index: 10; background: rgba(255,255,255,0.96);
  border-bottom: 1px solid var(--line); box-shadow: 0 1px 4px rgba(20,30,50,0.06); }
.topbar .inner { max-width: 1120px; margin: 0 auto; padding: 0.55rem 1.25rem; display: flex;
  flex-wrap: wrap; gap: 0.5rem 1rem; align-items: center; }
.brand { font-weight: 700; letter-spacing: 0.02em; }
.pill { display: inline-block; padding: 0.12rem 0.6rem; border-radius: 999px; color: #fff;
  font-weight: 700; font-size: 0.85rem; letter-spacing: 0.04em; background: var(--vc); }
.meta { color: var(--muted); font-size: 0.88rem; }
.chips { display: flex; flex-wrap: wrap; gap: 0.35rem; margin-left: auto; }
.chip { display: inline-flex; gap: 0.35rem; align-items: center; text-decoration: none;
  border: 1px solid var(--line); border-radius: 6px; padding: 0.1rem 0.5rem; font-size: 0.82rem;
  background: #fff; }
.chip .dot { width: 0.55rem; height: 0.55rem; border-radius: 50%; background: var(--sc); }
main { max-width: 1120px; margin: 0 auto; padding: 1.25rem; }
.banner { border-radius: 12px; background: var(--vc); color: #fff; padding: 1.4rem 1.6rem 1.6rem;
  margin-bottom: 1.5rem; box-shadow: 0 4px 16px rgba(20,30,50,0.12); }
.banner .label { text-transform: uppercase; letter-spacing: 0.12em; font-size: 0.8rem; opacity: 0.9; }
.banner h1 { margin: 0.1rem 0 0.2rem; font-size: 3rem; line-height: 1.1; letter-spacing: 0.03em; }
.banner .meaning { font-size: 1.15rem; font-weight: 600; }
.banner .facts { margin-top: 0.4rem; opacity: 0.95; font-size: 0.92rem; }
.banner .facts code { background: rgba(255,255,255,0.18); padding: 0.05rem 0.35rem; border-radius: 4px; }
.reasons { margin-top: 1.1rem; background: #fff; color: var(--ink); border-radius: 8px; overflow: hidden; }
.reasons table { margin: 0; }
.reasons tr.minor td { color: var(--muted); }
.badge { display: inline-block; min-width: 5.6rem; text-align: center; border-radius: 4px;
  padding: 0.05rem 0.45rem; color: #fff; font-weight: 700; font-size: 0.78rem; background: var(--vc); }
.inconclusive { display: block; margin-top: 0.2rem; color: #8a4b00; font-style: italic; font-size: 0.9em; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 1.1rem 1.4rem 1.3rem; margin-bottom: 1.25rem; }
.card > h2 { margin: 0 0 0.4rem; font-size: 1.35rem; display: flex; flex-wrap: wrap;
  gap: 0.4rem 0.8rem; align-items: baseline; }
.status { font-size: 0.8rem; font-weight: 700; text-transform: uppercase; letter-spacing: 0.06em;
  color: var(--sc); border: 1.5px solid var(--sc); border-radius: 4px; padding: 0 0.4rem; }
.time { color: var(--muted); font-size: 0.9rem; font-weight: 400; }
.summary { margin: 0.2rem 0 0.8rem; }
.error { background: #fdecec; border: 1px solid #f5c2c2; color: #8b1a1a; border-radius: 6px;
  padding: 0.6rem 0.8rem; white-space: pre-wrap; overflow-wrap: anywhere; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 0.5rem; }
h4 { font-size: 0.95rem; margin: 1rem 0 0.4rem; color: var(--muted); }
.table-wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; vertical-align: top; padding: 0.42rem 0.7rem;
  border-bottom: 1px solid var(--line); overflow-wrap: anywhere; word-break: break-word; }
th { background: #f0f3f8; font-weight: 600; white-space: nowrap; }
th.num { text-align: right; }
tbody tr:nth-child(even) td { background: #fafbfd; }
tbody tr:last-child td { border-bottom: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.cell { max-width: 46ch; white-space: pre-wrap; }
td.check { white-space: nowrap; }
.note, figcaption { color: var(--muted); font-size: 0.86rem; margin-top: 0.35rem; }
figure { margin: 0.5rem 0 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px;
  background: #fff; }
.missing { border: 2px dashed var(--BLOCK); color: var(--BLOCK); border-radius: 6px;
  padding: 0.8rem 1rem; font-weight: 600; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.empty { color: var(--muted); font-style: italic; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; margin: 0.3rem 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
pre.json { background: #f6f8fb; border: 1px solid var(--line); border-radius: 6px; padding: 0.7rem 0.9rem;
  overflow-x: auto; max-height: 28rem; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 0 1.5rem; }
.grid2 > div { min-width: 0; }
.hashes td:last-child { font-family: var(--mono); font-size: 0.82rem; }
footer { color: var(--muted); font-size: 0.8rem; text-align: center; padding: 0.5rem 0 2rem; }
@media print { .topbar { position: static; box-shadow: none; } body { background: #fff; } }
"""


def _e(value: Any) -> str:
    return escape(fmt_cell(value), quote=True)


def _anchor(name: str) -> str:
    return "stage-" + (re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "x")


def _vstyle(verdict: str) -> str:
    return f' style="--vc: var(--{verdict})"'


def _sstyle(status: str) -> str:
    colour = {"done": "var(--DEPLOY)", "failed": "var(--BLOCK)", "skipped": "var(--MONITOR)"}
    return f' style="--sc: {colour.get(status, "var(--UNKNOWN)")}"'


def _status(st: Mapping[str, Any]) -> str:
    s = st.get("status")
    return s if s in _STATUSES else "not_run"


def _table(columns: list[str], rows: list[list[Any]], cls: str = "") -> str:
    numeric = numeric_columns(rows) or [False] * len(columns)
    th = ('<th class="num">', "<th>")
    head = "".join(
        f"{th[0] if num else th[1]}{_e(c)}</th>" for c, num in zip(columns, numeric, strict=True)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if is_number(v) else "cell"}">{_e(v)}</td>' for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="{f"table-wrap {cls}".strip()}"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _plot(section: Mapping[str, Any], base_dir: Path) -> str:
    path, shown = resolve_png(base_dir, section.get("png"))
    caption = section.get("caption") or ""
    if path is None:
        return f'<div class="missing">plot missing: {_e(shown)}</div>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = _e(caption or section.get("title") or shown)
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">{cap}</figure>'


def _json_block(value: Any) -> str:
    return f'<pre class="json">{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>'


def _section(section: Mapping[str, Any], base_dir: Path) -> str:
    kind = section.get("kind")
    parts = [f"<h3>{_e(section.get('title') or 'untitled')}</h3>"]
    if kind == "table":
        columns, rows = table_rows(section)
        parts.append(_table(columns, rows) if rows else '<p class="empty">no rows</p>')
    elif kind == "plot":
        parts.append(_plot(section, base_dir))
    elif kind == "text":
        parts.append(f'<div class="text">{_e(section.get("text") or "")}</div>')
    else:
        parts.append(
            f'<p class="empty">section of unknown kind {_e(repr(kind))}, shown as JSON:</p>'
        )
        parts.append(_json_block(section))
    if section.get("note"):
        parts.append(f'<p class="note">{_e(section["note"])}</p>')
    return "\n".join(parts)


def _topbar(report: Mapping[str, Any], verdict: str) -> str:
    decision = decision_of(report)
    chips = []
    for name, st in ordered_stages(report):
        status = _status(st)
        chips.append(
            f'<a class="chip" href="#{_anchor(name)}"{_sstyle(status)}><span class="dot"></span>'
            f'{_e(name)} <span class="meta">{_e(status.replace("_", " "))}'
            f"{' · ' + fmt_seconds(st.get('seconds')) if is_number(st.get('seconds')) else ''}"
            "</span></a>"
        )
    return (
        '<header class="topbar"><div class="inner">'
        f'<span class="brand">wbsafe scan</span><span class="pill"{_vstyle(verdict)}>{verdict}</span>'
        f'<span class="meta">policy {_e(decision.get("policy_name") or "—")} · risk '
        f"{_e(decision.get('risk') or report.get('risk') or '—')}</span>"
        f'<nav class="chips">{"".join(chips)}<a class="chip" href="#reproducibility">'
        "reproducibility</a></nav></div></header>"
    )


def _banner(report: Mapping[str, Any], verdict: str) -> str:
    decision = decision_of(report)
    rows = []
    for r in ordered_reasons(report):
        v = verdict_of(r.get("verdict"))
        extra = (
            f'<span class="inconclusive">{_e(settle_text(r))}</span>'
            if r.get("inconclusive")
            else ""
        )
        minor = "" if v == verdict else ' class="minor"'
        rows.append(
            f'<tr{minor}><td><span class="badge"{_vstyle(v)}>{v}</span></td>'
            f'<td class="check"><code>{_e(r.get("check") or "?")}</code></td>'
            f'<td class="cell">{_e(r.get("message") or "")}{extra}</td></tr>'
        )
    reasons = (
        '<div class="reasons"><table><thead><tr><th>verdict</th><th>check</th><th>reason</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        if rows
        else '<div class="reasons"><p class="empty" style="padding:0.6rem 0.9rem">no reasons recorded</p></div>'
    )
    inconclusive = (
        " · some checks inconclusive: the gate failed closed"
        if decision.get("inconclusive")
        else ""
    )
    return (
        f'<section class="banner"{_vstyle(verdict)}><div class="label">deployment gate verdict</div>'
        f"<h1>{verdict}</h1>"
        f'<div class="meaning">{_e(VERDICT_MEANING.get(verdict, "no gate decision in the report"))}</div>'
        f'<div class="facts">risk profile <code>{_e(decision.get("risk") or report.get("risk") or "—")}</code>'
        f" · policy <code>{_e(decision.get('policy_name') or '—')}</code>{_e(inconclusive)}</div>"
        f'<div class="facts">base <code>{_e(model_label(report, "base"))}</code> · tuned '
        f"<code>{_e(model_label(report, 'tuned'))}</code></div>"
        + "".join(f'<div class="facts">note: {_e(n)}</div>' for n in model_notes(report))
        + f"{reasons}</section>"
    )


def _models(report: Mapping[str, Any]) -> str:
    models = report.get("models") or {}
    if not isinstance(models, dict) or not models:
        return ""
    keys = ("path", "adapters", "device", "dtype", "chat_format")
    rows = [
        [name, *((m or {}).get(k) if isinstance(m, dict) else None for k in keys)]
        for name, m in models.items()
    ]
    return f'<section class="card"><h2>Models</h2>{_table(["model", *keys], rows)}</section>'


def _stage(name: str, st: Mapping[str, Any], base_dir: Path) -> str:
    status = _status(st)
    parts = [
        f'<section class="card" id="{_anchor(name)}"><h2>{_e(name)}'
        f'<span class="status"{_sstyle(status)}>{_e(status.replace("_", " "))}</span>'
        f'<span class="time">{fmt_seconds(st.get("seconds"))}</span></h2>'
    ]
    if st.get("summary"):
        parts.append(f'<p class="summary">{_e(st["summary"])}</p>')
    if st.get("error"):
        parts.append(f'<div class="error"><strong>Error:</strong> {_e(st["error"])}</div>')
    sections = [s for s in st.get("sections") or [] if isinstance(s, dict)]
    parts += [_section(s, base_dir) for s in sections]
    if not sections and not st.get("error"):
        parts.append('<p class="empty">no output from this stage</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _reproducibility(report: Mapping[str, Any]) -> str:
    manifest = report.get("manifest") or {}
    facts = [
        ("created", report.get("created")),
        ("git commit", manifest.get("git_commit") or "unknown"),
        ("seed", manifest.get("seed")),
        ("platform", manifest.get("platform")),
        ("schema", f"{report.get('kind')} {report.get('schema_version')}"),
    ]
    kv = "".join(f'<dt>{_e(k)}</dt><dd class="mono">{_e(v)}</dd>' for k, v in facts)
    parts = [
        f'<section class="card" id="reproducibility"><h2>Reproducibility</h2><dl class="kv">{kv}</dl>'
    ]
    timings = report.get("timings") or {}
    versions = manifest.get("versions") or {}
    parts.append('<div class="grid2">')
    if timings:
        rows = [[k, fmt_seconds(v)] for k, v in timings.items()]
        parts.append("<div><h3>Timings</h3>" + _table(["stage", "time"], rows) + "</div>")
    if versions:
        rows = [[k, v] for k, v in versions.items()]
        parts.append("<div><h3>Versions</h3>" + _table(["package", "version"], rows) + "</div>")
    parts.append("</div>")
    files = report.get("weight_files") or {}
    parts.append("<h3>Weight files (sha256)</h3>")
    parts.append(
        _table(["file", "sha256"], [[k, v] for k, v in files.items()], cls="hashes")
        if files
        else '<p class="empty">none recorded</p>'
    )
    parts.append('<div class="grid2">')
    parts.append("<div><h3>Config</h3>" + _json_block(manifest.get("config")) + "</div>")
    if report.get("policy") is not None:
        parts.append("<div><h3>Policy</h3>" + _json_block(report["policy"]) + "</div>")
    parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(report: Mapping[str, Any], base_dir: Path) -> str:
    """The whole report as one HTML page; plots from ``base_dir`` embedded as data URIs."""
    base_dir = Path(base_dir)
    verdict = verdict_of(decision_of(report).get("verdict"))
    body = [
        _topbar(report, verdict),
        "<main>",
        _banner(report, verdict),
        _models(report),
        *(_stage(name, st, base_dir) for name, st in ordered_stages(report)),
        _reproducibility(report),
        "</main>",
        f"<footer>wbsafe report · {_e(report.get('created') or '')}</footer>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>wbsafe scan: {verdict}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body></html>\n"
    )
