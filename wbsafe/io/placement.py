"""Where a model's layers sit: ``--device-map`` (accelerate/transformers ``device_map``).

``auto``, ``balanced``, ``balanced_low_0`` and ``sequential`` are accelerate's placements
(over the GPUs, then the CPU, then ``--offload-folder`` on disk when memory runs out); a
JSON file maps module names to a device (``0``, ``"cuda:1"``, ``"cpu"`` or ``"disk"``).
On a CPU-only machine ``auto`` and ``balanced`` put everything on the CPU (transformers
installs no hooks); a map naming ``"disk"`` offloads those modules and accelerate loads
their weights at each forward.

Code that feeds a model asks :func:`input_device` (the input embedding's device) instead
of the first parameter's, which may sit on the ``meta`` device when offloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

NAMED_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def read_device_map(value: str | None) -> str | dict[str, int | str] | None:
    """``value`` as a ``device_map``: a named placement, or the module map in a JSON file."""
    from wbsafe.io.serialize import read_json_object

    if value is None or value in NAMED_MAPS:
        return value
    path = Path(value)
    if not path.is_file():
        raise WbsafeError(
            f"--device-map takes {', '.join(NAMED_MAPS)} or a JSON file; no such file", path
        )
    data = read_json_object(path, WbsafeError)
    out: dict[str, int | str] = {}
    for module, where in data.items():
        ok = (isinstance(where, int) and not isinstance(where, bool) and where >= 0) or (
            isinstance(where, str)
            and (where in ("cpu", "disk") or (where.startswith("cuda:") and where[5:].isdigit()))
        )
        if not ok:
            raise WbsafeError(
                f"device map entry {module!r}: {where!r} is not a GPU index, 'cuda:N', "
                "'cpu' or 'disk'",
                path,
            )
        out[str(module)] = where
    if not out:
        raise WbsafeError("the device map is empty", path)
    return out


def uses_disk(device_map: str | dict[str, int | str] | None) -> bool:
    return isinstance(device_map, dict) and "disk" in device_map.values()


def map_device_kind(device_map: str | dict[str, int | str] | None, fallback: str) -> str:
    """``cuda`` when the map places anything on a GPU (named maps: when one is present)."""
    import torch

    if isinstance(device_map, dict):
        on_gpu = any(isinstance(v, int) or str(v).startswith("cuda") for v in device_map.values())
        return "cuda" if on_gpu else "cpu"
    if device_map is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return fallback


def input_device(model: Any) -> torch.device:
    """Where input ids go: the input embedding's weights (never ``meta``: see
    :func:`check_placed`)."""
    return model.get_input_embeddings().weight.device


def check_placed(model: Any, where: Path) -> None:
    """Refuse a placement that offloads the input embedding: the trigger hunt reads its
    rows directly (HotFlip gradients), which an offloaded (``meta``) weight does not hold."""
    if input_device(model).type == "meta":
        raise WbsafeError(
            "the device map offloads the input embedding (it sits on 'meta'); keep it on a "
            "GPU or the CPU (the trigger hunt reads its rows)",
            where,
        )


def placement(model: Any) -> dict[str, str] | None:
    """The module -> device map accelerate applied (None when the model sits on one device)."""
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    found = getattr(inner, "hf_device_map", None)
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None
