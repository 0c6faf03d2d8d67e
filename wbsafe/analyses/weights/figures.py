"""One tensor's :class:`TensorDiff` row: from its stored values, or from LoRA factors.

:func:`dense_row` streams base and tuned values of a tensor of any shape through
:func:`~.dense.dense_stats` and takes the spectrum of dW for 2-D ``[out, in]`` tensors;
:func:`factor_row` measures ``dW = B A`` (``B [out, r]`` with the scale folded in,
``A [r, in]``) from the factors (:mod:`~.lora_math`), never forming B·A. Both record
non-finite tensors, top singular vectors and engine counts in an :class:`~.accumulate.Acc`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.weights.accumulate import Acc
from wbsafe.analyses.weights.dense import BLOCK, DenseStats, Source, dense_stats, row_step
from wbsafe.analyses.weights.lora_math import (
    Spectrum,
    cosine_from_parts,
    dense_spectrum,
    factor_stats,
    sq_norm,
)
from wbsafe.analyses.weights.results import TensorDiff
from wbsafe.arch.names import parse_name
from wbsafe.io.checkpoints import TensorInfo

if TYPE_CHECKING:
    import torch


def _dtype_eps(dtype: str) -> float:
    return {"BF16": 2.0**-7, "F16": 2.0**-10, "F32": 2.0**-23, "F64": 2.0**-52}.get(dtype, 0.0)


def _count_nonfinite(t: torch.Tensor) -> int:
    import torch

    return int((~torch.isfinite(t)).sum())


def _count_nonfinite_chunked(read: Source, shape: tuple[int, ...], chunk: int) -> int:
    import torch

    rowlen, n_rows, step = row_step(shape, chunk)
    n = 0
    for i in range(0, n_rows, step):
        j = min(n_rows, i + step)
        n += int((~torch.isfinite(read(i * rowlen, j * rowlen))).sum())
    return n


def _spec_fields(spec: Spectrum | None) -> dict[str, Any]:
    if spec is None:
        return dict(
            top_singular_values=[],
            stable_rank=None,
            energy_top1=None,
            energy_top8=None,
            spectrum_method=None,
        )
    return dict(
        top_singular_values=spec.values,
        stable_rank=spec.stable_rank,
        energy_top1=spec.energy_top1,
        energy_top8=spec.energy_top8,
        spectrum_method=spec.method,
    )


def dense_row(
    bi: TensorInfo,
    ti: TensorInfo,
    read_w: Source,
    read_t: Source,
    shape: tuple[int, ...],
    *,
    spectrum_k: int,
    spectra: bool,
    acc: Acc,
    want_rows: bool = False,
    chunk: int = BLOCK,
    device: torch.device | None = None,
) -> tuple[TensorDiff, DenseStats | None]:
    """Figures for one tensor of ``shape`` from its stored base and tuned values (reduced
    on ``device`` when given, :mod:`~.device_stats`)."""
    layer, module = parse_name(ti.name)
    if bi.dtype == ti.dtype:
        eps, note = 0.0, "exact: entries with dW != 0"
    else:
        eps = max(_dtype_eps(bi.dtype), _dtype_eps(ti.dtype))
        note = f"|dW| > {eps:.3g}·|W| (dtypes differ: rounding is not a change)"
    keep = spectra and len(shape) == 2 and min(shape) > 1
    if device is not None:
        from wbsafe.analyses.weights.device_stats import device_stats

        st = device_stats(read_w, read_t, shape, rel_tol=eps, want_rows=want_rows,
                          keep_dw=keep, device=device, chunk=chunk)  # fmt: skip
    else:
        st = dense_stats(
            read_w, read_t, shape, rel_tol=eps, want_rows=want_rows, keep_dw=keep, chunk=chunk
        )
    acc.engines[st.engine] = acc.engines.get(st.engine, 0) + 1
    w2, dw2, wd = st.w2, st.dw2, st.wd
    if not all(math.isfinite(v) for v in (w2, dw2, wd, st.max_abs)):
        nf_b = _count_nonfinite_chunked(read_w, shape, chunk)
        nf_t = _count_nonfinite_chunked(read_t, shape, chunk)
        if nf_b or nf_t:
            acc.nonfinite.append(ti.name)
            row = TensorDiff(
                ti.name, layer, module, tuple(ti.shape), bi.dtype, ti.dtype, "dense",
                None, None, None, None, None, None, "non-finite values", **_spec_fields(None),
                nonfinite_base=nf_b, nonfinite_tuned=nf_t,
            )  # fmt: skip
            return row, None
    spec = None
    if st.dw is not None and dw2 > 0.0:
        spec = dense_spectrum(st.dw, dw2, spectrum_k)
        if spec.u1 is not None and spec.v1 is not None:
            acc.vectors[ti.name] = (spec.u1.cpu(), spec.v1.cpu())
    st.dw = None
    fb, fd = math.sqrt(w2), math.sqrt(dw2)
    row = TensorDiff(
        name=ti.name,
        layer=layer,
        module=module,
        shape=tuple(ti.shape),
        dtype_base=bi.dtype,
        dtype_tuned=ti.dtype,
        source="dense",
        fro_base=fb,
        fro_diff=fd,
        rel_diff=fd / fb if fb > 0 else None,
        cosine=cosine_from_parts(w2, wd, dw2),
        max_abs_diff=st.max_abs,
        changed_share=st.changed / max(math.prod(shape), 1),
        changed_share_note=note,
        **_spec_fields(spec),
        nonfinite_base=0,
        nonfinite_tuned=0,
    )
    return row, st


def factor_row(
    name: str,
    info: TensorInfo,
    w: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    spectrum_k: int,
    spectra: bool,
    acc: Acc,
) -> TensorDiff:
    """Figures for base ``w`` (``[out, in]``) updated by ``b @ a`` (``[out, r]``, ``[r, in]``)."""
    import torch

    layer, module = parse_name(name)
    w2 = sq_norm(w)
    finite = bool(torch.isfinite(b).all()) and bool(torch.isfinite(a).all())
    if not math.isfinite(w2) or not finite:
        acc.nonfinite.append(name)
        nf_b = _count_nonfinite(w)
        nf_t = _count_nonfinite(b) + _count_nonfinite(a)
        return TensorDiff(
            name, layer, module, tuple(info.shape), info.dtype, "LORA", "lora",
            None, None, None, None, None, None, "non-finite values (tuned count is in the factors)",
            **_spec_fields(None), nonfinite_base=nf_b, nonfinite_tuned=nf_t,
        )  # fmt: skip
    st = factor_stats(w, b, a, spectrum_k, spectrum=spectra)
    spec = st.spectrum if st.fro2_diff > 0 else None
    if spec is not None and spec.u1 is not None:
        acc.vectors[name] = (spec.u1, spec.v1)
    fb, fd = math.sqrt(w2), math.sqrt(st.fro2_diff)
    return TensorDiff(
        name=name,
        layer=layer,
        module=module,
        shape=tuple(info.shape),
        dtype_base=info.dtype,
        dtype_tuned="LORA",
        source="lora",
        fro_base=fb,
        fro_diff=fd,
        rel_diff=fd / fb if fb > 0 else None,
        cosine=cosine_from_parts(w2, st.w_dot_dw, st.fro2_diff),
        max_abs_diff=st.max_abs,
        changed_share=st.support_share,
        changed_share_note="support of the factors (nonzero rows of B × nonzero cols of A); "
        "exact unless terms cancel",
        **_spec_fields(spec),
        nonfinite_base=0,
        nonfinite_tuned=0,
    )
