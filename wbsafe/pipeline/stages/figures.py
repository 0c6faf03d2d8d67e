"""Drawing a stage's figure: a plot section when it draws, a text section saying why not.

A figure never sinks a stage (its numbers and evidence stand without it) and is never
dropped without a word: the report shows which figure is missing and the error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def plot_section(
    draw: Callable[[], Path | str], png: Path, title: str, caption: str
) -> dict[str, Any]:
    """Call ``draw`` (it writes the PNG ``png`` and returns its path): a ``plot`` section,
    or a ``text`` section "Plot NAME failed" with the error when it raises."""
    try:
        drawn = Path(draw())
    except Exception as exc:  # matplotlib, a full disk, odd data: said, never fatal
        return {"title": f"Plot {png.name} failed", "kind": "text",
                "text": f"{caption}: not drawn ({type(exc).__name__}: {exc})"}  # fmt: skip
    return {"title": title, "kind": "plot", "png": f"{png.parent.name}/{drawn.name}",
            "caption": caption}  # fmt: skip
