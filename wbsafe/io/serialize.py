"""JSON with atomic writes, file hashing, and the run manifest (versions, seeds, commit)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from wbsafe.errors import WbsafeError

SCHEMA_VERSION = "1.1"
"""The version of every JSON document wbsafe writes (reports, stage records, caches);
readers accept the same major version. 1.1: the report gained ``status``."""
_HASH_CHUNK = 1 << 20


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, enums, paths, numpy/torch scalars and non-finite floats to JSON.

    NaN and infinities become ``None`` (JSON has no such numbers); a reader can tell a
    missing value from zero.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return obj


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file in the same directory and rename: a crash never
    leaves half a file. The one atomic writer (JSON, JSONL, reports, summaries use it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WbsafeError(f"cannot write here: {exc.strerror or exc}", path) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a read-only folder: said, not a traceback
            raise WbsafeError(
                f"cannot write: {exc.strerror or exc}; files already written are kept", path
            ) from exc
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` (anything :func:`to_jsonable` takes) as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(to_jsonable(payload), indent=2) + "\n")


MAX_JSON_BYTES = 64 * 1024 * 1024
"""The largest JSON file wbsafe reads (configs are kilobytes; the largest tokenizer.json files
are tens of megabytes; a report is a few)."""
MAX_JSON_DEPTH = 64
"""The deepest nesting a JSON document may have (wbsafe's own documents need about ten)."""


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return deepest


def read_bytes_bounded(path: Path, limit: int, error: type[Exception] = WbsafeError) -> bytes:
    """A file's bytes, refused (``error`` naming it) when it holds more than ``limit`` bytes
    or cannot be read (a folder, no permission, a symlink loop)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {path.name}: {exc.strerror or exc}", path) from exc
    if len(data) > limit:
        raise error(f"{path.name} is larger than the {limit >> 20} MiB wbsafe reads", path)
    return data


def read_json(
    path: str | Path,
    error: type[Exception] | None = None,
    missing: str = "",
    *,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Read a JSON file; a missing, oversized, unreadable or malformed file (not UTF-8, not
    JSON, a number of thousands of digits, nested deeper than :data:`MAX_JSON_DEPTH`) raises
    ``error`` (a WbsafeError subclass, default WbsafeError) naming the file (``missing``:
    what to say when absent). Bounded in time and memory by ``max_bytes``."""
    cls = error or WbsafeError
    path = Path(path)
    if not path.is_file():
        raise cls(missing or "file not found", path)
    data = read_bytes_bounded(path, max_bytes, cls)
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:120]
        if isinstance(exc, UnicodeDecodeError):
            msg = "not UTF-8"
        elif isinstance(exc, RecursionError):
            msg = "nested too deeply"
        raise cls(f"{path.name} is not valid JSON ({msg})", path) from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise cls(f"{path.name} nests deeper than {MAX_JSON_DEPTH} levels", path)
    return value


def read_json_object(
    path: str | Path,
    error: type[Exception] | None = None,
    missing: str = "",
    *,
    max_bytes: int = MAX_JSON_BYTES,
) -> dict[str, Any]:
    """:func:`read_json` for a file that must hold one JSON object (a config)."""
    data = read_json(path, error, missing, max_bytes=max_bytes)
    if not isinstance(data, dict):
        raise (error or WbsafeError)(f"{Path(path).name} is not a JSON object", path)
    return data


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_files(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{path: sha256}`` for each file, in sorted order."""
    return {str(p): sha256_file(p) for p in sorted(Path(p) for p in paths)}


def stable_hash(obj: Any) -> str:
    """A short content hash of any JSON-able object (recipes, configs): 16 hex digits."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    """Versions of wbsafe and the libraries whose behaviour shapes the results."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("wbsafe", "torch", "transformers", "transformer-lens", "peft", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The git commit of ``cwd`` (or of the wbsafe source tree), or None outside a checkout."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def run_manifest(seed: int | None = None, config: Any = None) -> dict[str, Any]:
    """What a reader needs to reproduce a result: schema, versions, commit, seed and config."""
    return {
        "schema_version": SCHEMA_VERSION,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "seed": seed,
        "config": to_jsonable(config),
        "platform": platform.platform(),
    }


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """Peak resident set of process ``pid`` in KiB (Linux ``VmHWM``: reset by exec, unlike
    ``ru_maxrss``, which a child inherits from its parent); None where /proc does not say.
    The benchmarks' memory figure."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
