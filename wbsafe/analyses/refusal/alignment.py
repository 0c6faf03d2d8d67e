"""Refusal alignment of a weight update: how much of dW writes along the refusal direction.

For a matrix writing the residual stream, ``dW: [d_model, in]`` (an embedding:
``[vocab, d_model]``) and the fit's unit direction ``r̂: Float64[d_model]``, the alignment
is ``||r̂ᵀ dW|| / ||dW||_F`` (``||dE r̂|| / ||dE||_F`` for an embedding): 1 when the update
only writes along r̂ (an abliteration-style edit), ~1/sqrt(d_model) for a random one.
dW comes from a full checkpoint (tuned - base, one tensor at a time) or from LoRA factors
``scale · B A`` (B: [out, R], A: [R, in]; never formed), with each module's rank and scale
from its adapter config (``rank_pattern``/``alpha_pattern``, see
:func:`wbsafe.analyses.weights.lora_math.lora_scale`).

Which matrices write the residual stream, at which layer, in which storage layout, and
whether a norm follows them before the add, is read from the family table
(:mod:`wbsafe.arch.families`): a Conv1D writer (GPT-2, ``[in, d_model]``) is projected on
its output side, and for a family whose block outputs are normed before the add (Gemma's
sandwich norms, OLMo 2) the update is measured as it reaches the stream, ``diag(g) dW``
with ``g`` the base's post-norm gain of that layer (the per-token RMS scale cancels in
the ratio).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.arch.families import (
    CONV1D,
    Family,
    family_of_config,
    layer_module,
    post_norm_of,
    storage_of,
    writer_kind,
)
from wbsafe.arch.names import canonical_name
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

    from wbsafe.analyses.refusal.fit import RefusalDirectionFit

Gain = Callable[[str], "torch.Tensor | None"]
"""Post-norm gain Float64[d_model] of a canonical writer name, or None (no post-norm)."""


@dataclass(frozen=True)
class MatrixAlignment:
    name: str
    layer: int | None
    kind: str
    update_norm: float
    along_norm: float

    @property
    def alignment(self) -> float:
        return self.along_norm / self.update_norm if self.update_norm > 0 else 0.0


@dataclass(frozen=True)
class RefusalAlignment:
    """||r̂ᵀ dW|| / ||dW|| for matrices writing the residual stream; 1 = the update only
    writes along the refusal direction (an abliteration-style edit), ~1/sqrt(d) = random."""

    overall: float
    per_layer: dict[str, float]
    matrices: tuple[MatrixAlignment, ...]
    source: str

    def to_json(self) -> dict[str, Any]:
        from wbsafe.io.serialize import to_jsonable

        out = dict(to_jsonable(self))
        out["matrices"] = [{**to_jsonable(m), "alignment": m.alignment} for m in self.matrices]
        return out


def _layer_of(family: Family, name: str) -> int | None:
    lm = layer_module(family, name)
    return lm[0] if lm is not None else None


def _post_norm_gain(family: Family, base_dir: Path) -> Gain:
    """The base's post-norm gain (``offset + weight``) for each writer, read lazily."""
    import torch

    from wbsafe.io.checkpoints import load_tensor, read_headers, weight_files

    if not family.post_norms:
        return lambda name: None
    headers = {canonical_name(k): v for k, v in read_headers(weight_files(base_dir)).items()}
    cache: dict[str, torch.Tensor] = {}

    def gain(name: str) -> torch.Tensor | None:
        lm = layer_module(family, name)
        norm = post_norm_of(family, lm[1]) if lm is not None else None
        if lm is None or norm is None:
            return None
        key = family.layer_prefix.format(lm[0]) + norm + ".weight"
        if key not in headers:
            raise WbsafeError(f"the base has no {key}, the norm after {name}", base_dir)
        if key not in cache:
            cache[key] = load_tensor(headers[key], torch.float64) + family.norm_offset
        return cache[key]

    return gain


def _dense_parts(
    family: Family, name: str, dw: torch.Tensor, r: torch.Tensor, gain: Gain
) -> tuple[float, float] | None:
    """(||dW||_F, ||component of dW along r̂||) for a writer matrix as it reaches the stream:
    a Linear writer is [d, in], a Conv1D one [in, d], an embedding [vocab, d]."""
    if dw.ndim != 2:
        return None
    kind = writer_kind(family, name)
    # an embedding [vocab, d] or a Conv1D [in, d]: its columns are what one token / input writes
    transposed = kind in ("embed", "pos_embed") or storage_of(family, name) == CONV1D
    out = dw.T if transposed else dw
    if out.shape[0] != r.numel():
        return None
    g = gain(name)
    if g is not None:
        out = out * g[:, None]
    return float(out.norm()), float((r @ out).norm())


def _lora_parts(
    a: torch.Tensor, b: torch.Tensor, scale: float, r: torch.Tensor
) -> tuple[float, float]:
    """dW = scale * B A (B: [out, R], A: [R, in]) without forming it; for an embedding
    (A: [R, vocab], B: [d, R]) the same formulas give ||dE r̂||."""
    gram = (b.T @ b) * (a @ a.T)
    fro = scale * math.sqrt(max(float(gram.sum()), 0.0))
    along = scale * float(((r @ b) @ a).norm())
    return fro, along


