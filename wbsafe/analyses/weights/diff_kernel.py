"""The fused weight-diff kernel: ``diff_kernel.c``, built on first use and called by ctypes.

The torch path in :func:`wbsafe.analyses.weights.dense.dense_stats` makes six memory-bound
passes over each chunk (subtract, three dot products, count, max); this kernel makes one,
which is what brings the diff near the cost of only reading the files. It is optional: with
no C compiler, a failed build, an unsupported dtype, or ``WBSAFE_NATIVE=0`` the torch path
computes the same figures (tests hold the two to each other).

The shared library is compiled once per source, compiler, flag set and CPU architecture into
``$XDG_CACHE_HOME/wbsafe/native`` (``~/.cache`` by default; a folder only this user may
write, or nothing is loaded from it) and reused; a flag set that fails to build is noted
there and not retried. ``scripts/setup.sh`` builds it ahead so no run pays for it. Only this
package's own C file is ever compiled. ctypes releases the GIL during the call, so worker
threads run the kernel in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
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

    @property
    def label(self) -> str:
        """How results name this engine: ``native (<compiler version>)``."""
        return f"native ({self.compiler})"

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
            if (
                x.numel() != size
                or x.dtype != dtype
                or not x.is_contiguous()
                or x.device.type != "cpu"
            ):
                raise ValueError(
                    f"diff kernel: expected a contiguous CPU {dtype} tensor of {size} "
                    f"entries, got {x.dtype} {tuple(x.shape)} on {x.device}"
                )
        outputs = [x for x in (acc, changed, rows_out, d_out) if x is not None]
        for i, x in enumerate(outputs):  # the vector loop assumes outputs alias nothing
            for y in [w, t, *outputs[i + 1 :]]:
                if _overlap(x, y):
                    raise ValueError("diff kernel: an output buffer overlaps another buffer")
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


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the bytes of two contiguous tensors overlap."""
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "wbsafe" / "native"


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` when set (and only it; it may carry arguments, e.g.
    ``ccache gcc``), else the first of cc, gcc, clang on the PATH."""
    if os.environ.get("CC"):
        argv = shlex.split(os.environ["CC"])
        found = shutil.which(argv[0]) if argv else None
        return [found, *argv[1:]] if found else None
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first: x86-64 clones, then a portable build. No
    -ffast-math (NaN must reach the sums) and no FMA contraction (clones built for
    different CPUs give the same bits)."""
    base = ["-O3", "-fopenmp-simd", "-ffp-contract=off", "-fPIC", "-shared"]
    if platform.machine() in ("x86_64", "AMD64"):
        return [[*base, "-DWB_CLONES"], base]
    return [base]


def _version(cc: list[str]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return " ".join(cc)
    text = out.stdout.decode("utf-8", "replace")
    return (text.splitlines() or [" ".join(cc)])[0].strip()


def _compiler_id(cc: list[str]) -> bytes:
    """The compiler's identity for the cache key, without running it: the resolved binary's
    path, size and modification time (an upgraded compiler gets a new build), and its
    arguments."""
    real = os.path.realpath(cc[0])
    st = os.stat(real)
    return f"{real}:{st.st_size}:{st.st_mtime_ns}:{' '.join(cc[1:])}".encode()


def _check_private(path: Path) -> None:
    """Refuse to load code from a path another user could have written: it must belong to
    this user and not be writable by group or others (POSIX)."""
    if os.name != "posix":
        return
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise RuntimeError(
            f"{path}: not owned by this user, or writable by others; not loading code from it"
        )


def _candidates(cc: list[str]) -> list[tuple[list[str], Path]]:
    """(flags, library path) per flag set, best first; the name keys source, compiler,
    flags and CPU architecture."""
    source = SOURCE.read_bytes()
    out = []
    for flags in _flag_sets():
        parts = [source, _compiler_id(cc), " ".join(flags).encode(), platform.machine().encode()]
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
        out.append((flags, cache_dir() / f"diff_kernel-{key}.so"))
    return out


def build(*, force: bool = False) -> Path:
    """Compile ``diff_kernel.c`` into the cache unless a build is already there; its path.

    The best flag set that builds wins; one that failed leaves a ``.failed`` note (the
    compiler's message) so later processes do not try it again (``force`` does). The
    compiler's version line is kept beside the library (``.txt``) for reports. Raises
    ``RuntimeError`` with the compiler's messages when nothing builds."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    candidates = _candidates(cc)
    if not force:
        for _, lib in candidates:
            if lib.is_file():
                _check_private(lib.parent)
                _check_private(lib)
                return lib
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise RuntimeError(
            f"cannot create the kernel cache {folder} ({exc}); set XDG_CACHE_HOME to a "
            "folder you own"
        ) from exc
    _check_private(folder)
    errors: list[str] = []
    for flags, lib in candidates:
        failed = lib.with_suffix(".failed")
        if failed.is_file() and not force:
            errors.append(f"{' '.join(flags)}: failed before, see {failed}")
            continue
        log.info("building the fused weight-diff kernel into %s", lib)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            res = subprocess.run(
                [*cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, timeout=120
            )
            if res.returncode == 0:
                lib.with_suffix(".txt").write_text(_version(cc) + "\n")
                os.replace(tmp, lib)  # atomic: concurrent builders each leave a whole file
                return lib
            message = res.stderr.decode("utf-8", "replace").strip()[-2000:]
        except (OSError, subprocess.SubprocessError) as exc:
            message = str(exc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        failed.write_text(f"{' '.join([*cc, *flags])}\n{message}\n")
        errors.append(f"{' '.join(flags)}: {message[-400:]}")
    raise RuntimeError(f"could not build {SOURCE.name} with {cc[0]}: " + " | ".join(errors))


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
    """The fused kernel, built if need be; None where it cannot be had (the reason logged
    as a warning). A library that is in the cache but does not load is rebuilt once."""
    if os.environ.get("WBSAFE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        path = build()
        try:
            return _load(path)
        except OSError:
            return _load(build(force=True))
    except Exception as exc:  # optional by design: any failure means the torch path
        log.warning(
            "fused weight-diff kernel unavailable, using the torch path (same figures, slower): %s",
            exc,
        )
        return None


def main() -> int:
    """``python -m wbsafe.analyses.weights.diff_kernel``: build (or find) the kernel and say which
    engine the weight diff will use; exit 1 when it falls back to torch."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    k = kernel()
    if k is None:
        print("weight-diff engine: torch (fused kernel unavailable; see the message above)")
        return 1
    print(f"weight-diff engine: {k.label}, {k.path} (reads {', '.join(sorted(k.dtypes))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
