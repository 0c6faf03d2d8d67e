"""A fleet's progress as console lines: adapters done / running / failed, with an ETA.

The ETA is the fleet's own throughput so far (adapters finished per second of wall time,
parallel workers included) applied to what is left; adapters whose finished reports were
re-used count as done but not towards the rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wbsafe.progress import Log


def eta_text(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``, or ``?`` before anything has finished."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class FleetProgress:
    """Counts a fleet of ``total`` scans and logs one line per change."""

    total: int
    log: Log
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    failed: int = 0
    reused: int = 0
    running: int = 0
    t0: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.t0 = self.clock()

    def eta(self) -> float | None:
        """Seconds left at the throughput so far (None before a scan has finished here)."""
        measured = self.done + self.failed - self.reused
        if measured <= 0:
            return None
        left = self.total - self.done - self.failed
        return (self.clock() - self.t0) / measured * left

    def line(self) -> str:
        return (f"fleet: {self.done + self.failed}/{self.total} finished ({self.done} done, "
                f"{self.failed} failed), {self.running} running, ETA {eta_text(self.eta())}")  # fmt: skip

    def start(self, name: str) -> None:
        self.running += 1
        self.log(f"{self.line()}; started {name}")

    def finish(self, name: str, *, error: bool, reused: bool = False, started: bool = True) -> None:
        """One scan ended (``reused``: its finished report was kept and nothing ran)."""
        self.running -= 1 if started else 0
        self.failed += error
        self.done += not error
        self.reused += reused
        self.log(f"{self.line()}; {'reused' if reused else 'failed' if error else 'done'} {name}")
