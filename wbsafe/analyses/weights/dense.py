"""The dense chunk engine: one streamed pass over a tensor's base and tuned values.

A tensor of any shape is viewed as ``[rows, shape[-1]]`` and read in chunks of whole rows
(about :data:`BLOCK` entries); each chunk is reduced to ``Σ||W||²``, ``Σ||dW||²``,
``Σ<W, dW>``, max ``|dW|`` and a count of changed entries, and optionally to per-row
figures (float64 ``[rows]`` × 3) and the full float32 dW (``shape``, for the spectrum).
The fused C kernel (:mod:`wbsafe.analyses.weights.diff_kernel`) computes the same figures
as the torch path in one pass where it is built and reads the dtypes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wbsafe.analyses.weights.lora_math import one_thread
from wbsafe.io.checkpoints import TensorReader

if TYPE_CHECKING:
    import torch

    from wbsafe.analyses.weights.diff_kernel import Kernel

BLOCK = 1 << 20  # elements per chunk: 4 MB of float32; a chunk stays in L3 across its passes

Source = Callable[[int, int], "torch.Tensor"]
"""Elements ``[start, stop)`` of a flattened tensor, in its stored dtype."""


def kernel() -> Kernel | None:
    """The fused kernel, or None (:func:`wbsafe.analyses.weights.diff_kernel.kernel`).

    Imported on first use, so that importing the package does not load ``diff_kernel``
    (``python -m wbsafe.analyses.weights.diff_kernel`` then runs it without a second copy).
    """
    from wbsafe.analyses.weights.diff_kernel import kernel as fused_kernel

    return fused_kernel()


def engine_summary(counts: dict[str, int]) -> str:
    """What computed a diff's dense figures, from tensors per engine: ``native
    (<compiler>)``, ``torch``, both with counts, or none (an adapter of factors only)."""
    native, other = counts.get("native", 0), counts.get("torch", 0)
    on_device = {k: n for k, n in counts.items() if k.startswith("torch-")}
    if on_device:  # the reductions ran on an accelerator (device_stats)
        return ", ".join(f"{k} for {n} tensors" for k, n in sorted(on_device.items()))
    k = kernel()
    label = k.label if k is not None else "native"
    if native and other:
        return f"{label} for {native} tensors, torch for {other} (dtypes the kernel does not read)"
    return label if native else "torch" if other else "none (no dense tensors)"


def tensor_source(t: torch.Tensor) -> Source:
    """A :data:`Source` over an in-memory tensor (its flattened view, sliced)."""
    flat = t.reshape(-1)

    def read(start: int, stop: int) -> torch.Tensor:
        return flat[start:stop]

    return read


def scratch_source(reader: TensorReader) -> Source:
    """A :data:`Source` reading into ``reader``'s reused buffer (valid until the next call)."""

    def read(start: int, stop: int) -> torch.Tensor:
        return reader.read(start, stop, scratch=True)

    return read


