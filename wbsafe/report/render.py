"""Writing the rendered reports: report.md and report.html beside report.json, and
re-rendering a saved report.json (validated through :mod:`wbsafe.report.document`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import write_text_atomic
from wbsafe.report.document import as_json, load_report
from wbsafe.report.html import render_html
from wbsafe.report.markdown import render_markdown

Format = Literal["md", "html"]


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
    report = as_json(load_report(report_json))
    base_dir = report_json.parent
    target = Path(out) if out is not None else report_json.with_suffix(f".{fmt}")
    if fmt == "md":
        text = render_markdown(report, base_dir, link_dir=target.parent)
    else:
        text = render_html(report, base_dir)
    return write_text_atomic(target, text)
