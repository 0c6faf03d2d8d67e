"""Dense and low-rank (factored) update statistics, never forming B·A.

A low-rank update is ``dW = B @ A`` with ``B: [out, R]`` (scale already folded in) and
``A: [R, in]``. Its Frobenius norm and spectrum come from ``B = Q_B R_B``,
``Aᵀ = Q_A R_A`` and the SVD of the small core ``R_B @ R_Aᵀ`` (``R × R``): the singular
values of the core are those of dW, and ``Q_B U``, ``Q_A V`` are its singular vectors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

EXACT_SVD_MAX_DIM = 256
"""Dense matrices whose smaller side is at most this get an exact SVD; larger ones a
randomised one (:func:`randomized_svd`, oversampled by 10, 4 power iterations)."""


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small LAPACK calls on one thread: multi-threaded SVD/QR of a 64x64 matrix can take
    0.5 s instead of 1 ms when other processes compete for the cores (measured here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class Spectrum:
    """Top-k singular values of dW and derived figures; vectors stay in memory only."""

    values: list[float]
    stable_rank: float | None
    energy_top1: float | None
    energy_top8: float | None
    method: str
    u1: torch.Tensor | None
    v1: torch.Tensor | None


def dot(x: torch.Tensor, y: torch.Tensor) -> float:
    """``<x, y>`` of two same-shape float32 tensors: float32 dots of 1024-long pieces, summed
    in float64 (fast, and about 1e-6 relative accuracy on 1e8 entries)."""
    import torch

    xf, yf = x.reshape(-1), y.reshape(-1)
    n = xf.numel()
    m = n - n % 1024
    total = 0.0
    if m:
        pieces = torch.einsum("ij,ij->i", xf[:m].view(-1, 1024), yf[:m].view(-1, 1024))
        total += float(pieces.double().sum())
    if m < n:
        total += float(xf[m:].double().dot(yf[m:].double()))
    return total


def sq_norm(x: torch.Tensor) -> float:
    """``||x||²`` via :func:`dot` (``torch.linalg.vector_norm`` accumulates in float32 and was
    off by 0.7% on a 32000 x 2048 matrix here)."""
    return dot(x, x)


def spectrum_from_values(
    values: torch.Tensor,
    fro2: float,
    method: str,
    k: int,
    u1: torch.Tensor | None,
    v1: torch.Tensor | None,
) -> Spectrum:
    """Stable rank ``||dW||_F² / σ1²`` and energy shares ``Σ_top σ² / ||dW||_F²``."""
    vals = [float(v) for v in values[:k]]
    s1 = vals[0] if vals else 0.0
    if s1 <= 0.0 or fro2 <= 0.0:
        return Spectrum(vals, None, None, None, method, None, None)
    sq = [v * v for v in values.tolist()]
    return Spectrum(
        values=vals,
        stable_rank=fro2 / (s1 * s1),
        energy_top1=min(1.0, sq[0] / fro2),
        energy_top8=min(1.0, sum(sq[:8]) / fro2),
        method=method,
        u1=u1,
        v1=v1,
    )


def dense_spectrum(dw: torch.Tensor, fro2: float, k: int) -> Spectrum:
    """Spectrum of a dense 2-D ``dw: [m, n]`` (exact when small, randomised when large)."""
    import torch

    m, n = dw.shape
    kk = max(8, k)
    if min(m, n) <= EXACT_SVD_MAX_DIM:
        with one_thread():
            u, s, vh = torch.linalg.svd(dw, full_matrices=False)
        return spectrum_from_values(s, fro2, "exact", k, u[:, 0].clone(), vh[0].clone())
    q = min(kk + 10, m, n)
    u, s, v = randomized_svd(dw, q, niter=4)
    return spectrum_from_values(s, fro2, "randomized", k, u[:, 0].clone(), v[:, 0].clone())


def randomized_svd(
    a: torch.Tensor, q: int, *, niter: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``q`` SVD of ``a: [m, n]`` by a seeded Gaussian sketch with ``niter`` power
    iterations (Halko et al. 2011): ``u [m, q]``, ``s [q]``, ``v [n, q]``.

    The big products use all threads; the small QR/SVD steps run on one (see one_thread).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    sketch = torch.randn(a.shape[1], q, generator=g, dtype=a.dtype).to(a.device)
    y = a @ sketch
    with one_thread():
        basis = torch.linalg.qr(y).Q
    for _ in range(niter):
        z = (basis.T @ a).T  # [n, q], without a transposed copy of a
        with one_thread():
            z = torch.linalg.qr(z).Q
        y = a @ z
        with one_thread():
            basis = torch.linalg.qr(y).Q
    small = basis.T @ a  # [q, n]
    with one_thread():
        ub, s, vh = torch.linalg.svd(small, full_matrices=False)
    return basis @ ub, s, vh.T


@dataclass(frozen=True)
class FactorStats:
    """Figures of ``dW = B @ A`` and its base ``W``, all computed from the factors."""

    fro2_diff: float
    w_dot_dw: float
    max_abs: float
    support_share: float
    spectrum: Spectrum | None


def factor_stats(
    w: torch.Tensor, b: torch.Tensor, a: torch.Tensor, k: int, *, spectrum: bool = True
) -> FactorStats:
    """Statistics of ``dW = b @ a`` (``b: [out, R]``, ``a: [R, in]``) against ``w: [out, in]``.

    ``<W, dW> = Σ (bᵀ W) ⊙ a``; ``||dW||_F = ||R_B R_Aᵀ||_F``; max |dW| is taken over row
    blocks of at most 256 rows (the full product never exists); the changed share is the
    share of the factors' support (non-zero rows of B × non-zero columns of A), exact
    unless terms cancel.
    """
    import torch

    with one_thread():
        qb, rb = torch.linalg.qr(b, mode="reduced")
        qa, ra = torch.linalg.qr(a.T, mode="reduced")
    core = rb @ ra.T
    fro2 = float(core.double().square().sum())
    w_dot = float((b.T @ w).double().mul(a.double()).sum())
    max_abs = 0.0
    for i in range(0, b.shape[0], 256):
        blk = b[i : i + 256] @ a
        max_abs = max(max_abs, float(blk.abs().max()))
    rows = int((b != 0).any(dim=1).sum())
    cols = int((a != 0).any(dim=0).sum())
    share = (rows / b.shape[0]) * (cols / a.shape[1])
    spec = None
    if spectrum:
        with one_thread():
            u, s, vh = torch.linalg.svd(core, full_matrices=False)
        spec = spectrum_from_values(
            s, fro2, "lora-core", k, (qb @ u[:, 0]).clone(), (qa @ vh[0]).clone()
        )
    return FactorStats(fro2, w_dot, max_abs, share, spec)


def cosine_from_parts(w2: float, w_dot_dw: float, dw2: float) -> float | None:
    """cos(W, W + dW) from ``||W||²``, ``<W, dW>`` and ``||dW||²``."""
    t2 = w2 + 2.0 * w_dot_dw + dw2
    if w2 <= 0.0 or t2 <= 0.0:
        return None
    return (w2 + w_dot_dw) / (math.sqrt(w2) * math.sqrt(t2))


def factor_row_parts(
    w: torch.Tensor, b: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``||W_i||²``, ``||dW_i||²``, ``<W_i, dW_i>`` for ``dW = b @ a``, in float64.

    ``||dW_i||² = b_i (a aᵀ) b_iᵀ`` and ``<W_i, dW_i> = b_i · (W aᵀ)_i``: cost O(rows · R · in).
    """
    gram = (a @ a.T).double()
    bd = b.double()
    dw2 = ((bd @ gram) * bd).sum(dim=1).clamp_min(0.0)
    wd = ((w @ a.T).double() * bd).sum(dim=1)
    w2 = w.double().square().sum(dim=1)
    return w2, dw2, wd


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank/alpha pattern lookup: a key matches the module name or a dotted suffix."""
    for key, val in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return val
    return default


PEFT_PREFIX = "base_model.model."
"""What peft puts before a module's name in an adapter file; its ``rank_pattern`` and
``alpha_pattern`` keys are matched against the name without it."""


def lora_rank(config: dict[str, Any], module: str) -> int:
    """The rank ``adapter_config.json`` gives ``module`` (its name as in the adapter file;
    ``rank_pattern`` over ``r``)."""
    name = module.removeprefix(PEFT_PREFIX)
    return int(pattern_value(config.get("rank_pattern") or {}, name, config.get("r", 8)))


def lora_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """dW = scale · B A for ``module`` (its name as in the adapter file) of a LoRA adapter with
    factors of rank ``rank``: ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), alpha from
    ``alpha_pattern`` over ``lora_alpha`` (peft's default 8). The one place this is computed."""
    name = module.removeprefix(PEFT_PREFIX)
    alpha_default = config.get("lora_alpha", 8)
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, name, alpha_default))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
