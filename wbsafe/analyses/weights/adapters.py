"""Reading PEFT LoRA adapter files and checking them against the base checkpoint.

A LoRA update of a base weight ``W [out, in]`` is ``dW = scale · B A`` with ``lora_B
[out, r]`` and ``lora_A [r, in]``; an embedding adapter stores ``lora_embedding_A
[r, vocab]`` and ``lora_embedding_B [d, r]`` (``dE = (B A)ᵀ``). The reader returns factors
``(B·scale [out, r], A [r, in])`` per base tensor, with rank and scale from the adapter
config (:func:`~.lora_math.lora_rank`, :func:`~.lora_math.lora_scale`), plus the full
tensors an adapter stores (``modules_to_save``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from wbsafe.analyses.weights.lora_math import lora_rank, lora_scale
from wbsafe.arch.families import CONV1D, Family, storage_of
from wbsafe.arch.names import canonical_name
from wbsafe.errors import AdapterMismatchError
from wbsafe.io.checkpoints import TensorInfo, read_headers, read_tensor, weight_files
from wbsafe.io.models import read_adapter_config

if TYPE_CHECKING:
    import torch

_LORA_RE = re.compile(
    r"^(?P<mod>.+?)\.(?:(?P<lin>lora_[AB])(?:\.[A-Za-z0-9_]+)?\.weight|"
    r"(?P<emb>lora_embedding_[AB])(?:\.[A-Za-z0-9_]+)?)$"
)


def read_adapter(
    adapter_dir: Path,
    base: dict[str, TensorInfo],
    base_canon: dict[str, str],
    family: Family | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor], str]:
    """Load one adapter: ``{base tensor name: (B·scale [out,r], A [r,in])}``, full tensors, file.

    The factors are given in the base tensor's own storage layout: for a Conv1D weight
    (``[in, out]``, from the family table; ``fan_in_fan_out`` when the family is unknown)
    they are ``(Aᵀ·scale [in, r], Bᵀ [r, out])``. Raises AdapterMismatchError naming the
    adapter file and tensor when they do not fit the base.
    """
    import torch

    cfg_path = adapter_dir / "adapter_config.json"
    cfg = read_adapter_config(adapter_dir)  # typed and bounded (wbsafe.io.config_files)
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterMismatchError(f"peft_type {ptype} is not supported (LoRA only)", cfg_path)
    if cfg.get("use_dora"):
        raise AdapterMismatchError(
            "DoRA adapters rescale whole weight columns; the factor diff does not cover them",
            cfg_path,
        )
    files = weight_files(adapter_dir, "adapter_model")
    infos = read_headers(files)
    fname = str(files[0]) if len(files) == 1 else str(adapter_dir)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, info in infos.items():
        m = _LORA_RE.match(key)
        if m is None:
            if key.endswith(".bias") and ".lora_" in key:
                raise AdapterMismatchError(f"tensor {key!r}: LoRA bias is not supported", fname)
            if "lora_magnitude_vector" in key:
                raise AdapterMismatchError(f"tensor {key!r}: DoRA is not supported", fname)
            target = base_canon.get(canonical_name(key))
            if target is None:
                raise AdapterMismatchError(f"tensor {key!r} has no counterpart in the base", fname)
            if tuple(infos[key].shape) != tuple(base[target].shape):
                raise AdapterMismatchError(
                    f"tensor {key!r} shape {list(info.shape)} does not fit base "
                    f"{target} {list(base[target].shape)}",
                    fname,
                )
            full[target] = read_tensor(info, torch.float32)
            continue
        kind = m.group("lin") or m.group("emb")
        halves.setdefault(m.group("mod"), {})[kind] = read_tensor(info, torch.float32)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for mod, parts in halves.items():
        module = canonical_name(mod)
        target = base_canon.get(canonical_name(mod + ".weight"))
        if target is None:
            raise AdapterMismatchError(
                f"tensor {mod}.lora_*: module {module!r} is not in the base checkpoint", fname
            )
        shape = tuple(base[target].shape)
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        ka, kb = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        if ka not in parts or kb not in parts:
            raise AdapterMismatchError(f"tensor {mod}: has only one of {ka}/{kb}", fname)
        a, b = parts[ka], parts[kb]
        r = a.shape[0]
        want_r = lora_rank(cfg, mod)
        if b.ndim != 2 or a.ndim != 2 or b.shape[1] != r:
            raise AdapterMismatchError(
                f"tensor {mod}: {kb} {list(b.shape)} and {ka} {list(a.shape)} are not factors",
                fname,
            )
        if want_r != r:
            raise AdapterMismatchError(
                f"tensor {mod}.{ka}: rank {r} but adapter_config says r={want_r}", fname
            )
        scale = lora_scale(cfg, mod, r)
        conv1d = (
            storage_of(family, canonical_name(target)) == CONV1D
            if family is not None
            else bool(cfg.get("fan_in_fan_out"))
        )
        if emb or conv1d:
            bf, af = a.T.contiguous() * scale, b.T.contiguous()  # dW = (B A)ᵀ = Aᵀ Bᵀ
        else:
            bf, af = b * scale, a
        if len(shape) != 2 or bf.shape[0] != shape[0] or af.shape[1] != shape[1]:
            raise AdapterMismatchError(
                f"tensor {mod}.{kb}/{ka}: update shape [{bf.shape[0]}, {af.shape[1]}] does not "
                f"fit base {target} {list(shape)}",
                fname,
            )
        out[target] = (bf, af)
    return out, full, fname
