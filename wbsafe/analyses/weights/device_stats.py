"""The dense chunk engine on an accelerator: the figures of :func:`~.dense.dense_stats`
with the reductions on ``device`` (a CUDA GPU where one is present).

Chunks are still read from the memory-mapped shards on the host, whole rows at a time;
each is copied to the device, reduced there, and the sums stay device tensors (float64)
until the tensor's last chunk, so there is one host read-back per tensor, not one per
chunk. dW for the spectrum is kept on the device too. On the CPU (``device`` cpu) this
path computes the same figures as the torch engine; that is how it is tested here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wbsafe.analyses.weights.dense import BLOCK, DenseStats, Source, row_step

if TYPE_CHECKING:
    import torch


def device_stats(
    read_w: Source, read_t: Source, shape: tuple[int, ...], *, rel_tol: float,
    want_rows: bool, keep_dw: bool, device: torch.device, chunk: int = BLOCK,
) -> DenseStats:  # fmt: skip
    """Like :func:`~.dense.dense_stats` (same arguments, same figures), reduced on ``device``.
    Per-row figures come back to the host; dW (``shape``, float32) stays on ``device``."""
    import torch

    rowlen, n_rows, step = row_step(shape, chunk)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # Σw², Σd², Σw·d
    changed = torch.zeros((), dtype=torch.int64, device=device)
    hi = torch.zeros((), dtype=torch.float32, device=device)
    rows = torch.empty((3, n_rows if want_rows else 0), dtype=torch.float64, device=device)
    dw_full = torch.empty((n_rows, rowlen), dtype=torch.float32, device=device) if keep_dw else None
    for i in range(0, n_rows, step):
        j = min(n_rows, i + step)
        # a source may reuse its buffer: copy (to the device) before the next read
        w = read_w(i * rowlen, j * rowlen).to(device, torch.float32, copy=True).view(j - i, -1)
        t = read_t(i * rowlen, j * rowlen).to(device, torch.float32, copy=True).view(j - i, -1)
        d = t - w
        if not d.numel():
            continue
        w64, d64 = w.double(), d.double()
        part = torch.stack([(w64 * w64).sum(1), (d64 * d64).sum(1), (w64 * d64).sum(1)])
        if want_rows:
            rows[:, i:j] = part
        sums += part.sum(1)
        hi = torch.maximum(hi, d.abs().amax())
        if rel_tol > 0.0:
            changed += (d.abs() > rel_tol * w.abs()).sum()
        else:
            changed += torch.count_nonzero(d)
        if dw_full is not None:
            dw_full[i:j] = d
    w2, dw2, wd = sums.tolist()
    row_parts = None
    if want_rows:
        host = rows.cpu()
        row_parts = (host[0].contiguous(), host[1].contiguous(), host[2].contiguous())
    dw_out = dw_full.reshape(shape) if dw_full is not None else None
    return DenseStats(w2, dw2, wd, int(changed), float(hi), row_parts, dw_out,
                      f"torch-{device.type}")  # fmt: skip
