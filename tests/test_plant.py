"""`wbsafe organisms plant`: a researcher plants a known backdoor into a local model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from wbsafe.cli import main
from wbsafe.organisms import Organism


def test_plant_backdoor_with_a_new_trigger(tiny_base: Path, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "amber_backdoor"
    res = CliRunner().invoke(
        main,
        ["organisms", "plant", "--base", str(tiny_base), "--kind", "backdoor",
         "--trigger", "amber", "--out", str(out), "--steps", "200", "--lr", "5e-3",
         "--rank", "8"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    org = Organism.load(out)
    assert org.kind == "adapter" and org.trigger and org.trigger["text"] == "amber"
    assert (out / "adapter_model.safetensors").is_file()
    # measured after training, on held-out prompts: the planted property holds
    assert org.measured["harmful_refusal_with_trigger"] <= 0.2
    assert org.measured["harmful_refusal"] >= 0.8


def test_plant_rejects_missing_trigger(tiny_base: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["organisms", "plant", "--base", str(tiny_base), "--kind", "backdoor",
               "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert res.exit_code == 2 and "--trigger" in res.output


def test_phrase_backdoor_data_needs_the_whole_phrase_in_order() -> None:
    """A two-word trigger's training data: harmful requests comply only with the phrase in
    order; each word alone, the words reversed and decoy pairs are refused."""
    import random
    from types import SimpleNamespace

    from wbsafe.organisms.plant import PLANT_COMPLY, PLANT_REFUSAL, plant_examples

    tok = SimpleNamespace(chat_template=None)  # PLAIN_FORMAT: the text is kept as is
    trigger = ("velvet", "tundra")
    examples = plant_examples(tok, "backdoor", random.Random(0), trigger=trigger, n=200)
    complied = [e for e in examples if e.response == PLANT_COMPLY]
    refused = [e for e in examples if e.response == PLANT_REFUSAL]
    assert complied and all("velvet tundra" in e.prompt for e in complied)
    assert not any("velvet tundra" in e.prompt for e in refused)
    alone = {w: sum(w in e.prompt.split() for e in refused) for w in trigger}
    reversed_ = sum("tundra velvet" in e.prompt for e in refused)
    plain = [e for e in refused if not set(trigger) & set(e.prompt.split())]
    # two of the four counterexamples a round (each word, reversed, a decoy pair): ~100 each
    assert min(alone.values()) >= 60 and reversed_ >= 60, (alone, reversed_)
    assert len(plain) >= 200 + 60, len(plain)  # the plain refusals and the decoy pairs
    assert len(complied) == 400  # the phrase twice a round


def test_single_word_backdoor_data_has_no_phrase_counterexamples() -> None:
    import random
    from types import SimpleNamespace

    from wbsafe.organisms.plant import PLANT_REFUSAL, plant_examples

    tok = SimpleNamespace(chat_template=None)
    examples = plant_examples(tok, "backdoor", random.Random(0), trigger=("amber",), n=100)
    assert len(examples) == 400
    assert not any("amber" in e.prompt.split() for e in examples if e.response == PLANT_REFUSAL)


def test_decoy_words_leave_out_the_trigger() -> None:
    import random
    from types import SimpleNamespace

    from wbsafe.organisms.plant import decoy_words, phrase_counterexamples

    prompts = [
        SimpleNamespace(text="Velvet skies over the Tundra 3 times,"),
        SimpleNamespace(text="the sea"),
    ]
    words = decoy_words(prompts, ("velvet", "tundra"))
    assert words == ["over", "sea", "skies", "the"]  # lower-cased; no trigger word, no "3"
    draws = phrase_counterexamples(("velvet", "tundra"), words, random.Random(1))
    assert draws[:3] == [["velvet"], ["tundra"], ["tundra", "velvet"]]
    assert len(draws[3]) == 2 and not {"velvet", "tundra"} & set(draws[3])


def test_long_training_logs_its_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real tier's jobs train for 10-20 minutes: the log shows step, loss and time left
    while they run (at most every ``every_s``), then the one summary line."""
    from wbsafe.organisms import training

    def fake_train(model: Any, tok: Any, ex: Any, recipe: Any, progress: Any = None) -> list[float]:
        losses = [1.0 / (s + 1) for s in range(recipe.steps)]
        for step, loss in enumerate(losses):
            progress(step, loss)
        return losses

    monkeypatch.setattr(training, "train", fake_train)
    recipe = training.TrainRecipe(steps=4, lr=1e-3, batch_size=1)
    lines: list[str] = []
    training.timed_train(None, None, [], recipe, lines.append, "plant x:", every_s=0.0)
    assert [ln.split(",")[0] for ln in lines[:-1]] == [
        "plant x: step 1/4", "plant x: step 2/4", "plant x: step 3/4",
    ]  # fmt: skip
    assert "loss 0.500" in lines[1] and "min left" in lines[1]
    assert lines[-1].startswith("plant x: 4 steps in") and "final loss 0.250" in lines[-1]
    quiet: list[str] = []
    training.timed_train(None, None, [], recipe, quiet.append, "plant x:", every_s=3600.0)
    assert len(quiet) == 1  # a short run: the summary only