def _lora_matrices(
    family: Family, adapter: Path, r: torch.Tensor, gain: Gain
) -> list[MatrixAlignment]:
    """The writer matrices of one LoRA adapter directory, each with its own scale (peft's
    ``lora_B`` is ``[out, R]`` for Linear and Conv1D alike)."""
    import torch

    from wbsafe.analyses.weights.lora_math import lora_rank, lora_scale
    from wbsafe.io.checkpoints import load_tensor, read_headers, weight_files
    from wbsafe.io.models import read_adapter_config

    cfg = read_adapter_config(adapter)
    headers = read_headers(weight_files(adapter, stem="adapter_model"))
    mats: list[MatrixAlignment] = []
    for key, info in headers.items():
        for tag_a, tag_b in ((".lora_A", ".lora_B"), (".lora_embedding_A", ".lora_embedding_B")):
            if tag_a not in key:
                continue
            module = key.split(tag_a)[0]
            canon = canonical_name(module)
            kind = writer_kind(family, canon)
            b_key = key.replace(tag_a, tag_b)
            if kind is None or b_key not in headers:
                continue
            a = load_tensor(info, torch.float64)
            b = load_tensor(headers[b_key], torch.float64)
            if b.shape[0] != r.numel():
                continue
            g = gain(canon)
            if g is not None:
                b = b * g[:, None]
            scale = lora_scale(cfg, module, lora_rank(cfg, module))
            fro, along = _lora_parts(a, b, scale, r)
            mats.append(MatrixAlignment(canon, _layer_of(family, canon), kind, fro, along))
    return mats


def _dense_matrices(
    family: Family, base_dir: Path, tuned_dir: Path, r: torch.Tensor, gain: Gain
) -> list[MatrixAlignment]:
    """The writer matrices of a full checkpoint against the base, dW = tuned - base."""
    import torch

    from wbsafe.io.checkpoints import load_tensor, read_headers, weight_files

    base_h = {canonical_name(k): v for k, v in read_headers(weight_files(base_dir)).items()}
    tuned_h = {canonical_name(k): v for k, v in read_headers(weight_files(tuned_dir)).items()}
    mats: list[MatrixAlignment] = []
    for name, info in tuned_h.items():
        kind = writer_kind(family, name)
        if kind is None or name not in base_h or not name.endswith("weight"):
            continue
        dw = load_tensor(info, torch.float64) - load_tensor(base_h[name], torch.float64)
        parts = _dense_parts(family, name, dw, r, gain)
        if parts is None:
            continue
        mats.append(MatrixAlignment(name, _layer_of(family, name), kind, *parts))
    return mats


def refusal_alignment(
    base_dir: str | Path,
    tuned: str | Path | Sequence[str | Path],
    fit: RefusalDirectionFit,
) -> RefusalAlignment:
    """||r̂ᵀ dW|| / ||dW|| of the update, per matrix, per layer and overall.

    ``tuned`` is a full checkpoint directory (dW read from the files with
    :mod:`wbsafe.io.checkpoints`, one tensor at a time) or one or more LoRA adapter
    directories (from the factors, never forming B A). r̂ is the fit's selected direction.
    """
    import torch

    from wbsafe.io.models import is_adapter_dir, read_config

    r = torch.as_tensor(fit.direction, dtype=torch.float64)
    paths = [Path(tuned)] if isinstance(tuned, str | Path) else [Path(t) for t in tuned]
    family = family_of_config(read_config(base_dir))
    gain = _post_norm_gain(family, Path(base_dir))
    if all(is_adapter_dir(p) for p in paths):
        source = "lora factors"
        mats = [m for adapter in paths for m in _lora_matrices(family, adapter, r, gain)]
    elif len(paths) == 1 and not is_adapter_dir(paths[0]):
        source = "checkpoint files"
        mats = _dense_matrices(family, Path(base_dir), paths[0], r, gain)
    else:
        raise WbsafeError(
            "pass either one full checkpoint or adapter directories, not a mix", paths[0]
        )
    if not mats:
        raise WbsafeError("no matrix writing the residual stream was found in the update", paths[0])
    per: dict[str, list[float]] = {}
    for m in mats:
        key = "embed" if m.layer is None else str(m.layer)
        acc = per.setdefault(key, [0.0, 0.0])
        acc[0] += m.update_norm**2
        acc[1] += m.along_norm**2
    per_layer = {k: (math.sqrt(v[1] / v[0]) if v[0] > 0 else 0.0) for k, v in per.items()}
    tot = sum(m.update_norm**2 for m in mats)
    along_tot = sum(m.along_norm**2 for m in mats)
    overall = math.sqrt(along_tot / tot) if tot > 0 else 0.0
    return RefusalAlignment(overall, per_layer, tuple(mats), source)
