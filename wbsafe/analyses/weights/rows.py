"""Embedding-row outliers and roll-ups over tensors.

Embedding and unembedding rows (``[vocab, d]``) get a per-token report: the global shrink
is removed by the least-squares scalar ``s = <E_tuned, E_base> / ||E_base||²`` and each row
scored by ``||E_tuned,i - s E_base,i|| / ||E_base,i||``; scores are robust-z-scored over the
vocabulary with ``(x - median) / (1.4826 · MAD)``. Roll-ups sum tensor rows per layer, per
module and per (layer, module) cell, norms as the square root of summed squares.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from wbsafe.analyses.weights.results import Rollup, RowReport, TensorDiff, TokenRowChange
from wbsafe.arch.names import MODULE_ORDER
from wbsafe.io.token_strings import TokenStrings

if TYPE_CHECKING:
    import torch


def _robust_z(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``(x - median) / (1.4826 MAD)``; MAD 0 falls back to the std, then to 1."""
    med = float(x.median())
    mad = float((x - med).abs().median())
    scale = 1.4826 * mad
    if scale <= 0.0:
        scale = float(x.std()) if x.numel() > 1 else 0.0
    if not math.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    return (x - med) / scale, med, mad


def row_report(
    name: str,
    w2: torch.Tensor,
    dw2: torch.Tensor,
    wd: torch.Tensor,
    *,
    top_k: int,
    token_strings: TokenStrings | None,
    added_norms: torch.Tensor | None = None,
) -> RowReport:
    """Per-token report from per-row ``||W_i||²``, ``||dW_i||²``, ``<W_i, dW_i>`` (float64
    ``[vocab]`` each); ``added_norms``: norms of rows a resized vocabulary added.

    Global scale ``s - 1 = Σ<W_i,dW_i> / Σ||W_i||²``; residual row norm
    ``||dW_i - (s-1) W_i||``; relative to ``max(||W_i||, 1e-3 · median ||W_i||)``.
    """
    import torch

    c = float(wd.sum() / w2.sum()) if float(w2.sum()) > 0 else 0.0
    resid2 = (dw2 - 2.0 * c * wd + c * c * w2).clamp_min(0.0)
    wn = w2.sqrt()
    floor = max(float(wn.median()) * 1e-3, 1e-12)
    denom = wn.clamp_min(floor)
    raw = dw2.sqrt() / denom
    resid = resid2.sqrt() / denom
    z, med, mad = _robust_z(resid)
    # only rows that moved: with nothing changed, any order of the rest would be arbitrary
    moved = torch.nonzero(dw2 > 0).squeeze(1)
    picked = moved[torch.argsort(resid[moved], descending=True)[:top_k]]
    order = picked.tolist()
    strings = token_strings(order) if token_strings is not None and order else None
    if strings is None:
        strings = [None] * len(order)
    figures = zip(raw[picked].tolist(), resid[picked].tolist(), z[picked].tolist(), strict=True)
    top = [
        TokenRowChange(token_id=i, token=tok, rel_change=r, residual_rel=x, z=zz)
        for i, tok, (r, x, zz) in zip(order, strings, figures, strict=True)
    ]
    n = int(w2.numel())
    added = [] if added_norms is None else list(range(n, n + int(added_norms.numel())))
    return RowReport(
        tensor=name,
        n_rows=n,
        n_moved=int(moved.numel()),
        global_scale=1.0 + c,
        median_residual_rel=med,
        mad_residual_rel=mad,
        top=top,
        added_rows=added,
        added_row_norms=[] if added_norms is None else [float(v) for v in added_norms],
    )


def rollups(rows: list[TensorDiff]) -> tuple[list[Rollup], list[Rollup], list[Rollup]]:
    """(by layer, by module in :data:`MODULE_ORDER`, (layer, module) cells by relative change)."""

    def agg(key: Callable[[TensorDiff], tuple[int | None, str | None]]) -> list[Rollup]:
        acc: dict[tuple[int | None, str | None], list[float]] = {}
        for r in rows:
            if r.fro_diff is None or r.fro_base is None:
                continue
            a = acc.setdefault(key(r), [0.0, 0.0, 0.0])
            a[0] += r.fro_base**2
            a[1] += r.fro_diff**2
            a[2] += 1
        out = []
        for (layer, module), (b2, d2, n) in acc.items():
            fb, fd = math.sqrt(b2), math.sqrt(d2)
            out.append(Rollup(layer, module, fb, fd, fd / fb if fb > 0 else None, int(n)))
        return out

    def lkey(r: Rollup) -> tuple[int, int]:
        return (-1 if r.layer is None else r.layer, 0)

    mo = {m: i for i, m in enumerate(MODULE_ORDER)}
    by_layer = sorted(agg(lambda r: (r.layer, None)), key=lkey)
    by_module = sorted(agg(lambda r: (None, r.module)), key=lambda r: mo.get(r.module or "", 99))
    cells = agg(lambda r: (r.layer, r.module))
    ranking = sorted(cells, key=lambda r: -(r.rel_diff if r.rel_diff is not None else -1.0))
    return by_layer, by_module, ranking
