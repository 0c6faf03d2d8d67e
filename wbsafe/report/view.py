"""Helpers every renderer shares: reading the report's JSON form defensively (a value of the
wrong type reads as missing, never as a crash) and formatting cells, times and verdicts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from wbsafe.config import STAGES
from wbsafe.verdict import MEANING as VERDICT_MEANING
from wbsafe.verdict import VERDICTS
from wbsafe.verdict import rank as verdict_rank

__all__ = ["VERDICT_MEANING"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    """Stages in the order weights, probes, triggers, behaviour, then any others as written."""
    stages = report.get("stages") or {}
    if not isinstance(stages, dict):
        return []
    names = [n for n in STAGES if n in stages] + [n for n in stages if n not in STAGES]
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


def model_notes(report: Mapping[str, Any]) -> list[str]:
    """What the scan says about its inputs (an adapter that names another base)."""
    models = report.get("models") or {}
    tuned = models.get("tuned") if isinstance(models, dict) else None
    notes = tuned.get("base_notes") if isinstance(tuned, dict) else None
    return [str(n) for n in notes] if isinstance(notes, list) else []


def model_label(report: Mapping[str, Any], which: str) -> str:
    """``path`` or ``path + adapter, ...`` for the base or tuned model."""
    models = report.get("models") or {}
    m = models.get(which) if isinstance(models, dict) else None
    if not isinstance(m, dict):
        return "—"
    adapters = [str(a) for a in m.get("adapters") or []]
    return " + ".join([str(m.get("path") or "—"), *adapters])
