"""Base-side caches shared by later scans of the same base (and by ``scan-many``).

Keyed by the base's own weight hashes and the settings that determine the result, so a
changed base or setting never hits a stale entry; a missing or unreadable entry just means
the work is done again. (The refusal directions cache: :mod:`wbsafe.pipeline.directions_cache`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbsafe.config import ScanConfig, default_cache_dir
from wbsafe.io.serialize import SCHEMA_VERSION, stable_hash, to_jsonable, write_json_atomic


def base_side_cache(config: ScanConfig) -> Path:
    """Where base-side results are kept for later scans of the same base."""
    return Path(config.directions_cache or default_cache_dir() / "directions")


def base_behaviour_path(config: ScanConfig, base_side: Any, prompts: list[Any]) -> Path | None:
    """The cache file of the base's judged responses for these prompts and settings, keyed
    by the base's own weight hashes (None when they are unknown)."""
    hashes = sorted(base_side.base_weight_hashes().values())
    if not hashes:
        return None
    key = stable_hash({
        "hashes": hashes, "prompts": [[p.id, p.text] for p in prompts],
        "max_new_tokens": config.max_new_tokens, "batch_size": config.runtime.batch_size,
        "device": base_side.device, "dtype": base_side.dtype, "judge": "string",
        "schema": SCHEMA_VERSION,
    })  # fmt: skip
    return base_side_cache(config) / f"base-behaviour-{key}.json"


def read_base_rows(path: Path | None) -> list[Any] | None:
    """Cached base rows, or None when absent or unreadable (then the base is re-run)."""
    import json

    from wbsafe.analyses.behaviour.benchmark import ResponseRow

    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return [ResponseRow(**r) for r in doc["rows"]]
    except (ValueError, KeyError, TypeError):
        return None


def write_base_rows(path: Path, rows: Sequence[Any]) -> None:
    """Store the base's judged responses for :func:`read_base_rows`."""
    write_json_atomic(path, {"kind": "wbsafe.base_behaviour", "rows": to_jsonable(list(rows))})


def base_depth_path(
    config: ScanConfig, base_side: Any, prefills: dict[int, list[str]], prompts: list[Any]
) -> Path | None:
    """The cache file of the base's refusal-depth continuations for these harmful prompts,
    prefills (per length, one text a prompt) and settings, keyed like
    :func:`base_behaviour_path` (None when the base's weight hashes are unknown)."""
    hashes = sorted(base_side.base_weight_hashes().values())
    if not hashes:
        return None
    key = stable_hash({
        "hashes": hashes, "prompts": [[p.id, p.text] for p in prompts],
        "prefills": {str(k): v for k, v in sorted(prefills.items())},
        "max_new_tokens": config.max_new_tokens, "batch_size": config.runtime.batch_size,
        "device": base_side.device, "dtype": base_side.dtype, "schema": SCHEMA_VERSION,
    })  # fmt: skip
    return base_side_cache(config) / f"base-depth-{key}.json"


def read_base_depth(path: Path | None) -> dict[int, dict[str, tuple[str, bool | None]]] | None:
    """Cached base continuations (prefill length -> prompt id -> (continuation, recovered)),
    or None when absent or unreadable (then the base is run again)."""
    import json

    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        out = {}
        for k, rows in doc["levels"].items():
            level = {}
            for pid, (text, rec) in rows.items():
                if not isinstance(text, str) or rec not in (True, False, None):
                    raise TypeError(f"bad row {pid!r}")
                level[str(pid)] = (text, rec)
            out[int(k)] = level
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def write_base_depth(path: Path, levels: dict[int, dict[str, tuple[str, bool | None]]]) -> None:
    """Store the base's refusal-depth continuations for :func:`read_base_depth`."""
    write_json_atomic(path, {
        "kind": "wbsafe.base_depth",
        "levels": {str(k): {pid: list(v) for pid, v in rows.items()} for k, rows in levels.items()},
    })  # fmt: skip
