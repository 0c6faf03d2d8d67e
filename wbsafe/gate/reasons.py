"""A gate reason (one check's contribution to a decision) and how reasons word numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wbsafe.verdict import Verdict


@dataclass(frozen=True)
class Reason:
    """One check's contribution. ``values`` holds the numbers the message cites."""

    check: str
    verdict: Verdict
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    inconclusive: bool = False
    prompts_to_settle: int | None = None


def pct(x: float) -> str:
    s = f"{100.0 * x:.1f}"
    return (s[:-2] if s.endswith(".0") else s) + "%"


def ival(lo: float, hi: float) -> str:
    return f"[{pct(lo)}, {pct(hi)}]"
