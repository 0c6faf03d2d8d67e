"""The fused C diff kernel against a float64 reference and against the torch path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_weight_diff import FIELDS, make_state, perturb, write_ckpt

from wbsafe.analyses.weights import dense_stats, diff_checkpoints, diff_kernel, tensor_source


@pytest.fixture(scope="module")
def native() -> diff_kernel.Kernel:
    k = diff_kernel.kernel()
    if k is None:
        if os.environ.get("WBSAFE_REQUIRE_NATIVE"):
            pytest.fail("the fused diff kernel did not build and WBSAFE_REQUIRE_NATIVE is set")
        pytest.skip(
            "no fused diff kernel here (no C compiler, or WBSAFE_NATIVE=0); the torch path "
            "is what runs. CI sets WBSAFE_REQUIRE_NATIVE=1 so this cannot skip there"
        )
    return k


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache folder of this test's own, and ``kernel()`` forgotten before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert diff_kernel.cache_dir().is_relative_to(tmp_path)  # never touch the user's cache
    diff_kernel.kernel.cache_clear()
    yield tmp_path / "cache"
    diff_kernel.kernel.cache_clear()


def pair(dw: torch.dtype, dt: torch.dtype, shape: tuple[int, int], seed: int = 0):
    """Base and tuned of ``shape`` in dtypes ``dw``/``dt``: most entries nudged, the first
    third of the rows left equal, one entry +0.0 in base and -0.0 in tuned (equal values)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    t = w + 0.01 * torch.randn(shape, generator=g)
    t[: shape[0] // 3] = w[: shape[0] // 3]
    w[0, 0], t[0, 0] = 0.0, -0.0
    return w.to(dw), t.to(dt)


def reference(w: torch.Tensor, t: torch.Tensor, tol: float) -> dict:
    """The figures in float64 from the float32 up-cast (dW is a float32 difference)."""
    w32, t32 = w.float(), t.float()
    d32 = t32 - w32
    wd, dd = w32.double(), d32.double()
    moved = d32.abs() > tol * w32.abs() if tol > 0 else d32 != 0
    return dict(
        w2=float((wd * wd).sum()),
        dw2=float((dd * dd).sum()),
        wd=float((wd * dd).sum()),
        changed=int(moved.sum()),
        max_abs=float(d32.abs().max()),
        rows=((wd * wd).sum(1), (dd * dd).sum(1), (wd * dd).sum(1)),
        scale=((wd * wd).sum(1), (dd * dd).sum(1), (wd * dd).abs().sum(1)),  # Σ|terms|
        d=d32,
    )


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_PAIRS = [(a, b) for a in KERNEL_DTYPES for b in KERNEL_DTYPES]


@pytest.mark.parametrize(("dw", "dt"), DTYPE_PAIRS, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("tol", [0.0, 2.0**-7])
@pytest.mark.parametrize("use_kernel", [True, False], ids=["native", "torch"])
def test_engines_match_float64_reference(
    request: pytest.FixtureRequest, dw: torch.dtype, dt: torch.dtype, tol: float, use_kernel: bool
) -> None:
    """Both engines give the float64 figures: sums to float32 rounding, and max |dW|, the
    changed count (-0.0 against +0.0 is no change) and dW itself exactly. Rows of 5000
    entries cross the kernel's 4096-entry float32 blocks; chunks of 3 rows cross chunks.
    The torch cases run with or without a compiler."""
    if use_kernel:
        request.getfixturevalue("native")
    shape = (13, 5000)
    w, t = pair(dw, dt, shape)
    ref = reference(w, t, tol)
    st = dense_stats(
        tensor_source(w), tensor_source(t), shape, rel_tol=tol, want_rows=True,
        keep_dw=True, chunk=3 * shape[1], use_kernel=use_kernel,
    )  # fmt: skip
    assert st.w2 == pytest.approx(ref["w2"], rel=1e-5)
    assert st.dw2 == pytest.approx(ref["dw2"], rel=1e-5)
    assert st.wd == pytest.approx(ref["wd"], rel=1e-4, abs=1e-3)
    assert st.max_abs == ref["max_abs"]
    assert st.changed == ref["changed"]
    if tol == 0 and dw == dt:  # rows left equal and the signed zero are unchanged
        kept = shape[0] // 3
        same = int(torch.count_nonzero(t[kept:] == w[kept:]))
        assert st.changed == (shape[0] - kept) * shape[1] - same
    assert st.engine == ("native" if use_kernel else "torch")
    assert st.dw is not None and torch.equal(st.dw, ref["d"])
    assert st.rows is not None
    for got, want, scale in zip(st.rows, ref["rows"], ref["scale"], strict=True):
        # float32 sums: error bounded by a few float32 ulps of the sum of |terms|
        assert bool(((got - want).abs() <= 1e-5 * scale + 1e-12).all())


def test_kernel_sums_stay_near_float64_on_a_long_tensor(native: diff_kernel.Kernel) -> None:
    """4M entries with a large mean, one row: the kernel's sums (float32 blocks of 4096,
    float64 across) stay within 1e-6 of float64 (a single float32 accumulator over this row
    is off by 3e-4: measured with numpy's float32 add.accumulate)."""
    n = 1 << 22
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, generator=g) + 3.0
    t = w + 1e-3 * torch.randn(n, generator=g)
    ref = reference(w.view(1, n), t.view(1, n), 0.0)
    st = dense_stats(tensor_source(w), tensor_source(t), (n,), rel_tol=0.0, want_rows=False,
                     keep_dw=False)  # fmt: skip
    assert abs(st.w2 - ref["w2"]) / ref["w2"] < 1e-6
    assert abs(st.dw2 - ref["dw2"]) / ref["dw2"] < 1e-6


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("side", ["base", "tuned"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_entries_are_reported_per_tensor(
    native: diff_kernel.Kernel, tmp_path: Path, dtype: torch.dtype, side: str, bad: float
) -> None:
    """A NaN or an Inf on either side, in any kernel dtype, makes the kernel's sums
    non-finite (max |dW| alone would skip a NaN), so the diff counts the tensor's
    non-finite entries and lists it, exactly as on the torch path."""
    sd = {k: v.to(dtype) for k, v in make_state().items()}
    tuned = {k: v.clone() for k, v in sd.items()}
    name = "model.layers.1.self_attn.q_proj.weight"
    target = sd if side == "base" else tuned
    target[name][3, 5] = bad
    tuned["model.layers.0.mlp.up_proj.weight"] += 0.01
    res = diff_checkpoints(write_ckpt(tmp_path / "b", sd), write_ckpt(tmp_path / "t", tuned))  # fmt: skip
    assert res.nonfinite == [name]
    row = res.row(name)
    assert (row.nonfinite_base, row.nonfinite_tuned) == ((1, 0) if side == "base" else (0, 1))
    assert res.dense_engine.startswith("native (")


def test_unaligned_tensors_read_like_aligned(native: diff_kernel.Kernel) -> None:
    """A tensor may sit at any byte offset of its file's map (the reader then gives a
    buffer view at that address): the kernel's loads do not assume alignment."""
    w, t = pair(torch.bfloat16, torch.float32, (5, 33))
    ref = reference(w, t, 0.0)
    for offset in (1, 2, 3):
        views = []
        for x in (w, t):
            raw = bytearray(offset) + bytearray(x.view(torch.uint8).reshape(-1).numpy().tobytes())
            views.append(torch.frombuffer(memoryview(raw)[offset:], dtype=x.dtype))
        st = dense_stats(tensor_source(views[0]), tensor_source(views[1]), (5, 33),
                         rel_tol=0.0, want_rows=False, keep_dw=True)  # fmt: skip
        assert st.engine == "native"
        assert st.changed == ref["changed"] and st.max_abs == ref["max_abs"]
        assert st.dw is not None and torch.equal(st.dw, ref["d"])


def test_unsupported_dtype_takes_the_torch_path() -> None:
    """float64 is not a kernel dtype: dense_stats computes it with torch, same figures,
    and says so."""
    w, t = pair(torch.float64, torch.float64, (6, 40))
    ref = reference(w, t, 0.0)
    st = dense_stats(tensor_source(w), tensor_source(t), (6, 40), rel_tol=0.0,
                     want_rows=False, keep_dw=False)  # fmt: skip
    assert st.engine == "torch"
    assert st.changed == ref["changed"] and st.dw2 == pytest.approx(ref["dw2"], rel=1e-5)


def test_checkpoint_diff_same_under_both_engines(
    native: diff_kernel.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole diffs (fp32 and bf16, with embedding rows and spectra) agree between engines,
    and each result names the engine that made it."""
    from wbsafe.analyses.weights import dense as weight_diff

    sd = make_state()
    tuned = perturb(sd, 1e-3)
    tuned["model.embed_tokens.weight"][[7, 91]] *= 1.5
    bf = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    bft = {k: v.to(torch.bfloat16) for k, v in tuned.items()}
    pairs = [
        (write_ckpt(tmp_path / "b", sd), write_ckpt(tmp_path / "t", tuned)),
        (write_ckpt(tmp_path / "bb", bf), write_ckpt(tmp_path / "bt", bft, shards=2)),
    ]
    for b, t in pairs:
        fast = diff_checkpoints(b, t)
        assert fast.dense_engine == native.label
        with monkeypatch.context() as m:
            m.setattr(weight_diff, "kernel", lambda: None)
            slow = diff_checkpoints(b, t)
        assert slow.dense_engine == "torch"
        for x, y in zip(fast.rows, slow.rows, strict=True):
            for f in FIELDS:
                fx, fy = getattr(x, f), getattr(y, f)
                assert fy is None or fx == pytest.approx(fy, rel=1e-5, abs=1e-9), (x.name, f)
        assert fast.embedding is not None and slow.embedding is not None
        top = [r.token_id for r in fast.embedding.top[:2]]
        assert sorted(top) == [7, 91] and top == [r.token_id for r in slow.embedding.top[:2]]


def test_no_compiler_falls_back_to_torch(
    private_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no compiler (and nothing built), the kernel is None, the reason is logged, and
    the diff still runs and says it used torch; WBSAFE_NATIVE=0 turns the kernel off."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level("INFO", logger="wbsafe.analyses.weights.diff_kernel"):
        assert diff_kernel.kernel() is None
    assert "no C compiler" in caplog.text
    sd = make_state()
    res = diff_checkpoints(write_ckpt(tmp_path / "b", sd),
                           write_ckpt(tmp_path / "t", perturb(sd)))  # fmt: skip
    assert res.dense_engine == "torch" and res.rows[0].fro_diff
    monkeypatch.delenv("CC")
    monkeypatch.setenv("WBSAFE_NATIVE", "0")
    diff_kernel.kernel.cache_clear()
    assert diff_kernel.kernel() is None


def test_build_is_cached_and_keyed_by_source(
    native: diff_kernel.Kernel, private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second build finds the first's library; a changed source gets its own."""
    first = diff_kernel.build()
    assert diff_kernel.build() == first and first.with_suffix(".txt").is_file()
    src = tmp_path / "diff_kernel.c"
    src.write_text(diff_kernel.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(diff_kernel, "SOURCE", src)
    assert diff_kernel.build() != first


def test_kernel_refuses_buffers_it_would_overrun(native: diff_kernel.Kernel) -> None:
    """The C side writes through raw pointers: a short output or a wrong dtype is refused
    before the call."""
    w, t = pair(torch.float32, torch.float32, (4, 8))
    acc, ch = torch.zeros(4, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="32 entries"):
        native.diff_rows(w, t, 4, 8, 0.0, acc, ch, None, torch.empty(31))
    with pytest.raises(ValueError, match="float64 tensor of 12"):
        native.diff_rows(w, t, 4, 8, 0.0, acc, ch, torch.empty(4, 3), None)
    with pytest.raises(ValueError, match="40 entries"):
        native.diff_rows(w, t, 5, 8, 0.0, acc, ch, None, None)
    with pytest.raises(ValueError, match="overlaps"):
        native.diff_rows(w, t, 4, 8, 0.0, acc, ch, None, w.view(-1))
    with pytest.raises(ValueError, match="CPU"):
        native.diff_rows(w.to("meta"), t, 4, 8, 0.0, acc, ch, None, None)
    native.diff_rows(w, t, 4, 8, 0.0, acc, ch, torch.empty(4, 3, dtype=torch.float64), None)
    assert int(ch) == int((t != w).sum())


def test_a_failed_flag_set_is_noted_and_not_retried(
    native: diff_kernel.Kernel,
    private_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A compiler that rejects the first flag set (as where target clones are not
    supported) gets the portable build; the failure is noted, and the next process finds
    the portable library without compiling anything."""
    import shutil

    real = shutil.which("cc") or shutil.which("gcc")
    assert real is not None
    fake = tmp_path / "picky-cc"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -DWB_CLONES ] && { echo "no clones here" >&2; exit 1; }; done\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setattr(diff_kernel, "_flag_sets", lambda: [["-DWB_CLONES", "-O2", "-fPIC",
                                                             "-shared"], ["-O2", "-fPIC", "-shared"]])  # fmt: skip
    with caplog.at_level("INFO", logger="wbsafe.analyses.weights.diff_kernel"):
        lib = diff_kernel.build()
        assert caplog.text.count("building") == 2
        failed = list(lib.parent.glob("*.failed"))
        assert len(failed) == 1 and "no clones here" in failed[0].read_text()
        caplog.clear()
        assert diff_kernel.build() == lib
        assert "building" not in caplog.text


def test_code_is_not_loaded_from_a_folder_others_can_write(
    native: diff_kernel.Kernel, private_cache: Path
) -> None:
    """A cache folder writable by group or others could hold someone else's library: the
    build refuses it (and the diff falls back to torch)."""
    lib = diff_kernel.build()
    lib.parent.chmod(0o777)
    with pytest.raises(RuntimeError, match="writable by others"):
        diff_kernel.build()
    diff_kernel.kernel.cache_clear()
    assert diff_kernel.kernel() is None


def test_a_library_that_does_not_load_is_rebuilt(
    native: diff_kernel.Kernel, private_cache: Path
) -> None:
    """A cached library that fails to load (truncated, corrupted) is rebuilt once."""
    lib = diff_kernel.build()
    lib.write_bytes(b"not a shared library")
    diff_kernel.kernel.cache_clear()
    k = diff_kernel.kernel()
    assert k is not None and k.path == lib and lib.read_bytes()[:4] == b"\x7fELF"


def test_an_unusable_cache_folder_says_how_to_fix_it(
    native: diff_kernel.Kernel,
    private_cache: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where the cache folder cannot be made, the diff falls back to torch and the warning
    names the folder and the setting that moves it."""
    private_cache.parent.mkdir(parents=True, exist_ok=True)
    private_cache.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="wbsafe.analyses.weights.diff_kernel"):
        assert diff_kernel.kernel() is None
    assert "XDG_CACHE_HOME" in caplog.text and str(private_cache) in caplog.text
