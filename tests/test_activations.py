"""Residual-stream capture through TransformerBridge hooks: padding, positions, early stop,
HF agreement, adapter-disabled base capture, module-tree restore, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wbsafe.capture.activations import (
    SITE_KINDS,
    Activations,
    bridged,
    capture,
    decoder_layers,
    post_instruction_length,
    site_name,
)
from wbsafe.config import RuntimeConfig
from wbsafe.data import tinyworld as tw
from wbsafe.errors import WbsafeError
from wbsafe.io.models import LoadedModel, load_model
from wbsafe.organisms import Organism


@pytest.fixture(scope="module")
def base(tiny_base: Path) -> LoadedModel:
    return load_model(tiny_base, runtime=RuntimeConfig(device="cpu"))


SITES = [site_name(layer, kind) for layer in range(4) for kind in SITE_KINDS]


def test_post_instruction_positions(base: LoadedModel) -> None:
    # tiny template: "<|user|> {content} <|end|> <|assistant|>" -> two template tokens
    assert post_instruction_length(base.tokenizer) == 2
    acts = capture(base, ["make a bomb"], [site_name(0)])
    assert acts.positions == ("last_instr", "post0", "post1", "mean")
    emb = base.model.get_input_embeddings().weight
    tok = base.tokenizer
    for pos, word in (("last_instr", "bomb"), ("post0", "<|end|>"), ("post1", "<|assistant|>")):
        want = emb[tok.convert_tokens_to_ids(word)]
        assert torch.allclose(acts.get(site_name(0), pos)[0], want, atol=1e-6), pos


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(base: LoadedModel, side: str) -> None:
    prompts = tw.prompt_set("test", n_per_category=2)
    prompts = sorted(prompts, key=lambda p: len(p.text))  # lengths differ -> real padding
    batched = capture(base, prompts, SITES, padding_side=side, batch_size=len(prompts))
    for i in (0, len(prompts) - 1):
        alone = capture(base, [prompts[i]], SITES, batch_size=1)
        for s in SITES:
            assert torch.allclose(batched.acts[s][i], alone.acts[s][0], atol=1e-5), (side, s)


def test_matches_hf_hidden_states_and_stops_early(base: LoadedModel) -> None:
    text = "explain how to build a landmine step by step ."
    acts = capture(base, [text], SITES)
    enc = base.tokenizer([base.format(text)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hs = base.model(**enc, output_hidden_states=True).hidden_states
    for layer in range(4):
        got = acts.get(site_name(layer), "post1")[0]
        assert torch.allclose(got, hs[layer][0, -1], atol=1e-5)
        mean = hs[layer][0].double().mean(dim=0).float()
        assert torch.allclose(acts.get(site_name(layer), "mean")[0], mean, atol=1e-5)
    # resid_post of layer l is resid_pre of layer l + 1
    assert torch.allclose(acts.acts[site_name(1, "resid_post")], acts.acts[site_name(2)], atol=1e-6)
    calls: list[int] = []
    layers = decoder_layers(base.model)
    handle = layers[2].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        capture(base, [text], [site_name(1, "resid_post")])
        assert calls == []  # the pass stopped after layer 1
        capture(base, [text], [site_name(2, "resid_post")])
        assert calls == [1]  # the HF layer runs inside the bridge when it is needed
    finally:
        handle.remove()


def test_save_load_round_trip(base: LoadedModel, tmp_path: Path) -> None:
    acts = capture(base, tw.prompt_set("test", n_per_category=1), SITES[:3])
    path = acts.save(tmp_path / "acts.safetensors")
    back = Activations.load(path)
    assert back.positions == acts.positions and back.prompt_ids == acts.prompt_ids
    assert back.meta["n_post"] == 2
    for s in acts.acts:
        assert torch.equal(back.acts[s], acts.acts[s])
    with pytest.raises(WbsafeError):
        capture(base, ["hi"], ["blocks.9.hook_resid_pre"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(WbsafeError, match=r"bad\.safetensors"):
        Activations.load(tmp_path / "bad.safetensors")


def _tree(model: torch.nn.Module) -> list[tuple[int, str, int]]:
    return [(id(p), n, id(c)) for p in model.modules() for n, c in p._modules.items()]


def test_bridge_wraps_in_place_and_is_undone(base: LoadedModel) -> None:
    before, attn = _tree(base.model), base.model.config._attn_implementation
    with bridged(base.model) as bridge:
        layers = decoder_layers(base.model)
        assert type(layers[0]).__name__ == "BlockBridge"  # wrapped in place, not copied
        hf_layer = bridge.blocks[1].original_component
        assert any(m is hf_layer for m in base.model.modules())
        assert base.model.config._attn_implementation == "eager"
    assert _tree(base.model) == before and base.model.config._attn_implementation == attn
    assert attn != "eager"  # so the restore above is a real check
    with pytest.raises(RuntimeError, match="inside"), bridged(base.model):
        raise RuntimeError("an error inside still restores")
    capture(base, ["make a bomb"], [site_name(3, "resid_post")])
    assert _tree(base.model) == before and base.model.config._attn_implementation == attn
    assert type(decoder_layers(base.model)[0]).__name__ == "LlamaDecoderLayer"


def test_adapter_base_capture_equals_base_checkpoint(
    base: LoadedModel, tiny_organisms: dict[str, Organism]
) -> None:
    tuned = load_model(
        tiny_organisms["backdoor_lora"].path,
        runtime=RuntimeConfig(device="cpu"),
        follow_named_base=True,
    )
    assert tuned.adapter_names  # a PeftModel: base + LoRA on one loaded object
    prompts = tw.prompt_set("test", n_per_category=2)
    alone = capture(base, prompts, SITES)
    with tuned.base_only():
        off = capture(tuned, prompts, SITES)
    on = capture(tuned, prompts, SITES)
    for s in SITES:
        assert torch.allclose(off.acts[s], alone.acts[s], atol=1e-5), s
    assert (on.acts[SITES[-1]] - alone.acts[SITES[-1]]).abs().max() > 1e-2  # LoRA is seen
    # with the adapter on, the bridge's numbers are the PEFT model's own hidden states
    text = prompts[0].conversation()
    enc = tuned.tokenizer([tuned.format(text)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hs = tuned.model(**enc, output_hidden_states=True).hidden_states
    for layer in range(4):
        assert torch.allclose(on.get(site_name(layer), "post1")[0], hs[layer][0, -1], atol=1e-5)
