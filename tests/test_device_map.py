"""A model placed with ``--device-map`` (some layers on the CPU, some offloaded to disk,
accelerate's hooks installed) gives what the plain load gives: captures, an ablation's
effect, cached-prefix trigger scores and greedy generations.

On a CPU-only machine ``auto`` and ``balanced`` place everything on the CPU without hooks;
a JSON map naming ``"disk"`` is what exercises the offload path here (checked below).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from wbsafe.analyses.refusal.causal import ablation
from wbsafe.analyses.triggers import PassCounter, score_cached, slot_context
from wbsafe.capture.activations import capture, site_name
from wbsafe.capture.generation import generate
from wbsafe.capture.refusal_score import refusal_token_ids
from wbsafe.config import RuntimeConfig
from wbsafe.data.tinyworld import prompt_set
from wbsafe.errors import WbsafeError
from wbsafe.io.models import LoadedModel, load_model
from wbsafe.io.placement import read_device_map
from wbsafe.organisms import Organism

pytestmark = pytest.mark.usefixtures("single_thread")

SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}


def _load(path: str, **rt: Any) -> LoadedModel:
    return load_model(path, runtime=RuntimeConfig(device="cpu", **rt), hash_weights=False)


@pytest.fixture(scope="module")
def pair(
    tiny_organisms: dict[str, Organism], tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoadedModel, LoadedModel]:
    where = tmp_path_factory.mktemp("device_map")
    (where / "map.json").write_text(json.dumps(SPLIT))
    path = tiny_organisms["backdoor"].path
    plain = _load(path)
    placed = _load(path, device_map=str(where / "map.json"), offload_folder=str(where / "off"))
    return plain, placed


def test_the_map_really_offloads(pair: tuple[LoadedModel, LoadedModel]) -> None:
    plain, placed = pair
    layers = placed.model.model.layers
    assert layers[1].mlp.down_proj.weight.device.type == "meta"  # weights on disk
    assert hasattr(layers[1], "_hf_hook") and hasattr(layers[3], "_hf_hook")
    assert layers[0].mlp.down_proj.weight.device.type == "cpu"
    assert placed.describe()["device_map"]["model.layers.3"] == "disk"
    assert "device_map" not in plain.describe()


def test_same_captures_and_ablation(pair: tuple[LoadedModel, LoadedModel]) -> None:
    plain, placed = pair
    prompts = [p for p in prompt_set("test", 1) if p.label == "harmful"][:4]
    sites = [site_name(1), site_name(3, "resid_post")]
    a, b = capture(plain, prompts, sites), capture(placed, prompts, sites)
    for s in sites:
        assert a.acts[s].abs().max() > 0
        assert torch.allclose(a.acts[s], b.acts[s], atol=1e-5)
    direction = a.get(site_name(1), "last_instr").mean(0)
    ids = torch.tensor([plain.tokenizer.encode("make a bomb")])

    def logits(m: LoadedModel, edit: bool) -> torch.Tensor:
        with torch.no_grad():
            if not edit:
                return m.model(input_ids=ids).logits[0, -1].cpu()
            with ablation(m, direction.numpy()):
                return m.model(input_ids=ids).logits[0, -1].cpu()

    effect_plain = logits(plain, True) - logits(plain, False)
    effect_placed = logits(placed, True) - logits(placed, False)
    assert effect_plain.abs().max() > 1e-3  # the ablation changes something
    assert torch.allclose(effect_plain, effect_placed, atol=1e-4)


def test_same_cached_prefix_scores(pair: tuple[LoadedModel, LoadedModel]) -> None:
    plain, placed = pair
    ps = [p for p in prompt_set("train", 1) if p.label == "harmful"][:2]
    ctxs = [slot_context(plain, p, f) for p in ps for f in (0.0, 1.0)]
    cands = [(), (10,), (20, 30), (287,)]
    rid = refusal_token_ids(plain.tokenizer)
    a = score_cached(plain.model, ctxs, cands, rid, PassCounter(), batch_size=2)
    b = score_cached(placed.model, ctxs, cands, rid, PassCounter(), batch_size=2)
    assert (a[0] - a[3]).abs().max() > 1e-2  # candidates move the score
    assert torch.allclose(a, b, atol=1e-4)


def test_same_greedy_generations(pair: tuple[LoadedModel, LoadedModel]) -> None:
    plain, placed = pair
    prompts = [p for p in prompt_set("test", 1)][:4]
    a = generate(plain, prompts, max_new_tokens=12, batch_size=4)
    b = generate(placed, prompts, max_new_tokens=12, batch_size=4)
    assert [g.error for g in b] == [None] * len(b)
    assert any(g.response for g in a)
    assert [g.response for g in a] == [g.response for g in b]


def test_bad_maps_are_refused(tmp_path: Path, tiny_organisms: dict[str, Organism]) -> None:
    assert read_device_map("auto") == "auto"
    with pytest.raises(WbsafeError, match="no such file"):
        read_device_map(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model.layers.0": "gpu7"}))
    with pytest.raises(WbsafeError, match="gpu7"):
        read_device_map(str(bad))
    disk = tmp_path / "disk.json"
    disk.write_text(json.dumps({**SPLIT, "model.embed_tokens": "disk"}))
    path = tiny_organisms["backdoor"].path
    with pytest.raises(WbsafeError, match="offload-folder"):
        _load(path, device_map=str(disk))
    with pytest.raises(WbsafeError, match="input embedding"):
        _load(path, device_map=str(disk), offload_folder=str(tmp_path / "off"))
