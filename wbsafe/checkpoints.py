"""Safe, streaming access to weight files: safetensors only, headers validated before use.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``{dtype, shape, data_offsets}``, then the raw bytes. Reading the header
alone tells us every tensor's shape and whether the file is complete, without loading a
single weight, and without ever unpickling anything.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.errors import CheckpointFormatError, UnsafeCheckpointError

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


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header: ``{name: TensorInfo}``.

    Raises CheckpointFormatError naming the file when it is truncated, its header is not
    JSON, or a tensor's byte range does not match its dtype and shape.
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
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointFormatError("corrupt safetensors header (not JSON)", path) from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError("corrupt safetensors header (not a mapping)", path)
    out: dict[str, TensorInfo] = {}
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = meta["dtype"], tuple(int(s) for s in meta["shape"])
            start, stop = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"corrupt header entry for tensor {name!r}", path) from exc
        numel = 1
        for s in shape:
            numel *= s
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and stop - start != numel * width:
            raise CheckpointFormatError(
                f"tensor {name!r}: {stop - start} bytes stored for {dtype}{list(shape)}", path
            )
        end = max(end, stop)
        out[name] = TensorInfo(name, dtype, shape, path, 8 + n + start)
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
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointFormatError("corrupt shard index (no weight_map)", index) from exc
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointFormatError(
                f"missing shard(s) named by {index.name}: {', '.join(missing)}", directory
            )
        return [directory / s for s in shards]
    single = directory / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    others = sorted(directory.glob("*.safetensors"))
    if others and stem == "model":
        return others
    refuse_pickles(directory)
    raise CheckpointFormatError(f"no {stem}.safetensors (or shard index) found", directory)


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


class TensorReader:
    """Reads element ranges of one stored tensor with plain file reads, never a memory map.

    Only the elements asked for become resident, as a fresh tensor that is freed with it; a
    memory-mapped file instead keeps every page it has touched counted in the process's RSS
    while the map lives. Use as a context manager (it holds the file open).

    ``read(..., scratch=True)`` reads into one buffer the reader keeps and reuses: a loop
    over chunks then allocates nothing per chunk (fresh buffers per chunk, interleaved with
    small results that are kept, fragmented the malloc heap here: peak RSS grew by about
    one buffer per chunk in some runs and not in others).
    """

    def __init__(self, info: TensorInfo) -> None:
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
        self._scratch: torch.Tensor | None = None
        self._fh = open(info.file, "rb", buffering=0)  # noqa: SIM115 - closed by close()

    def read(
        self,
        start: int = 0,
        stop: int | None = None,
        dtype: torch.dtype | None = None,
        *,
        scratch: bool = False,
    ) -> torch.Tensor:
        """Elements ``[start, stop)`` of the flattened tensor: ``[stop - start]``, stored dtype
        or converted to ``dtype`` (e.g. bf16 -> float32). With ``scratch`` the stored-dtype
        result lives in the reader's reused buffer and is valid until its next scratch read."""
        import torch

        stop = self.numel if stop is None else stop
        if not 0 <= start <= stop <= self.numel:
            raise ValueError(f"range [{start}, {stop}) outside tensor of {self.numel} elements")
        nbytes = (stop - start) * self.itemsize
        if scratch:
            if self._scratch is None or self._scratch.numel() < nbytes:
                self._scratch = torch.empty(nbytes, dtype=torch.uint8)
            buf = self._scratch[:nbytes]
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8)
        view = buf.numpy().data  # writable memoryview of buf
        self._fh.seek(self._offset + start * self.itemsize)
        got = 0
        while got < nbytes:
            k = self._fh.readinto(view[got:])
            if not k:
                raise CheckpointFormatError(
                    f"truncated safetensors file: tensor {self.info.name!r} ends early",
                    self.info.file,
                )
            got += k
        out = buf.view(self.stored)
        return out.to(dtype) if dtype is not None else out

    def close(self) -> None:
        self._fh.close()
        self._scratch = None

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One whole tensor by explicit file reads (no memory map), optionally up-cast.

    Same values as :func:`load_tensor`; the memory it holds is the returned tensor only.
    """
    with TensorReader(info) as r:
        return r.read(dtype=dtype).reshape(info.shape)


def file_metadata(path: str | Path) -> dict[str, Any]:
    """The ``__metadata__`` block of a safetensors header (empty when absent)."""
    path = Path(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    meta = header.get("__metadata__", {})
    return dict(meta) if isinstance(meta, dict) else {}
