"""Resumable stage storage for a scan directory.

Each stage's result is written to ``DIR/stages/<name>.json`` the moment it completes,
keyed by a hash of everything that determines it (config, input file hashes). Rerunning
the same scan after an interruption (Ctrl-C, crash, killed process) reuses the finished
stages and redoes only the rest; a changed input recomputes.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import read_json, to_jsonable, write_json_atomic
from wbsafe.io.typed import adapter

STAGE_FORMAT = 1


@dataclass
class StageOutput:
    """What a stage hands back: a one-line summary, report sections, the full result, gate evidence."""

    summary: str
    result: dict[str, Any]
    sections: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] | None = None


@dataclass
class StageRecord:
    """A stage as stored: status done|failed|skipped, timings, error, and its output."""

    name: str
    status: str
    key: str
    seconds: float | None = None
    error: str | None = None
    summary: str = ""
    sections: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] | None = None
    reused: bool = False

    def report_entry(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "seconds": self.seconds,
            "error": self.error,
            "summary": self.summary,
            "sections": self.sections,
            "result": self.result,
            "reused": self.reused,
        }


class StageStore:
    """Reads and writes stage records under ``out_dir/stages``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str, key: str) -> StageRecord | None:
        """A finished record with the same key, or None (missing, failed or stale)."""
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            data = read_json(p)
        except WbsafeError:
            return None
        if not isinstance(data, dict):
            return None
        if data.get("format") != STAGE_FORMAT or data.get("key") != key:
            return None
        if data.get("status") != "done":
            return None
        data.pop("format", None)
        try:  # a record that does not parse is redone, not trusted and not fatal
            rec: StageRecord = adapter(StageRecord).validate_python(data)
        except ValueError:
            return None
        rec.reused = True
        return rec

    def save(self, rec: StageRecord) -> None:
        payload = to_jsonable(rec)
        payload.pop("reused", None)
        write_json_atomic(self.path(rec.name), {"format": STAGE_FORMAT, **payload})

    def run(
        self, name: str, key: str, fn: Callable[[], StageOutput], *, log: Callable[[str], None]
    ) -> StageRecord:
        """Reuse a finished record or run ``fn``; a failure is recorded, never raised.

        KeyboardInterrupt and SystemExit propagate: what finished before stays on disk.
        """
        done = self.load(name, key)
        if done is not None:
            log(f"[{name}] reused finished result from {self.path(name)}")
            return done
        t0 = time.perf_counter()
        try:
            out = fn()
        except WbsafeError as exc:
            rec = StageRecord(name, "failed", key, time.perf_counter() - t0, error=str(exc))
        except Exception as exc:  # an analysis bug must not lose the other stages
            tb = traceback.format_exc(limit=3)
            rec = StageRecord(
                name, "failed", key, time.perf_counter() - t0,
                error=f"{type(exc).__name__}: {exc}\n{tb}",
            )  # fmt: skip
        else:
            rec = StageRecord(
                name, "done", key, round(time.perf_counter() - t0, 2), summary=out.summary,
                sections=out.sections, result=out.result, evidence=out.evidence,
            )  # fmt: skip
        self.save(rec)
        log(
            f"[{name}] {rec.status} in {rec.seconds or 0:.1f}s"
            + (f": {rec.error}" if rec.error else "")
        )
        return rec
