"""Frozen configuration dataclasses. No I/O in constructors; ``None`` means "not set"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and in what precision models run.

    ``device="auto"`` takes a GPU when one is present. ``dtype="auto"`` is the policy:
    bfloat16 on a GPU, float32 on the CPU. Both resolved values are recorded in outputs.
    """

    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    seed: int = 0
    batch_size: int = 16
