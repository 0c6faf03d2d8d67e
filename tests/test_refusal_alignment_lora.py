"""Refusal alignment of LoRA adapters whose modules have their own rank and alpha.

peft's ``rank_pattern``/``alpha_pattern`` give single modules another rank/alpha than the
top-level ``r``/``lora_alpha``; each module's dW is ``scale · B A`` with its own scale. The
per-matrix ``||dW||`` that alignment reports must be the Frobenius norm of that dense
product, computed here from the factors (and, for a peft-made adapter, by peft itself).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wbsafe.analyses.refusal import RefusalDirectionFit, refusal_alignment

D, VOCAB, INNER = 16, 40, 24
PREFIX = "base_model.model.model."


def _fit(direction: np.ndarray) -> RefusalDirectionFit:
    """A fit whose selected direction is ``direction`` (all alignment reads of it)."""
    return RefusalDirectionFit(
        layer=0, position="p", site="blocks.0.hook_resid_pre", n_layers=1,
        d_model=direction.shape[0], positions=("p",), candidates=(), selection="test",
        random_bypass=0.0, base_refusal_harmful=0.0, base_refusal_harmless=0.0,
        base_weight_sha256=(), base_model={}, prompt_ids={},
        directions=direction[None, None, :], harmful_proj=np.zeros((1, 1)),
        harmless_proj=np.zeros((1, 1)),
    )  # fmt: skip


def _write_adapter(out: Path, config: dict, ranks: dict[str, int], seed: int = 0) -> dict:
    """Write random factors of the given rank per module; returns {module: (A, B)}."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    factors = {}
    for module, rank in ranks.items():
        if module == "embed_tokens":
            a = torch.randn(rank, VOCAB, generator=g)  # lora_embedding_A: [R, vocab]
            b = torch.randn(D, rank, generator=g)  # lora_embedding_B: [d, R]
            tensors[f"{PREFIX}{module}.lora_embedding_A"] = a
            tensors[f"{PREFIX}{module}.lora_embedding_B"] = b
        else:
            a = torch.randn(rank, INNER, generator=g)  # lora_A: [R, in]
            b = torch.randn(D, rank, generator=g)  # lora_B: [out = d_model, R]
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PREFIX}{module}.lora_B.weight"] = b
        factors[module] = (a.double(), b.double())
    out.mkdir()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return factors


O0, O1, DOWN, EMB = (
    "layers.0.self_attn.o_proj", "layers.1.self_attn.o_proj", "layers.0.mlp.down_proj",
    "embed_tokens",
)  # fmt: skip


@pytest.mark.parametrize(
    ("config", "modules"),
    [
        (  # one module with its own rank and alpha
            {"r": 8, "lora_alpha": 16, "rank_pattern": {O0: 4}, "alpha_pattern": {O0: 32}},
            {O0: (4, 32 / 4), O1: (8, 16 / 8), DOWN: (8, 16 / 8), EMB: (8, 16 / 8)},
        ),
        (  # no lora_alpha: peft's default 8, not the rank
            {"r": 8, "rank_pattern": {"down_proj": 2}},
            {O0: (8, 8 / 8), O1: (8, 8 / 8), DOWN: (2, 8 / 2), EMB: (8, 8 / 8)},
        ),
        (  # rsLoRA, and a pattern key naming the module as peft sees it (with "model.")
            {"r": 8, "lora_alpha": 16, "use_rslora": True,
             "rank_pattern": {f"model.{O1}": 2}, "alpha_pattern": {EMB: 4}},
            {O0: (8, 16 / math.sqrt(8)), O1: (2, 16 / math.sqrt(2)),
             DOWN: (8, 16 / math.sqrt(8)), EMB: (8, 4 / math.sqrt(8))},
        ),
    ],
)  # fmt: skip
def test_per_module_scale_from_written_adapter(
    config: dict, modules: dict[str, tuple[int, float]], tmp_path: Path
) -> None:
    factors = _write_adapter(
        tmp_path / "adapter", config, {m: rk for m, (rk, _) in modules.items()}
    )
    direction = np.random.default_rng(1).standard_normal(D)
    r = torch.as_tensor(direction / np.linalg.norm(direction))

    # the base's config.json names its family (the family table places the writers)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": D}))
    res = refusal_alignment(tmp_path, tmp_path / "adapter", _fit(direction))

    got = {m.name: m for m in res.matrices}
    assert set(got) == set(modules)
    for module, (a, b) in factors.items():
        dw = modules[module][1] * (b @ a)  # dense [d, in]; an embedding's dE is its transpose
        assert got[module].update_norm == pytest.approx(float(torch.linalg.norm(dw)), rel=1e-9)
        assert got[module].along_norm == pytest.approx(float((r @ dw).norm()), rel=1e-9)


def test_per_module_scale_from_peft_adapter(tiny_base: Path, tmp_path: Path) -> None:
    """An adapter made and saved by peft; its own ``get_delta_weight`` is the reference."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from wbsafe.analyses.weights import diff
    from wbsafe.arch.names import canonical_name

    special = "model.layers.1.self_attn.o_proj"
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["o_proj", "down_proj"], lora_dropout=0.0,
        rank_pattern={special: 2}, alpha_pattern={special: 32},
    )  # fmt: skip
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero
                p.copy_(torch.randn(p.shape, generator=g))
    model.save_pretrained(tmp_path / "adapter")
    expected = {}
    scales = set()
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            dw = module.get_delta_weight("default").detach().double()
            expected[canonical_name(name)] = float(torch.linalg.norm(dw))
            scales.add(module.scaling["default"])
    assert scales == {2.0, 16.0}  # peft itself gives the special module another scale
    direction = np.random.default_rng(2).standard_normal(model.config.hidden_size)

    res = refusal_alignment(tiny_base, tmp_path / "adapter", _fit(direction))

    got = {m.name: m.update_norm for m in res.matrices}
    assert set(got) == set(expected)
    for name, norm in expected.items():
        assert got[name] == pytest.approx(norm, rel=1e-5), name

    # the weight diff reads the same adapter with the same per-module scales (it rejected a
    # pattern key spelled as peft spells it, with "model.", before the scale lived in one place)
    weights = diff(tiny_base, adapters=[tmp_path / "adapter"], spectra=False)
    dense = {canonical_name(t.name).removesuffix(".weight"): t.fro_diff for t in weights.rows}
    for name, norm in expected.items():
        assert dense[name] == pytest.approx(norm, rel=1e-5), name
