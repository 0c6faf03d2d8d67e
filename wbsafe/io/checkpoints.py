"""Safe, streaming access to weight files: safetensors only, headers validated before use.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``{dtype, shape, data_offsets}``, then the raw bytes. Reading the header
alone tells us every tensor's shape and whether the file is complete, without loading a
single weight, and without ever unpickling anything.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import mmap
import os
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.errors import CheckpointFormatError, UnsafeCheckpointError
from wbsafe.io.containment import check_inside_all

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024

CONVERT_HINT = (
    "wbsafe never unpickles checkpoints: loading a pickle can run arbitrary code. Convert it "
    "in an isolated, trusted environment, e.g. `model = AutoModelForCausalLM.from_pretrained(dir); "
    "model.save_pretrained(out, safe_serialization=True)`, then scan the safetensors copy."
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int = -1
    """Byte offset of the tensor's data from the start of ``file`` (-1: not known)."""


_MAX_TENSORS = 1_000_000
_MAX_DIM = 1 << 48
_MAX_NAME = 4096


def _bounded_int(text: str) -> int:
    """json's int hook: no 5,000-digit numbers (a header needs at most 20 digits)."""
    if len(text) > 20:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not a number a header may hold")


def _parse_header(data: bytes, path: Path) -> dict[str, Any]:
    """The header JSON as a mapping; every malformed form is a CheckpointFormatError."""
    try:
        header = json.loads(data, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointFormatError(f"corrupt safetensors header (not JSON: {exc})", path) from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError("corrupt safetensors header (not a mapping)", path)
    if len(header) > _MAX_TENSORS:
        raise CheckpointFormatError(f"safetensors header lists {len(header)} entries", path)
    return header


def _entry(name: str, meta: Any, path: Path) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, start, stop) of one header entry, each checked for type and range."""
    bad = f"corrupt header entry for tensor {name[:80]!r}"
    if len(name) > _MAX_NAME:
        raise CheckpointFormatError(f"{bad}: a name of {len(name)} characters", path)
    if not isinstance(meta, dict):
        raise CheckpointFormatError(f"{bad}: not a mapping", path)
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise CheckpointFormatError(
            f"{bad}: dtype {str(dtype)[:40]!r} is not a safetensors dtype", path
        )
    if not isinstance(shape, list) or len(shape) > 16:
        raise CheckpointFormatError(f"{bad}: shape is not a list of at most 16 sizes", path)
    if not all(type(x) is int and 0 <= x <= _MAX_DIM for x in shape):
        raise CheckpointFormatError(f"{bad}: shape {str(shape)[:80]} is not sizes >= 0", path)
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int for x in offsets)
    ):
        raise CheckpointFormatError(f"{bad}: data_offsets is not two integers", path)
    start, stop = offsets
    if not 0 <= start <= stop:
        raise CheckpointFormatError(f"{bad}: data_offsets {offsets} are not ordered", path)
    return dtype, tuple(shape), start, stop


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header: ``{name: TensorInfo}``.

    Raises CheckpointFormatError naming the file when it is truncated, its header is not
    JSON (or holds huge, non-finite or deeply nested values), an entry's dtype, shape or
    offsets are malformed, a tensor's byte range does not match its dtype and shape, or two
    tensors' byte ranges overlap. Bounded in time and memory: the header length, the entry
    count, name lengths and integer sizes all have limits.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError("weight file not found", path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointFormatError(f"truncated safetensors file ({size} bytes)", path)
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointFormatError(
                f"truncated or corrupt safetensors file: header claims {n} bytes, file has {size}",
                path,
            )
        header = _parse_header(fh.read(n), path)
    out: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, meta in header.items():
        if name == "__metadata__":
            if meta is not None and not isinstance(meta, dict):
                raise CheckpointFormatError("corrupt safetensors header (__metadata__)", path)
            continue
        dtype, shape, start, stop = _entry(name, meta, path)
        numel = math.prod(shape)
        if stop - start != numel * _DTYPE_BYTES[dtype]:
            raise CheckpointFormatError(
                f"tensor {name!r}: {stop - start} bytes stored for {dtype}{list(shape)}", path
            )
        ranges.append((start, stop, name))
        out[name] = TensorInfo(name, dtype, shape, path, 8 + n + start)
    ranges.sort()
    for (_, prev_stop, prev), (start, stop, name) in itertools.pairwise(ranges):
        if start < prev_stop and stop > start:
            raise CheckpointFormatError(
                f"tensors {prev!r} and {name!r} share bytes (overlapping data_offsets)", path
            )
    end = max((stop for _, stop, _ in ranges), default=0)
    if 8 + n + end > size:
        raise CheckpointFormatError(
            f"truncated safetensors file: tensors need {8 + n + end} bytes, file has {size}", path
        )
    return out


def refuse_pickles(directory: Path) -> None:
    """Raise UnsafeCheckpointError when ``directory`` holds only pickle-format weights."""
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeCheckpointError(
            f"holds pickle-format weights ({', '.join(pickles)}) and no safetensors. "
            + CONVERT_HINT,
            directory,
        )


def weight_files(directory: str | Path, stem: str = "model") -> list[Path]:
    """The safetensors files of a checkpoint directory, shards in index order.

    ``stem`` is ``model`` for a full checkpoint and ``adapter_model`` for a PEFT adapter.
    A sharded checkpoint is read through its ``{stem}.safetensors.index.json``; a shard it
    names that is missing raises CheckpointFormatError naming the shard.
    """
    directory = Path(directory)
    if directory.is_file():
        if directory.suffix == ".safetensors":
            return [directory]
        if directory.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError("pickle-format checkpoint. " + CONVERT_HINT, directory)
        raise CheckpointFormatError("not a safetensors file or a model directory", directory)
    if not directory.is_dir():
        raise CheckpointFormatError("no such file or directory", directory)
    index = directory / f"{stem}.safetensors.index.json"
    if index.is_file():
        check_inside_all([index], directory, "shard index")
        shards = _shard_names(index)
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointFormatError(
                f"missing shard(s) named by {index.name}: {', '.join(missing[:5])}", directory
            )
        return check_inside_all([directory / s for s in shards], directory, "weight file")
    single = directory / f"{stem}.safetensors"
    if single.is_file() or single.is_symlink():
        return check_inside_all([single], directory, "weight file")
    others = sorted(directory.glob("*.safetensors"))
    if others and stem == "model":
        return check_inside_all(others, directory, "weight file")
    refuse_pickles(directory)
    raise CheckpointFormatError(f"no {stem}.safetensors (or shard index) found", directory)


def _shard_names(index: Path) -> list[str]:
    """The shard file names a ``*.safetensors.index.json`` maps tensors to, in order."""
    from wbsafe.io.serialize import read_json_object

    data = read_json_object(index, CheckpointFormatError)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFormatError("corrupt shard index (no weight_map)", index)
    shards = list(dict.fromkeys(weight_map.values()))
    if not all(isinstance(s, str) and s and len(s) <= _MAX_NAME for s in shards):
        raise CheckpointFormatError("corrupt shard index (a shard name is not a file name)", index)
    return shards


def read_headers(files: list[Path]) -> dict[str, TensorInfo]:
    """Merged headers of several shards; a tensor stored twice is an error."""
    merged: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_header(f).items():
            if name in merged:
                raise CheckpointFormatError(f"tensor {name!r} appears in two shards", f)
            merged[name] = info
    return merged


def load_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read one tensor from its file (memory-mapped), optionally up-cast, e.g. to float32."""
    from safetensors import safe_open

    with safe_open(str(info.file), framework="pt") as fh:
        t = fh.get_tensor(info.name)
    return t.to(dtype) if dtype is not None else t


