"""The diff's accelerator engine (device_stats) gives the host engines' figures; run here on
the CPU device, since no GPU is in CI (the CUDA run is unmeasured)."""

from __future__ import annotations

import math

import pytest
import torch

from wbsafe.analyses.weights.dense import dense_stats, engine_summary, tensor_source
from wbsafe.analyses.weights.device_stats import device_stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rel_tol", [0.0, 1e-2])
def test_device_engine_matches_the_host_engines(dtype: torch.dtype, rel_tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 70, generator=g).to(dtype)
    t = w.clone()
    t[5:40] += (0.05 * torch.randn(35, 70, generator=g)).to(dtype)
    t[100, 3] = w[100, 3] + 2.0
    kw = dict(rel_tol=rel_tol, want_rows=True, keep_dw=True, chunk=1000)  # many chunks
    on = device_stats(tensor_source(w), tensor_source(t), (300, 70),
                      device=torch.device("cpu"), **kw)  # fmt: skip
    assert on.engine == "torch-cpu"
    for use_kernel in (False, True):
        host = dense_stats(tensor_source(w), tensor_source(t), (300, 70), use_kernel=use_kernel,
                           **kw)  # fmt: skip
        for a, b in ((on.w2, host.w2), (on.dw2, host.dw2), (on.wd, host.wd)):
            assert math.isclose(a, b, rel_tol=1e-5)
        assert on.changed == host.changed > 0
        assert on.max_abs == pytest.approx(host.max_abs, rel=1e-6)
        assert on.rows is not None and host.rows is not None
        for a_row, b_row in zip(on.rows, host.rows, strict=True):
            assert torch.allclose(a_row, b_row, rtol=1e-5, atol=1e-6)  # float32 sums on the host
        assert on.dw is not None and host.dw is not None
        assert torch.equal(on.dw, host.dw)


def test_engine_summary_names_the_device() -> None:
    assert engine_summary({"torch-cuda": 3}) == "torch-cuda for 3 tensors"
