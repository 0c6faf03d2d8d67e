"""Progress and messages from long work, without printing.

The library never writes to the terminal. Long work reports through two callbacks that the
caller passes in, and that default to doing nothing:

- ``Log``: one human-readable line (``log("[probes] done in 12.3s")``);
- ``Progress``: ``progress(task, done, total, detail)`` after each unit of a task (``done``
  counts up to ``total``; ``detail`` names the unit, e.g. a tensor), and once with
  ``done == 0`` when the task starts.

The CLI turns them into a rich console and progress bars (:mod:`wbsafe.report.console`);
scripts and tests pass their own or none. Warnings that the caller did not ask for go
through :mod:`logging` (logger ``wbsafe``).
"""

from __future__ import annotations

from typing import Protocol


class Log(Protocol):
    def __call__(self, message: str, /) -> None: ...


class Progress(Protocol):
    def __call__(self, task: str, done: int, total: int, detail: str = "", /) -> None: ...


def no_log(message: str, /) -> None:
    """A ``Log`` that drops every message."""


def no_progress(task: str, done: int, total: int, detail: str = "", /) -> None:
    """A ``Progress`` that shows nothing."""
