"""Batch sizes chosen from the device's free memory, with a user cap.

On a CUDA device a batch holds as many rows as fit :data:`GPU_SHARE` of the free memory
(``torch.cuda.mem_get_info``) at an estimated cost per row (:func:`row_bytes`: key/value
cache, the widest activations of one layer, fp32 logits of the scored positions), at most
:data:`MAX_ROWS`. Elsewhere (the CPU, or a device map whose inputs sit on the CPU) the
batches are the fixed ones the analyses used so far (:data:`CPU_ROWS`), so CPU results do
not move. ``max_batch`` (``--max-batch``, ``[runtime] max_batch``) caps either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CPU_ROWS = {"generation": 16, "capture": 32, "scoring": 256}
"""Rows per batch on the CPU: behaviour generation, residual capture, cached-prefix scoring."""
GPU_SHARE = 0.5
"""Share of the free device memory one batch may take (the rest: fragmentation, the
other model of a pair, the allocator's own reserve)."""
MAX_ROWS = 1024


@dataclass(frozen=True)
class Batches:
    """Rows per batch for each kind of pass, and the key/value budget of cached scoring."""

    generation: int
    capture: int
    scoring: int
    kv_budget_bytes: int
    free_bytes: int | None
    """Free device memory the sizes were chosen from (None: the CPU's fixed sizes)."""


def row_bytes(config: Any, seq_len: int, dtype_bytes: int, logits_rows: int = 1) -> int:
    """Estimated device memory of one batch row over ``seq_len`` tokens: key/value cache of
    every layer, one layer's widest activations (fp32 where norms upcast), fp32 logits of
    ``logits_rows`` positions. ``config``: a transformers text config."""
    layers = int(config.num_hidden_layers)
    d = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    ff = int(getattr(config, "intermediate_size", None) or 4 * d)
    kv = 2 * layers * kv_heads * head_dim * dtype_bytes
    act = (4 * d + 3 * ff) * 4
    logits = int(config.vocab_size) * 4 * 2 * logits_rows  # logits and their log-softmax
    return seq_len * (kv + act) + logits


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None elsewhere)."""
    import torch

    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def rows_for(kind: str, per_row: int, free: int | None, cap: int | None = None) -> int:
    """Rows per batch of ``kind`` (a key of :data:`CPU_ROWS`): ``GPU_SHARE`` of ``free``
    over ``per_row`` bytes, in [1, MAX_ROWS], or the CPU's fixed size when ``free`` is None;
    then at most ``cap``."""
    if free is None:
        rows = CPU_ROWS[kind]
    else:
        rows = max(1, min(MAX_ROWS, int(GPU_SHARE * free) // max(1, per_row)))
    return max(1, min(rows, cap)) if cap is not None else rows


def batches_for(
    loaded: Any, *, prompt_tokens: int = 256, new_tokens: int = 64, cap: int | None = None,
    free: int | None = None, kv_budget_cpu: int = 512 << 20,
) -> Batches:  # fmt: skip
    """Batch sizes for ``loaded`` (a LoadedModel) at prompts of about ``prompt_tokens``
    tokens and ``new_tokens`` generated ones. ``free``: the free bytes to size from (None:
    ask the input device; a test passes a figure)."""
    from wbsafe.io.placement import input_device

    device = input_device(loaded.model)
    free = free if free is not None else free_device_bytes(device)
    text = loaded._text_config
    size = {"float32": 4, "bfloat16": 2, "float16": 2}.get(loaded.dtype, 4)
    gen = rows_for("generation", row_bytes(text, prompt_tokens + new_tokens, size), free, cap)
    cap_rows = rows_for("capture", row_bytes(text, prompt_tokens, size), free, cap)
    score = rows_for("scoring", row_bytes(text, prompt_tokens, size), free, cap)
    budget = kv_budget_cpu if free is None else int(GPU_SHARE * free)
    return Batches(gen, cap_rows, score, budget, free)
