"""The fused weight-diff kernel: ``diff_kernel.c``, built on first use and called by ctypes.

The torch path in :func:`wbsafe.analyses.weight_diff.dense_stats` makes six memory-bound
passes over each chunk (subtract, three dot products, count, max); this kernel makes one,
which is what brings the diff near the cost of only reading the files. It is optional: with
no C compiler, a failed build, an unsupported dtype, or ``WBSAFE_NATIVE=0`` the torch path
computes the same figures (tests hold the two to each other).

The shared library is compiled once per source, compiler and machine into
``$XDG_CACHE_HOME/wbsafe/native`` (``~/.cache`` by default) and reused; ``scripts/setup.sh``
builds it ahead so no run pays for it. Only this package's own C file is ever compiled.
ctypes releases the GIL during the call, so worker threads run the kernel in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("diff_kernel.c")
_ABI = 1
_DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}


@dataclass(frozen=True)
class Kernel:
    """A loaded build of the kernel."""

    lib: ctypes.CDLL
    path: Path
    compiler: str
    dtypes: frozenset[str]  # storage dtypes it reads ("float32", "bfloat16", "float16")

    def supports(self, a: torch.dtype, b: torch.dtype) -> bool:
        return _name(a) in self.dtypes and _name(b) in self.dtypes

    def diff_rows(
        self,
        w: torch.Tensor,
        t: torch.Tensor,
        n_rows: int,
        rowlen: int,
        tol: float,
        acc: torch.Tensor,
        changed: torch.Tensor,
        rows_out: torch.Tensor | None,
        d_out: torch.Tensor | None,
    ) -> None:
        """Add rows ``[n_rows, rowlen]`` of base ``w`` and tuned ``t`` (contiguous, flat,
        stored dtypes) into ``acc`` (float64 ``[4]``: Σw², Σd², Σw·d, max|d|) and ``changed``
        (int64 ``[1]``); write each row's three sums into ``rows_out`` (float64
        ``[n_rows, 3]``) and ``d = t - w`` into ``d_out`` (float32 ``[n_rows * rowlen]``)
        when given. All tensors must be contiguous and stay alive for the call."""
        import torch

        # every size and dtype the C side relies on is checked here: it writes through raw
        # pointers, and the inputs come from files nobody vouched for
        n = n_rows * rowlen
        want = [
            (w, n, w.dtype),
            (t, n, t.dtype),
            (acc, 4, torch.float64),
            (changed, 1, torch.int64),
            (rows_out, 3 * n_rows, torch.float64),
            (d_out, n, torch.float32),
        ]
        for x, size, dtype in want:
            if x is None:
                continue
            if x.numel() != size or x.dtype != dtype or not x.is_contiguous():
                raise ValueError(
                    f"diff kernel: expected a contiguous {dtype} tensor of {size} entries, "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
        rc = self.lib.wb_diff_rows(
            w.data_ptr(),
            _DTYPE_CODES[_name(w.dtype)],
            t.data_ptr(),
            _DTYPE_CODES[_name(t.dtype)],
            n_rows,
            rowlen,
            tol,
            acc.data_ptr(),
            changed.data_ptr(),
            rows_out.data_ptr() if rows_out is not None else None,
            d_out.data_ptr() if d_out is not None else None,
        )
        if rc != 0:
            raise ValueError(f"diff kernel does not read {w.dtype} against {t.dtype}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "wbsafe" / "native"


def _compiler() -> str | None:
    """``$CC`` when set (and only it), else the first of cc, gcc, clang on the PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first: x86-64 clones (GCC), then a portable build."""
    base = ["-O3", "-fopenmp-simd", "-fPIC", "-shared", "-fno-strict-aliasing"]
    if platform.machine() in ("x86_64", "AMD64"):
        return [[*base, "-DWB_CLONES"], base]
    return [base]


def _version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return cc
    return (out.stdout.splitlines() or [cc])[0].strip()


def _compiler_id(cc: str) -> bytes:
    """The compiler binary's identity for the cache key, without running it: its resolved
    path, size and modification time (an upgraded compiler gets a new build)."""
    real = os.path.realpath(cc)
    st = os.stat(real)
    return f"{real}:{st.st_size}:{st.st_mtime_ns}".encode()


def build(*, force: bool = False) -> Path:
    """Compile ``diff_kernel.c`` into the cache (unless already there); its path. The
    compiler's version line is kept beside it (``.txt``) for reports.

    Raises ``RuntimeError`` with the compiler's message when no flag set builds."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    source = SOURCE.read_bytes()
    errors: list[str] = []
    for flags in _flag_sets():
        parts = [source, _compiler_id(cc), " ".join(flags).encode(), platform.machine().encode()]
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
        out = cache_dir() / f"diff_kernel-{key}.so"
        if out.is_file() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("building the fused weight-diff kernel into %s (once per machine)", out)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            res = subprocess.run(
                [cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120
            )
            if res.returncode == 0:
                out.with_suffix(".txt").write_text(_version(cc) + "\n")
                os.replace(tmp, out)  # atomic: concurrent builders each leave a whole file
                return out
            errors.append(f"{' '.join(flags)}: {res.stderr.strip()[-400:]}")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{' '.join(flags)}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"could not build {SOURCE.name} with {cc}: " + " | ".join(errors))


def _load(path: Path) -> Kernel:
    note = path.with_suffix(".txt")
    compiler = note.read_text().strip() if note.is_file() else "unknown compiler"
    lib = ctypes.CDLL(str(path))
    lib.wb_abi.restype = ctypes.c_int
    if lib.wb_abi() != _ABI:
        raise RuntimeError(f"{path}: kernel ABI {lib.wb_abi()}, expected {_ABI}")
    lib.wb_dtypes.restype = ctypes.c_int
    mask = lib.wb_dtypes()
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.wb_diff_rows.argtypes = [p, i32, p, i32, i64, i64, ctypes.c_float, p, p, p, p]
    lib.wb_diff_rows.restype = ctypes.c_int
    names = frozenset(n for n, c in _DTYPE_CODES.items() if mask >> c & 1)
    return Kernel(lib, path, compiler, names)


@functools.cache
def kernel() -> Kernel | None:
    """The fused kernel, built if need be; None where it cannot be had (reason logged)."""
    if os.environ.get("WBSAFE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        return _load(build())
    except (RuntimeError, OSError, AttributeError) as exc:
        log.info("fused diff kernel unavailable, using the torch path: %s", exc)
        return None


def engine_name() -> str:
    """Which engine computes dense figures in this process: ``native (<compiler>)`` or
    ``torch``."""
    k = kernel()
    return f"native ({k.compiler})" if k is not None else "torch"


def main() -> int:
    """``python -m wbsafe.analyses.diff_kernel``: build (or find) the kernel and say which
    engine the weight diff will use; exit 1 when it falls back to torch."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    k = kernel()
    if k is None:
        print("weight-diff engine: torch (fused kernel unavailable; see the message above)")
        return 1
    print(
        f"weight-diff engine: native, {k.path} ({k.compiler}; reads {', '.join(sorted(k.dtypes))})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
