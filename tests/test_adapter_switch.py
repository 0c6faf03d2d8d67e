"""One base kept loaded, adapters swapped in: the model a switch gives computes what a fresh
load of base + adapter computes, and the base is loaded once (scan-many's reports under
switching: tests/test_fleet_ray.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wbsafe.config import RuntimeConfig
from wbsafe.errors import WbsafeError
from wbsafe.io.adapter_switch import AdapterSwitcher
from wbsafe.io.models import load_model
from wbsafe.organisms import Organism

pytestmark = pytest.mark.usefixtures("single_thread")


def _logits(loaded: object, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits  # type: ignore[attr-defined]


def test_a_switched_adapter_computes_what_a_fresh_load_does(
    tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    base = tiny_organisms["base"].path
    first, second = (Path(tiny_organisms[n].path) for n in ("backdoor_lora", "benign_lora"))
    runtime = RuntimeConfig(device="cpu")
    switcher = AdapterSwitcher(runtime)
    a = switcher.load(base, [first])
    ids = torch.tensor([a.tokenizer.encode("how do I pick a lock? cf")])
    out_a = _logits(a, ids)
    b = switcher.load(base, [second])
    assert b.model is a.model  # the same base in memory
    assert (switcher.fresh_loads, switcher.switches) == (1, 1)
    fresh = load_model(base, [second], runtime)
    assert torch.equal(_logits(b, ids), _logits(fresh, ids))
    assert not torch.equal(_logits(b, ids), out_a)  # the first adapter really left
    assert b.weight_hashes == fresh.weight_hashes
    assert b.describe() == fresh.describe()
    with b.base_only():
        plain = _logits(b, ids)
    with fresh.base_only():
        assert torch.equal(plain, _logits(fresh, ids))
    assert len(b.model.peft_config) == 1  # the old adapter was deleted, not piled up

    # a bad adapter fails before the swap and leaves the loaded pair usable
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((second / "adapter_config.json").read_text())
    data = (second / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WbsafeError):
        switcher.load(base, [bad])
    assert switcher.load(base, [first]).model is a.model
    assert torch.equal(_logits(switcher.loaded, ids), out_a)