def row_step(shape: tuple[int, ...], chunk: int) -> tuple[int, int, int]:
    """(entries per row, rows, rows per chunk) of ``shape`` viewed as ``[-1, shape[-1]]``."""
    rowlen = shape[-1] if len(shape) >= 1 and shape[-1] > 0 else 1
    n_rows = math.prod(shape) // rowlen
    return rowlen, n_rows, max(1, chunk // rowlen)


_THREAD_SCRATCH = threading.local()


def _scratch(name: str, size: int) -> torch.Tensor:
    """A float32 buffer of at least ``size`` entries, kept per thread and reused across
    tensors: a fresh multi-MB buffer per tensor costs page faults to zero it and a TLB
    flush to free it, each time (a third of the diff's system time here). Sliced to
    ``size``; its contents are whatever the last user left."""
    import torch

    bufs: dict[str, torch.Tensor] = getattr(_THREAD_SCRATCH, "bufs", None) or {}
    _THREAD_SCRATCH.bufs = bufs
    buf = bufs.get(name)
    if buf is None or buf.numel() < size:
        buf = bufs[name] = torch.empty(size, dtype=torch.float32)
    return buf[:size]


def release_scratch() -> None:
    """Drop the calling thread's scratch buffers (a pool's threads drop theirs as they end)."""
    _THREAD_SCRATCH.__dict__.clear()


@dataclass
class DenseStats:
    w2: float
    dw2: float
    wd: float
    changed: int
    max_abs: float
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # per-row ||W||², ||dW||², <W,dW>
    dw: torch.Tensor | None  # full float32 dW, kept only for the spectrum
    engine: str  # "native" (the fused kernel) or "torch"


def dense_stats(
    read_w: Source,
    read_t: Source,
    shape: tuple[int, ...],
    *,
    rel_tol: float,
    want_rows: bool,
    keep_dw: bool,
    chunk: int = BLOCK,
    use_kernel: bool = True,
) -> DenseStats:
    """One chunked pass over base and tuned values of a tensor of ``shape`` (any dtype).

    ``read_w``/``read_t`` give stored entries by flat range (a result is used before the
    next call, so it may live in a reused buffer); each chunk of about ``chunk``
    entries (whole rows of the last dim, at least one row) is read and reduced while in
    cache; sums add up in float64. Only one chunk of each side is resident at a time (plus
    dW when ``keep_dw``, for the spectrum). An entry counts as changed when
    ``|dW| > rel_tol · |W|`` (``rel_tol`` 0: dW != 0, tuned != base as numbers).

    Two engines compute the same figures: the fused C kernel (:mod:`diff_kernel`, one pass
    per chunk over entries stored as float32, bfloat16 or float16) when it is built and
    ``use_kernel``, else torch: up-cast, subtract, then three dots, a count and a max (a
    chunk where dW is all zero skips the dW reductions). Both run on one thread; callers
    parallelise over tensors (many small multi-threaded ops were 10x slower than one thread
    when other processes shared the cores, measured here).
    """
    import torch

    rowlen, n_rows, step = row_step(shape, chunk)
    dw_full = torch.empty((n_rows, rowlen), dtype=torch.float32) if keep_dw else None
    w2 = dw2 = wd = 0.0
    changed, hi = 0, 0.0
    # nothing that outlives an iteration is allocated in the loop (scratch is per thread)
    rows = [torch.empty(n_rows if want_rows else 0, dtype=torch.float64) for _ in range(3)]
    fused = kernel() if use_kernel else None
    k_acc = torch.zeros(4, dtype=torch.float64)  # the kernel's Σw², Σd², Σw·d, max|d|
    k_changed = torch.zeros(1, dtype=torch.int64)
    k_rows = torch.empty((n_rows, 3) if want_rows and fused else (0, 3), dtype=torch.float64)
    size = min(step, n_rows) * rowlen
    dbuf = wbuf = None
    via_kernel: bool | None = None  # decided at the first chunk; every chunk goes that way
    with one_thread():
        for i in range(0, n_rows, step):
            j = min(n_rows, i + step)
            w = read_w(i * rowlen, j * rowlen)
            t = read_t(i * rowlen, j * rowlen)
            native = fused is not None and fused.supports(w.dtype, t.dtype)
            if via_kernel is None:
                via_kernel = native
            elif native != via_kernel:  # the two engines' sums are kept apart: never mix
                raise RuntimeError(f"chunk dtypes changed within a tensor: {w.dtype}, {t.dtype}")
            if fused is not None and native:
                fused.diff_rows(
                    w, t, j - i, rowlen, rel_tol, k_acc, k_changed,
                    k_rows[i:j] if want_rows else None,
                    dw_full[i:j].view(-1) if dw_full is not None else None,
                )  # fmt: skip
                continue
            if dbuf is None:
                dbuf = _scratch("d", size)
            d = dbuf[: (j - i) * rowlen].view(j - i, rowlen)
            w = w.view(j - i, rowlen)
            if w.dtype != torch.float32:
                if wbuf is None:
                    wbuf = _scratch("w", size)
                w = wbuf[: (j - i) * rowlen].view(j - i, rowlen).copy_(w)
            torch.sub(t.view(j - i, rowlen), w, out=d)
            if not d.numel():
                continue
            up, lo = float(torch.amax(d)), float(torch.amin(d))
            hi = max(hi, up, -lo)
            # an unchanged chunk (dW all zero) adds only ||W||²; NaN compares unequal
            moved = not (up == 0.0 and lo == 0.0)
            if want_rows:
                parts = _row_parts(w, d if moved else None)
                for out, p in zip(rows, parts, strict=True):
                    out[i:j] = p
                w2 += float(parts[0].sum())
                dw2 += float(parts[1].sum())
                wd += float(parts[2].sum())
            else:
                wf, df = w.reshape(-1), d.view(-1)
                w2 += float(wf.dot(wf))
                if moved:
                    dw2 += float(df.dot(df))
                    wd += float(wf.dot(df))
            if moved:
                if rel_tol > 0.0:
                    changed += int((d.abs() > rel_tol * w.abs()).sum())
                else:
                    changed += int(torch.count_nonzero(d))
            if dw_full is not None:
                dw_full[i:j] = d
    if via_kernel:
        w2, dw2, wd, hi = k_acc.tolist()
        changed = int(k_changed)
        if want_rows:
            rows = [k_rows[:, c].contiguous() for c in range(3)]
    row_parts = (rows[0], rows[1], rows[2]) if want_rows else None
    dw_out = dw_full.reshape(shape) if dw_full is not None else None
    engine = "native" if via_kernel else "torch"
    return DenseStats(w2, dw2, wd, changed, hi, row_parts, dw_out, engine)


def _row_parts(
    w: torch.Tensor, d: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``||W_i||²``, ``||dW_i||²``, ``<W_i, dW_i>`` of ``[rows, d]`` float32 chunks, as
    float64 ``[rows]`` each (a row's sum is float32; rows are summed in float64 after).
    ``d`` None: dW is zero in this chunk."""
    import torch

    w2 = torch.linalg.vector_norm(w, dim=1).double().square()
    if d is None:
        zero = torch.zeros_like(w2)
        return w2, zero, zero
    return (
        w2,
        torch.linalg.vector_norm(d, dim=1).double().square(),
        torch.linalg.vecdot(w, d).double(),
    )
