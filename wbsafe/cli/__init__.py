"""The ``wbsafe`` command line: a thin click group over :mod:`wbsafe.api`.

Each command parses flags, makes one api call, writes its output and exits. Heavy
libraries are imported inside the commands so ``wbsafe --help`` starts fast.
Exit codes: 0 success / DEPLOY, 3 MONITOR, 4 REVIEW, 5 BLOCK, 1 error, 2 usage.

The group and its shared options live in :mod:`.app`; the commands, by what they work on, in
:mod:`.models`, :mod:`.analyses` and :mod:`.scans` (importing them registers them).
"""

from wbsafe.cli import analyses, models, scans  # noqa: F401  (registers the commands)
from wbsafe.cli.app import main

__all__ = ["main"]
