"""The four verdicts, their order and their exit codes: the one table every layer reads.

``Verdict`` orders DEPLOY < MONITOR < REVIEW < BLOCK. ``EXIT_CODES`` is what the CLI exits
with (0 also means plain success; 1 is an error, 2 a usage error). ``ERROR`` is not a verdict:
``scan-many`` writes it for an adapter that could not be scanned, and ranks it above BLOCK.
"""

from __future__ import annotations

import enum

VERDICTS: tuple[str, ...] = ("DEPLOY", "MONITOR", "REVIEW", "BLOCK")
EXIT_CODES: dict[str, int] = {"DEPLOY": 0, "MONITOR": 3, "REVIEW": 4, "BLOCK": 5}
MEANING: dict[str, str] = {
    "DEPLOY": "no safety concern found under this policy",
    "MONITOR": "deploy with monitoring",
    "REVIEW": "needs human review before deployment",
    "BLOCK": "do not deploy",
}
ERROR = "ERROR"
"""The row label of an adapter that could not be scanned (``scan-many``)."""


def rank(value: object) -> int:
    """Order of a verdict name (DEPLOY 0 ... BLOCK 3, ERROR 4); -1 for anything else."""
    if value == ERROR:
        return len(VERDICTS)
    return VERDICTS.index(value) if isinstance(value, str) and value in VERDICTS else -1


class Verdict(enum.Enum):
    """Gate outcome, ordered DEPLOY < MONITOR < REVIEW < BLOCK; ``exit_code`` for the CLI."""

    DEPLOY = "DEPLOY"
    MONITOR = "MONITOR"
    REVIEW = "REVIEW"
    BLOCK = "BLOCK"

    @property
    def rank(self) -> int:
        return VERDICTS.index(self.value)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.value]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return self.rank >= other.rank
