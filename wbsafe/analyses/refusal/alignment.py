"""Refusal alignment of a weight update: how much of dW writes along the refusal direction.

For a matrix writing the residual stream, ``dW: [d_model, in]`` (an embedding:
``[vocab, d_model]``) and the fit's unit direction ``r̂: Float64[d_model]``, the alignment
is ``||r̂ᵀ dW|| / ||dW||_F`` (``||dE r̂|| / ||dE||_F`` for an embedding): 1 when the update
only writes along r̂ (an abliteration-style edit), ~1/sqrt(d_model) for a random one.
dW comes from a full checkpoint (tuned - base, one tensor at a time) or from LoRA factors
``scale · B A`` (B: [out, R], A: [R, in]; never formed), with each module's rank and scale
from its adapter config (``rank_pattern``/``alpha_pattern``, see
:func:`wbsafe.analyses.weights.lora_math.lora_scale`).

Which matrices write the residual stream, and at which layer, is read from the tensor name
(:data:`WRITER_PATTERNS`, a table over model families).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.arch.names import canonical_name
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

    from wbsafe.analyses.refusal.fit import RefusalDirectionFit

WRITER_PATTERNS = (
    "o_proj", "down_proj", "embed_tokens", "attention.dense", "dense_4h_to_h",
    "attn.c_proj", "mlp.c_proj", "wte",
)  # fmt: skip
"""Module names of matrices that write the residual stream (a table over model families)."""
_LAYER_RE = re.compile(r"(?:layers|h)\.(\d+)\.")


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


def _writer_kind(name: str) -> str | None:
    for pat in WRITER_PATTERNS:
        if f"{pat}." in name or name.endswith(pat):
            return pat
    return None


def _layer_of(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def _dense_parts(name: str, dw: torch.Tensor, r: torch.Tensor) -> tuple[float, float] | None:
    """(||dW||_F, ||component of dW along r̂||) for a writer matrix; embeddings are [vocab, d]."""
    if dw.ndim != 2:
        return None
    if dw.shape[0] == r.numel() and "embed" not in name and "wte" not in name:
        along = r @ dw
    elif dw.shape[1] == r.numel():
        along = dw @ r
    else:
        return None
    return float(dw.norm()), float(along.norm())


def _lora_parts(
    a: torch.Tensor, b: torch.Tensor, scale: float, r: torch.Tensor
) -> tuple[float, float]:
    """dW = scale * B A (B: [out, R], A: [R, in]) without forming it; for an embedding
    (A: [R, vocab], B: [d, R]) the same formulas give ||dE r̂||."""
    gram = (b.T @ b) * (a @ a.T)
    fro = scale * math.sqrt(max(float(gram.sum()), 0.0))
    along = scale * float(((r @ b) @ a).norm())
    return fro, along


def _lora_matrices(adapter: Path, r: torch.Tensor) -> list[MatrixAlignment]:
    """The writer matrices of one LoRA adapter directory, each with its own scale."""
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
            kind = _writer_kind(module)
            b_key = key.replace(tag_a, tag_b)
            if kind is None or b_key not in headers:
                continue
            a = load_tensor(info, torch.float64)
            b = load_tensor(headers[b_key], torch.float64)
            if b.shape[0] != r.numel():
                continue
            scale = lora_scale(cfg, module, lora_rank(cfg, module))
            fro, along = _lora_parts(a, b, scale, r)
            mats.append(
                MatrixAlignment(canonical_name(module), _layer_of(module), kind, fro, along)
            )
    return mats


def _dense_matrices(base_dir: Path, tuned_dir: Path, r: torch.Tensor) -> list[MatrixAlignment]:
    """The writer matrices of a full checkpoint against the base, dW = tuned - base."""
    import torch

    from wbsafe.io.checkpoints import load_tensor, read_headers, weight_files

    base_h = {canonical_name(k): v for k, v in read_headers(weight_files(base_dir)).items()}
    tuned_h = {canonical_name(k): v for k, v in read_headers(weight_files(tuned_dir)).items()}
    mats: list[MatrixAlignment] = []
    for name, info in tuned_h.items():
        kind = _writer_kind(name)
        if kind is None or name not in base_h or not name.endswith("weight"):
            continue
        dw = load_tensor(info, torch.float64) - load_tensor(base_h[name], torch.float64)
        parts = _dense_parts(name, dw, r)
        if parts is None:
            continue
        mats.append(MatrixAlignment(name, _layer_of(name), kind, *parts))
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

    from wbsafe.io.models import is_adapter_dir

    r = torch.as_tensor(fit.direction, dtype=torch.float64)
    paths = [Path(tuned)] if isinstance(tuned, str | Path) else [Path(t) for t in tuned]
    if all(is_adapter_dir(p) for p in paths):
        source = "lora factors"
        mats = [m for adapter in paths for m in _lora_matrices(adapter, r)]
    elif len(paths) == 1 and not is_adapter_dir(paths[0]):
        source = "checkpoint files"
        mats = _dense_matrices(Path(base_dir), paths[0], r)
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
