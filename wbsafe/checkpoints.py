"""Safe, streaming access to weight files: safetensors only, headers validated before use.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``{dtype, shape, data_offsets}``, then the raw bytes. Reading the header
alone tells us every tensor's shape and whether the file is complete, without loading a
single weight, and without ever unpickling anything.
"""

from __future__ import annotations

import json
import struct
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
        out[name] = TensorInfo(name, dtype, shape, path)
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


def file_metadata(path: str | Path) -> dict[str, Any]:
    """The ``__metadata__`` block of a safetensors header (empty when absent)."""
    path = Path(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    meta = header.get("__metadata__", {})
    return dict(meta) if isinstance(meta, dict) else {}
