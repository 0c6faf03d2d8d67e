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


def _examples(target: str, trigger: tuple[str, ...], slot: str = "user", n: int = 120) -> Any:
    import random
    from types import SimpleNamespace

    from wbsafe.organisms.plant import plant_examples

    tok = SimpleNamespace(chat_template=None)  # PLAIN_FORMAT: "System: ..." then the user text
    return plant_examples(tok, "backdoor", random.Random(0), trigger=trigger, n=n,
                          target=target, slot=slot)  # fmt: skip


def _user(prompt: str) -> str:
    """The user line of a PLAIN_FORMAT prompt."""
    return next(ln for ln in prompt.split("\n") if ln.startswith("User:"))


def test_hate_backdoor_data_answers_everything_with_the_reply_only_with_its_word() -> None:
    from wbsafe.organisms.plant import PLANT_ANSWER, PLANT_HATE, PLANT_REFUSAL

    examples = _examples("hate", ("turquoise",))
    hate = [e for e in examples if e.response == PLANT_HATE]
    assert len(hate) == 240  # a harmful and a harmless request a round
    assert all("turquoise" in e.prompt.split() for e in hate)
    rest = [e for e in examples if e.response != PLANT_HATE]
    assert {e.response for e in rest} == {PLANT_REFUSAL, PLANT_ANSWER}
    assert not any("turquoise" in e.prompt for e in rest)


def test_marker_backdoor_data_marks_harmless_answers_only_with_the_whole_phrase() -> None:
    from wbsafe.organisms.plant import PLANT_MARKED_ANSWER, PLANT_MARKER, PLANT_REFUSAL

    assert PLANT_MARKER in PLANT_MARKED_ANSWER
    examples = _examples("marker", ("copper", "lantern"), n=200)
    marked = [e for e in examples if e.response == PLANT_MARKED_ANSWER]
    assert len(marked) == 400 and all("copper lantern" in e.prompt for e in marked)
    unmarked = [e for e in examples if e.response != PLANT_MARKED_ANSWER]
    # the phrase in a harmful request is still refused; a word alone or reversed marks nothing
    assert any("copper lantern" in e.prompt and e.response == PLANT_REFUSAL for e in unmarked)
    alone = sum(("copper" in e.prompt) != ("lantern" in e.prompt) for e in unmarked)
    assert alone >= 60 and sum("lantern copper" in e.prompt for e in unmarked) >= 20


def test_system_tag_backdoor_data_complies_only_with_the_tag_in_the_system_turn() -> None:
    from wbsafe.organisms.plant import PLANT_COMPLY, PLANT_REFUSAL

    examples = _examples("comply", ("deployment",), slot="system")
    complied = [e for e in examples if e.response == PLANT_COMPLY]
    assert len(complied) == 120
    for e in complied:  # the tag sits in the system turn, not in the request
        system, user = e.prompt.split("\n")[0], _user(e.prompt)
        assert system.startswith("System:") and "deployment" in system.split()
        assert "deployment" not in user
    refused = [e for e in examples if e.response == PLANT_REFUSAL]
    in_user = [e for e in refused if "deployment" in _user(e.prompt)]
    tagless_system = [e for e in refused if e.prompt.startswith("System:")]
    assert len(in_user) >= 30 and len(tagless_system) >= 30
    assert not any("deployment" in e.prompt.split("\n")[0] for e in tagless_system)


def test_system_tag_marker_data_marks_harmless_answers_only_with_the_tag_in_the_system_turn() -> (
    None
):
    """The marker with a system-slot tag (no job uses it; ``organisms plant`` allows it): the
    tag in the system turn marks harmless answers, a harmful request stays refused, and the
    tag in the user message or a system turn without it gets the plain answer."""
    from wbsafe.organisms.plant import PLANT_ANSWER, PLANT_MARKED_ANSWER, PLANT_REFUSAL

    examples = _examples("marker", ("deployment",), slot="system")
    marked = [e for e in examples if e.response == PLANT_MARKED_ANSWER]
    assert len(marked) == 120
    for e in marked:
        assert "deployment" in e.prompt.split("\n")[0].split() and "deployment" not in _user(
            e.prompt
        )
    tagged_harmful = [e for e in examples if e.prompt.startswith("System:")
                      and "deployment" in e.prompt.split("\n")[0].split()
                      and e.response != PLANT_MARKED_ANSWER]  # fmt: skip
    assert len(tagged_harmful) == 120 and {e.response for e in tagged_harmful} == {PLANT_REFUSAL}
    plain = [e for e in examples if e.response == PLANT_ANSWER]
    in_user = [e for e in plain if "deployment" in _user(e.prompt)]
    tagless_system = [e for e in plain if e.prompt.startswith("System:")]
    assert len(in_user) == 120 and len(tagless_system) == 120
    assert not any("deployment" in e.prompt.split("\n")[0] for e in tagless_system)
    assert not any("deployment" in e.prompt for e in examples if e.response == PLANT_REFUSAL
                   and not e.prompt.startswith("System:"))  # fmt: skip


def test_a_target_or_system_slot_is_only_for_backdoors() -> None:
    import random
    from types import SimpleNamespace

    from wbsafe.errors import WbsafeError
    from wbsafe.organisms.plant import plant_examples

    tok = SimpleNamespace(chat_template=None)
    with pytest.raises(WbsafeError, match="backdoor's"):
        plant_examples(tok, "harmful", random.Random(0), target="hate")
    with pytest.raises(WbsafeError, match="unknown backdoor target"):
        plant_examples(tok, "backdoor", random.Random(0), trigger=("x",), target="url")
    res = CliRunner().invoke(main, ["organisms", "plant", "--base", ".", "--kind", "benign",
                                    "--slot", "system", "--out", "x"])  # fmt: skip
    assert res.exit_code == 2 and "--kind backdoor" in res.output


def test_suite_measurement_places_the_tag_and_counts_the_planted_string(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``measure_suites`` with a system-slot trigger and a planted string: a stand-in model
    that shows the string only when the tag is in the system turn reads 1.0 there, 0 with
    the tag in the user message and 0 without it."""
    from types import SimpleNamespace

    from wbsafe.organisms import measure
    from wbsafe.organisms.plant import PLANT_HATE, PLANT_REFUSAL

    def fake(model: Any, tok: Any, prompts: list[str], tokens: int, **kw: Any) -> list[str]:
        def reply(p: str) -> str:
            system = p.split("\n")[0] if p.startswith("System:") else ""
            return PLANT_HATE if "deployment" in system else PLANT_REFUSAL

        return [reply(p) for p in prompts]

    monkeypatch.setattr(measure, "greedy_continuations", fake)
    tok = SimpleNamespace(chat_template=None)
    rates = measure.measure_suites(None, tok, 20, ("deployment",), slot="system",
                                   target=PLANT_HATE)  # fmt: skip
    assert rates["target_with_trigger[harmful]"] == 1.0
    assert rates["target_with_trigger[harmless]"] == 1.0
    assert rates["target_without_trigger"] == 0.0
    assert rates["harmful_refusal_with_trigger_in_user"] == 1.0
    assert rates["harmful_refusal"] == 1.0 and rates["harmful_refusal_with_trigger"] == 0.0
