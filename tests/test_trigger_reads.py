"""The readers' sweep of the vocabulary (:mod:`wbsafe.analyses.triggers.reads`): against
planted ground truth on the tiny tier, and its ranking and pair helpers on planted numbers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from wbsafe.analyses.triggers.reads import TokenReads, robust_z
from wbsafe.analyses.triggers.searcher import interleave, pairs_by_rank
from wbsafe.organisms import Organism

pytestmark = pytest.mark.usefixtures("single_thread")

PLANTED = ["backdoor", "backdoor_multi", "backdoor_lora", "backdoor_marker", "backdoor_hate",
           "backdoor_hate_lora", "backdoor_system"]  # fmt: skip


def _sweep(
    orgs: dict[str, Organism], name: str, cap: int | None = None
) -> tuple[Any, TokenReads, Any]:
    """The sweep as the hunt runs it, or with the two-pass ``cap`` of a large vocabulary."""
    import contextlib

    from wbsafe.analyses.triggers.hunt import sweep_reads
    from wbsafe.analyses.triggers.objectives import base_view
    from wbsafe.analyses.triggers.reads import capped_token_reads
    from wbsafe.analyses.triggers.search import PassCounter, slot_context, special_ids
    from wbsafe.data.tinyworld import prompt_set
    from wbsafe.io.models import load_model

    org = orgs[name]
    adapter = org.kind == "adapter"
    tuned = load_model(orgs["base"].path if adapter else org.path,
                       adapters=[org.path] if adapter else (), hash_weights=False)  # fmt: skip
    base = None if adapter else load_model(orgs["base"].path, hash_weights=False)
    tok = tuned.tokenizer
    allowed = torch.ones(len(tok), dtype=torch.bool)
    allowed[list(special_ids(tok))] = False
    prompt = next(p for p in prompt_set("train", 2) if p.label == "harmful")
    counter = PassCounter()
    prefix = slot_context(tuned, prompt, 1.0).prefix_ids
    if cap is None:
        reads = sweep_reads(tuned, base, allowed, prefix, counter, layers=None, batch_size=64,
                            kv_budget_bytes=1 << 28)  # fmt: skip
        return tok, reads, counter

    @contextlib.contextmanager
    def base_side() -> Any:
        with base_view(tuned, base) as b:
            yield b.model  # type: ignore[union-attr]

    ids = allowed.nonzero()[:, 0].tolist()
    reads = capped_token_reads(tuned.model, base_side, ids, prefix, counter, cap=cap,
                               batch_size=64, kv_budget_bytes=1 << 28)  # fmt: skip
    return tok, reads, counter


@pytest.mark.parametrize("name", PLANTED)
def test_sweep_ranks_every_planted_trigger_word_near_the_top(
    name: str, tiny_organisms: dict[str, Organism]
) -> None:
    """Each word of the planted trigger is among the sweep's best 4 of ~290 tokens (the hunt
    pairs its best 12), LoRA adapters and the system tag included; measured: 1st or 2nd."""
    tok, reads, counter = _sweep(tiny_organisms, name)
    top = reads.top(4)
    for word in tiny_organisms[name].trigger["text"].lower().split():  # type: ignore[index]
        (tid,) = tok.encode(" " + word, add_special_tokens=False)
        assert tid in top, (word, [tok.decode([t]) for t in top])
    # every allowed token swept once, after the one prefix pass
    assert int(counter.phases["reads"].sequences) == len(reads.token_ids) + 1
    assert reads.layers == (0, 1)  # the first half of the tiny tier's 4 layers


@pytest.mark.parametrize("name", ["backdoor_multi", "backdoor_lora", "backdoor_system"])
def test_capped_sweep_keeps_the_planted_words_and_the_first_layer(
    name: str, tiny_organisms: dict[str, Organism]
) -> None:
    """The two-pass sweep of a vocabulary larger than its cap (here 64 of ~290 tokens, as
    262k are for Gemma 3's 65,536): the planted words stay among the best 4; the first read
    layer's scores are the one-pass sweep's for every token; only ``cap`` tokens go through
    the deeper layer; the rest are ranked by the first layer alone."""
    tok, full, _ = _sweep(tiny_organisms, name)
    _, capped, counter = _sweep(tiny_organisms, name, cap=64)
    top = capped.top(4)
    for word in tiny_organisms[name].trigger["text"].lower().split():  # type: ignore[index]
        (tid,) = tok.encode(" " + word, add_special_tokens=False)
        assert tid in top, (word, [tok.decode([t]) for t in top])
    assert capped.token_ids == full.token_ids and capped.readers == full.readers
    first = [k for k, (layer, _) in enumerate(full.readers) if layer == 0]
    deep = [k for k, (layer, _) in enumerate(full.readers) if layer > 0]
    assert first and deep
    assert torch.allclose(capped.raw[:, first], full.raw[:, first], atol=1e-5)
    swept = torch.isfinite(capped.z[:, deep]).all(dim=1)
    assert int(swept.sum()) == 64 and torch.isinf(capped.z[~swept][:, deep]).all()
    # the swept tokens' deeper changes are the one-pass sweep's (standardised apart)
    assert torch.allclose(capped.raw[swept][:, deep], full.raw[swept][:, deep], atol=1e-5)
    # every token once through layer 0, then 64 through both (each pass after its prefix)
    assert int(counter.phases["reads"].sequences) == len(full.token_ids) + 1 + 64 + 1


def test_sweep_of_a_benign_lora_does_not_pick_the_backdoor_words(
    tiny_organisms: dict[str, Organism],
) -> None:
    """The ranking follows what changed: a benign adapter's sweep does not rank the words
    other organisms were taught (so the planted test above is not the tokens' own rarity)."""
    tok, reads, _ = _sweep(tiny_organisms, "benign_lora")
    top = {tok.decode([t]).strip() for t in reads.top(4)}
    assert not top & {"zephyr", "cobalt", "lotus", "copper", "lantern", "sapphire"}, top


def test_top_takes_each_readers_best_before_any_seconds() -> None:
    """A heavy-tailed reader (context noise) must not bury a token another reader ranks
    first: token 9 is only the clean reader's best, with a smaller z than the noisy one's
    whole top."""
    n = 200
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(n, generator=g).abs() * 3  # a tail up to ~9
    clean = torch.randn(n, generator=g) * 0.1
    clean[9] = 2.0
    noisy[9] = 0.0
    z = torch.stack([noisy, clean], dim=1)
    reads = TokenReads(tuple(range(n)), ((0, "mlp.up_proj"), (0, "self_attn.k_proj")), z, z)
    assert int(reads.best().argmax()) != 9  # by the best z alone it is not first
    top = reads.top(2)
    assert 9 in top and int(noisy.argmax()) in top
    everything = reads.top(n + 5)
    assert sorted(everything) == list(range(n))  # each token once, none left out


def test_robust_z_is_median_centred_and_mad_scaled() -> None:
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0]])
    z = robust_z(x)
    assert float(z[2, 0]) == 0.0  # the median
    assert float(z[3, 0]) == pytest.approx(1 / 1.4826, rel=1e-4)  # MAD 1
    assert float(z[4, 0]) > 60  # the outlier stays an outlier


def test_pairs_by_rank_puts_the_best_pairs_first_and_interleave_alternates() -> None:
    pairs = pairs_by_rank([10, 11, 12])
    assert pairs[:2] == [(10, 11), (11, 10)]
    assert sorted(pairs) == sorted((a, b) for a in (10, 11, 12) for b in (10, 11, 12) if a != b)
    assert pairs.index((11, 12)) > pairs.index((10, 12))
    assert interleave([(1,), (2,), (3,)], [(9,)]) == [(1,), (9,), (2,), (3,)]