def iter_tensors(
    files: list[Path], dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time across shards: memory stays at one tensor."""
    from safetensors import safe_open

    for f in files:
        read_header(f)
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                t = fh.get_tensor(name)
                yield name, (t.to(dtype) if dtype is not None else t)


_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32",
    "U64": "uint64",
}  # fmt: skip
_CAN_DROP = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")


@functools.cache
def _use_up_readonly_warning() -> None:
    """Torch warns once per process that a tensor over a read-only buffer (our maps) is
    not marked read-only; give it that once here, silenced, on the calling thread."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.frombuffer(b"\0", dtype=torch.uint8)


class FileMaps:
    """Read-only memory maps of weight files, one per file, shared by the readers of a run.

    Mapping (and unmapping) takes the process's address-space lock for writing and, once
    pages were touched, flushes other cores' TLBs; doing it per tensor serialised parallel
    readers here (two threads were no faster than one). A run maps each file once and
    closes all maps at the end. The file's size is checked when it is mapped, so a file
    truncated after its header was read raises CheckpointFormatError instead of faulting.
    Thread-safe; use as a context manager.
    """

    def __init__(self) -> None:
        self._maps: dict[Path, tuple[mmap.mmap, torch.Tensor]] = {}
        self._lock = threading.Lock()
        _use_up_readonly_warning()

    def get(self, path: Path, need: int, what: str = "") -> tuple[mmap.mmap, torch.Tensor]:
        """The map of ``path`` and a uint8 tensor over all of it (slicing it is far cheaper
        than a new buffer view per read); ``path`` must hold ``need`` bytes (for ``what``)."""
        import torch

        with self._lock:
            got = self._maps.get(path)
            if got is None:
                with open(path, "rb") as fh:
                    if os.fstat(fh.fileno()).st_size == 0:
                        raise CheckpointFormatError("empty weight file", path)
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                got = self._maps[path] = (m, torch.frombuffer(m, dtype=torch.uint8))
        if need > len(got[0]):
            raise CheckpointFormatError(
                f"truncated safetensors file: {what or 'data'} needs bytes up to {need}, "
                f"file has {len(got[0])}",
                path,
            )
        return got

    def close(self) -> None:
        with self._lock:
            items, self._maps = list(self._maps.values()), {}
        while items:
            m = items.pop()[0]  # the whole-file tensor goes with the popped pair
            # a view still alive keeps its map open until the view is freed
            with contextlib.suppress(BufferError):
                m.close()

    def __enter__(self) -> FileMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorReader:
    """Reads element ranges of one stored tensor through a read-only memory map of its file.

    ``read(..., scratch=True)`` returns a zero-copy view of the mapped bytes; the pages of
    the previous scratch range are dropped from this process (``madvise(MADV_DONTNEED)``)
    when the next one is read and when the reader closes. A mapped file would otherwise keep
    every page it touched counted in the process's RSS while the map lives; dropping each
    chunk once it is used keeps RSS at about one chunk per reader, and the pages stay in the
    kernel's page cache, so nothing is read twice. A scratch view is read-only (the map
    is): copy it before changing it. Without ``scratch``, the range is copied into a fresh
    tensor that outlives the reader. ``maps`` shares one map per file across readers (see
    :class:`FileMaps`); without it the reader maps the file itself. Use as a context manager.
    """

    def __init__(self, info: TensorInfo, maps: FileMaps | None = None) -> None:
        import torch

        if info.dtype not in _TORCH_DTYPES or info.dtype not in _DTYPE_BYTES:
            raise CheckpointFormatError(f"tensor {info.name!r}: unsupported dtype {info.dtype}")
        if sys.byteorder != "little":
            raise CheckpointFormatError("safetensors data is little-endian; this host is not")
        offset = info.offset if info.offset >= 0 else read_header(info.file)[info.name].offset
        self.info = info
        self.numel = math.prod(info.shape)
        self.itemsize = _DTYPE_BYTES[info.dtype]
        self.stored = getattr(torch, _TORCH_DTYPES[info.dtype])
        self._offset = offset
        self._done: tuple[int, int] | None = None  # byte range of the last scratch view
        self._own: FileMaps | None = None
        if maps is None:
            maps = self._own = FileMaps()
        need = offset + self.numel * self.itemsize
        got = maps.get(info.file, need, f"tensor {info.name!r}")
        self._map: mmap.mmap | None = got[0]
        self._whole: torch.Tensor | None = got[1]

    def _bytes(self, start: int, stop: int) -> torch.Tensor:
        """A zero-copy uint8 view of elements ``[start, stop)``'s bytes."""
        import torch

        a = self._offset + start * self.itemsize
        b = self._offset + stop * self.itemsize
        if a == b or self._map is None or self._whole is None:
            return torch.empty(0, dtype=torch.uint8)
        if a % self.itemsize == 0:
            return self._whole[a:b]
        # a tensor stored at an offset its dtype does not divide: a view of its own
        return torch.frombuffer(memoryview(self._map)[a:b], dtype=torch.uint8)

    def _drop(self, a: int, b: int) -> None:
        """Drop bytes ``[a, b)``'s pages from this process (they stay in the page cache)."""
        if self._map is None or not _CAN_DROP:
            return
        a -= a % mmap.PAGESIZE
        if b > a:
            self._map.madvise(mmap.MADV_DONTNEED, a, b - a)

    def read(
        self,
        start: int = 0,
        stop: int | None = None,
        dtype: torch.dtype | None = None,
        *,
        scratch: bool = False,
    ) -> torch.Tensor:
        """Elements ``[start, stop)`` of the flattened tensor: ``[stop - start]``, stored dtype
        or converted to ``dtype`` (e.g. bf16 -> float32). With ``scratch`` (and no ``dtype``)
        the result is a read-only view of the map, used before the next scratch read."""
        stop = self.numel if stop is None else stop
        if not 0 <= start <= stop <= self.numel:
            raise ValueError(f"range [{start}, {stop}) outside tensor of {self.numel} elements")
        if self._map is None and stop > start:
            raise ValueError(f"reader of tensor {self.info.name!r} is closed")
        raw = self._bytes(start, stop).view(self.stored)
        span = (self._offset + start * self.itemsize, self._offset + stop * self.itemsize)
        if scratch:
            if self._done is not None:
                self._drop(*self._done)
            self._done = span
            return raw.to(dtype) if dtype is not None else raw
        out = raw.to(dtype) if dtype is not None and dtype != self.stored else raw.clone()
        self._drop(*span)
        return out

    def close(self) -> None:
        if self._done is not None:
            self._drop(*self._done)
            self._done = None
        self._map = self._whole = None
        if self._own is not None:
            self._own.close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One whole tensor, copied out of its file's map (then unmapped), optionally up-cast.

    Same values as :func:`load_tensor`; the memory it holds is the returned tensor only.
    """
    with TensorReader(info) as r:
        return r.read(dtype=dtype).reshape(info.shape)


def file_metadata(path: str | Path) -> dict[str, Any]:
    """The ``__metadata__`` block of a safetensors header (empty when absent)."""
    path = Path(path)
    read_header(path)  # validated first: the length claim, the JSON, the entries
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = _parse_header(fh.read(n), path)
    meta = header.get("__metadata__", {})
    return dict(meta) if isinstance(meta, dict) else {}
