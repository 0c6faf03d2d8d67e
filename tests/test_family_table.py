"""The family table itself, without models: detection errors, the names it gives, refusal
starts per tokenizer kind, continuation encoding, the CPU precision rule."""

from __future__ import annotations

import pytest
from family_models import BYTE_BPE, SP_DUMMY, SP_PLAIN, SPECS, WORD, build_fast_tokenizer

from wbsafe.arch.families import FAMILIES, UnknownFamilyError, family_of_config
from wbsafe.arch.names import parse_name


def test_unknown_architecture_says_what_is_missing() -> None:
    with pytest.raises(UnknownFamilyError, match=r"decoder layers.*LoRA targets"):
        family_of_config({"model_type": "mamba", "architectures": ["MambaForCausalLM"]})


@pytest.mark.parametrize("kind", [BYTE_BPE, SP_DUMMY, SP_PLAIN, WORD])
def test_refusal_starts_per_tokenizer_kind(kind: str) -> None:
    from wbsafe.capture.refusal_score import is_refusal_start, refusal_token_ids
    from wbsafe.io.models import encode_continuation

    tok = build_fast_tokenizer(SPECS["qwen2"], kind)

    def starts(text: str) -> bool:
        return is_refusal_start(tok, encode_continuation(tok, text))

    for text in ("I can't help with that.", " I cannot do that.", "Sorry, no.", "I'm sorry"):
        assert starts(text), text
    for text in ("I'd be happy to help!", " ", "", "Sure, here is how", "I"):
        assert not starts(text), text
    ids = refusal_token_ids(tok)
    assert ids and all(tok.decode([i]).strip() for i in ids)  # never a lone ▁ / Ġ / space
    first_i = next(i for i in encode_continuation(tok, " I can't") if tok.decode([i]).strip())
    assert first_i in ids


def test_sentencepiece_continuation_has_no_second_dummy_prefix() -> None:
    from wbsafe.io.models import encode_continuation

    tok = build_fast_tokenizer(SPECS["mistral"])
    alone = tok.convert_ids_to_tokens(tok.encode("\nrest", add_special_tokens=False))
    assert alone[0] == "▁"  # what encoding the suffix on its own gives
    inside = tok.encode("do\nrest", add_special_tokens=False)
    assert inside[-len(encode_continuation(tok, "\nrest")) :] == encode_continuation(tok, "\nrest")
    assert tok.convert_ids_to_tokens(encode_continuation(tok, "\nrest"))[0] != "▁"


def test_table_names_every_module_parse_name_knows() -> None:
    for fam in FAMILIES:
        for mod in (*fam.readers, *fam.writers):
            layer, kind = parse_name(fam.layer_prefix.format(0) + mod + ".weight")
            assert layer == 0 and kind not in ("other", "vision"), (fam.name, mod)


def test_bf16_autocast_only_with_bf16_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from wbsafe.organisms import training
    from wbsafe.organisms.training import TrainRecipe, training_precision

    asks = TrainRecipe(steps=1, lr=1e-3, bf16_autocast=True)
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert training_precision(asks) == "float32"  # emulated bf16 is ~65x slower: never
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training_precision(asks) == "bfloat16-autocast"
    assert training_precision(TrainRecipe(steps=1, lr=1e-3)) == "float32"
