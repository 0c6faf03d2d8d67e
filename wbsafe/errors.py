"""One exception base class; the CLI turns it into a clear message and exit code 1."""

from __future__ import annotations

from pathlib import Path


class WbsafeError(Exception):
    """A user-facing error: bad input, an unsafe file, a check that cannot run.

    ``path`` names the file or directory at fault, when there is one, so the message
    always says where to look.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UnsafeCheckpointError(WbsafeError):
    """A checkpoint format that would execute code on load (pickle) or needs remote code."""


class CheckpointFormatError(WbsafeError):
    """A corrupt, truncated or inconsistent checkpoint, shard index or config."""


class AdapterMismatchError(WbsafeError):
    """A PEFT adapter that does not fit the base it is applied to."""


class DatasetError(WbsafeError):
    """A prompt file that is empty, malformed or lacks a required column."""
