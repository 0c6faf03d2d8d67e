"""The base's refusal-direction fits on disk: written once per base, re-used by later scans.

A fit is a directory holding ``directions.safetensors`` (the fit's arrays: ``directions``
Float64[n_layers, n_positions, d_model], ``harmful_proj``/``harmless_proj``
Float64[n_layers, n_positions], with format/layer/position metadata) and ``fit.json``
(:meth:`~wbsafe.analyses.refusal.RefusalDirectionFit.to_json`). In a cache directory each
fit lives in ``refusal-{key}/``, the key a stable hash of the fit version, the base's own
weight-file hashes, the prompt ids and the fit's keyword arguments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.refusal import (
    FIT_ARRAYS,
    FIT_FORMAT,
    FIT_VERSION,
    RefusalDirectionFit,
    fit_base_directions,
)
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    from wbsafe.io.models import LoadedModel


def save_fit(fit: RefusalDirectionFit, directory: str | Path) -> Path:
    """Write ``directions.safetensors`` (tensors + metadata) and ``fit.json`` to ``directory``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from wbsafe.io.serialize import write_json_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(fit, k))) for k in FIT_ARRAYS}
    meta = {
        "format": FIT_FORMAT,
        "layer": str(fit.layer),
        "position": fit.position,
        "positions": json.dumps(list(fit.positions)),
        "base_weight_sha256": json.dumps(list(fit.base_weight_sha256)),
    }
    tmp = directory / ".directions.safetensors.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(directory / "directions.safetensors")
    write_json_atomic(directory / "fit.json", fit.to_json())
    return directory


def load_fit(directory: str | Path) -> RefusalDirectionFit:
    """Read a fit written by :func:`save_fit`; errors name the file at fault."""
    from safetensors.torch import load_file

    from wbsafe.io.checkpoints import read_header
    from wbsafe.io.serialize import read_json

    directory = Path(directory)
    data = read_json(directory / "fit.json")
    if not isinstance(data, dict) or data.get("format") != FIT_FORMAT:
        raise WbsafeError("not a wbsafe refusal-direction fit", directory / "fit.json")
    tensor_path = directory / "directions.safetensors"
    read_header(tensor_path)
    tensors = load_file(str(tensor_path))
    try:
        arrays = {k: tensors[k].double().numpy() for k in FIT_ARRAYS}
        fit = RefusalDirectionFit.from_json(data, arrays, loaded_from=str(directory))
    except (KeyError, TypeError) as exc:
        raise WbsafeError(f"fit.json is missing fields or malformed ({exc})", directory) from exc
    if fit.directions.shape != (fit.n_layers, len(fit.positions), fit.d_model):
        raise WbsafeError("directions tensor shape disagrees with fit.json", tensor_path)
    return fit


UNKEYED = ("batch_size",)
"""Fit settings left out of the cache key: the batch size changes only rounding, and on a GPU
it follows the free memory (:mod:`wbsafe.capture.batching`), so keyed on it every scan of a
fleet would fit the same base again."""


def fit_or_load_directions(
    loaded_base: LoadedModel,
    cache_dir: str | Path,
    harmful: Sequence[Any],
    harmless: Sequence[Any],
    **kwargs: Any,
) -> RefusalDirectionFit:
    """Re-use a saved fit for the same base weights (hashes), prompts and settings, or fit
    and save one. A re-used fit has ``loaded_from`` set."""
    from wbsafe.io.serialize import stable_hash

    # key on the base's own weight files: a base loaded with adapters (disabled for the
    # fit) shares its fit with every other adapter on that base
    hashes = sorted(loaded_base.base_weight_hashes().values())
    if not hashes:
        raise WbsafeError("the base was loaded without weight hashes; cannot key the cache")
    key = stable_hash(
        {
            "fit_version": FIT_VERSION,
            "hashes": hashes,
            "harmful": [p.id for p in harmful],
            "harmless": [p.id for p in harmless],
            "kwargs": {k: kwargs[k] for k in sorted(kwargs) if k not in UNKEYED},
        }
    )
    directory = Path(cache_dir) / f"refusal-{key}"
    if (directory / "fit.json").is_file() and (directory / "directions.safetensors").is_file():
        fit = load_fit(directory)
        if list(fit.base_weight_sha256) == hashes:
            return fit
    fit = fit_base_directions(loaded_base, harmful, harmless, **kwargs)
    save_fit(fit, directory)
    return replace(fit, loaded_from=None)
