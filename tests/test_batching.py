"""The device-sized batch rule (wbsafe.capture.batching), with fake free-memory figures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import LlamaConfig

from wbsafe.capture import batching
from wbsafe.capture.batching import CPU_ROWS, GPU_SHARE, MAX_ROWS, batches_for, row_bytes, rows_for

GIB = 1 << 30
LLAMA_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8,
)  # fmt: skip


def test_row_bytes_counts_the_kv_cache_and_logits() -> None:
    one = row_bytes(LLAMA_8B, 1, 2)
    # bf16 key/value cache of one token: 2 * 32 layers * 8 heads * 128 dims * 2 bytes
    kv = 2 * 32 * 8 * 128 * 2
    assert row_bytes(LLAMA_8B, 2, 2) - one == kv + (4 * 4096 + 3 * 14336) * 4
    assert one > 128256 * 4  # the fp32 logits row is in
    assert row_bytes(LLAMA_8B, 100, 4) > row_bytes(LLAMA_8B, 100, 2)


def test_rows_follow_free_memory_and_the_cap() -> None:
    per = row_bytes(LLAMA_8B, 320, 2)
    free = 60 * GIB  # an 80 GB GPU after the 16 GB of an 8B model
    rows = rows_for("generation", per, free)
    assert rows == int(GPU_SHARE * free) // per
    assert 1 < rows < MAX_ROWS
    assert rows_for("generation", per, 2 * free) >= 2 * rows - 1  # twice the memory, ~twice
    assert rows_for("generation", per, 1 << 20) == 1  # never below one row
    assert rows_for("scoring", 1, 10 * GIB) == MAX_ROWS
    assert rows_for("generation", per, free, cap=4) == 4
    # the CPU (no free figure): the fixed sizes, still capped
    assert rows_for("capture", per, None) == CPU_ROWS["capture"]
    assert rows_for("scoring", per, None, cap=8) == 8


def _fake_loaded(dtype: str) -> SimpleNamespace:
    emb = torch.nn.Embedding(4, 2)
    model = SimpleNamespace(get_input_embeddings=lambda: emb)
    return SimpleNamespace(model=model, _text_config=LLAMA_8B, dtype=dtype)


def test_batches_for_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _fake_loaded("bfloat16")
    cpu = batches_for(loaded)
    assert (cpu.generation, cpu.capture, cpu.scoring) == (16, 32, 256)
    assert cpu.free_bytes is None
    monkeypatch.setattr(batching, "free_device_bytes", lambda device: 40 * GIB)
    gpu = batches_for(loaded, prompt_tokens=200, new_tokens=64)
    assert gpu.free_bytes == 40 * GIB
    assert gpu.generation < gpu.capture  # generated tokens make rows dearer
    assert gpu.kv_budget_bytes == int(GPU_SHARE * 40 * GIB)
    assert batches_for(loaded, cap=3).scoring == 3
    fp32 = batches_for(_fake_loaded("float32"), prompt_tokens=200, new_tokens=64)
    assert fp32.generation < gpu.generation


def test_free_memory_is_only_asked_of_cuda() -> None:
    assert batching.free_device_bytes(torch.device("cpu")) is None


def test_a_scan_sizes_its_batches(
    tiny_organisms: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.pipeline.models import Models

    base, tuned = tiny_organisms["base"].path, tiny_organisms["backdoor"].path
    rt = RuntimeConfig(device="cpu", batch_size=7)
    models = Models(ScanConfig(base=base, tuned=tuned, runtime=rt))
    cpu = models.batches()
    assert (cpu.generation, cpu.capture, cpu.scoring) == (7, 32, 256)  # the configured batch
    monkeypatch.setattr(batching, "free_device_bytes", lambda device: 8 * GIB)
    gpu = models.batches()
    assert gpu.free_bytes == 8 * GIB and gpu.capture > CPU_ROWS["capture"]
    capped = Models(ScanConfig(base=base, tuned=tuned, runtime=RuntimeConfig(max_batch=5)))
    assert capped.batches().scoring == 5
