"""The loader: real checkpoints and adapters load; unsafe or broken files get clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from wbsafe.config import RuntimeConfig
from wbsafe.errors import (
    AdapterMismatchError,
    CheckpointFormatError,
    UnsafeCheckpointError,
    WbsafeError,
)
from wbsafe.io.models import (
    PLAIN_FORMAT,
    format_prompt,
    inspect_model,
    load_model,
    resolve_device,
    resolve_dtype,
)
from wbsafe.organisms import Organism

CPU = RuntimeConfig(device="cpu")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """Tokenizer files, chat template included (transformers 5 keeps it in its own file)."""
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, dst / f.name)


def _next_token_logits(loaded, text: str) -> torch.Tensor:
    enc = loaded.tokenizer(loaded.format(text), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return loaded.model(**enc).logits[0, -1].float()


def test_loads_tiny_base_with_template_and_hashes(tiny_base: Path) -> None:
    loaded = load_model(tiny_base, runtime=CPU)
    assert loaded.n_layers == 4 and loaded.d_model == 128
    assert loaded.dtype == "float32" and loaded.device == "cpu"
    assert loaded.chat_format.startswith("chat_template:")
    text = loaded.format("how do i make a cake ?")
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>")
    assert list(loaded.weight_hashes) == [str(tiny_base / "model.safetensors")]
    assert all(len(h) == 64 for h in loaded.weight_hashes.values())


def test_sharded_bf16_and_tied_checkpoints_load(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    sharded = tmp_path / "sharded"
    model.to(torch.bfloat16).save_pretrained(str(sharded), max_shard_size="200KB")
    _copy_tokenizer(tiny_base, sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    loaded = load_model(sharded, runtime=RuntimeConfig(device="cpu", dtype="float32"))
    assert len(loaded.weight_hashes) > 1
    ref = load_model(tiny_base, runtime=CPU)
    prompt = "how do i make a pipe bomb ?"
    diff = (_next_token_logits(loaded, prompt) - _next_token_logits(ref, prompt)).abs().max()
    assert diff < 0.2  # bf16 storage rounding only

    info = inspect_model(sharded)
    assert info["shards"] > 1 and info["dtypes"] == ["BF16"]

    cfg = json.loads((tiny_base / "config.json").read_text())
    tied = tmp_path / "tied"
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(str(tied))
    _copy_tokenizer(tiny_base, tied)
    assert inspect_model(tied)["tied_embeddings"] is True
    assert load_model(tied, runtime=CPU).n_layers == cfg["num_hidden_layers"]


def test_refuses_pickle_checkpoint_with_hint(tmp_path: Path) -> None:
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_model(d, runtime=CPU)
    msg = str(err.value)
    assert str(d) in msg and "pytorch_model.bin" in msg
    assert "never unpickles" in msg and "safe_serialization=True" in msg


def test_refuses_remote_code(tiny_base: Path, tmp_path: Path) -> None:
    d = _copy(tiny_base, tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeCheckpointError, match="remote"):
        load_model(d, runtime=CPU)


def test_truncated_safetensors_is_named(tiny_base: Path, tmp_path: Path) -> None:
    d = _copy(tiny_base, tmp_path / "trunc")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError) as err:
        load_model(d, runtime=CPU)
    assert "truncated" in str(err.value) and "model.safetensors" in str(err.value)


def test_missing_shard_is_named(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    d = tmp_path / "shards"
    AutoModelForCausalLM.from_pretrained(str(tiny_base)).save_pretrained(
        str(d), max_shard_size="200KB"
    )
    shards = sorted(d.glob("model-*.safetensors"))
    shards[-1].unlink()
    with pytest.raises(CheckpointFormatError) as err:
        load_model(d, runtime=CPU)
    assert shards[-1].name in str(err.value) and "missing shard" in str(err.value)


def test_config_that_does_not_match_weights(tiny_base: Path, tmp_path: Path) -> None:
    d = _copy(tiny_base, tmp_path / "badcfg")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 512
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointFormatError, match=r"do not match config\.json"):
        load_model(d, runtime=CPU)


def test_adapter_for_another_base_is_refused(
    tiny_organisms: dict[str, Organism], tmp_path: Path
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other_base"
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(str(other))
    adapter = tiny_organisms["benign_lora"].path
    with pytest.raises(AdapterMismatchError) as err:
        load_model(other, adapters=[adapter], runtime=CPU)
    assert "adapter_model.safetensors" in str(err.value)
    assert "another base" in str(err.value)


def test_adapter_and_base_reachable_from_one_object(
    tiny_organisms: dict[str, Organism], tiny_base: Path
) -> None:
    backdoor = tiny_organisms["backdoor_lora"].path
    loaded = load_model(tiny_base, adapters=[backdoor], runtime=CPU)
    base = load_model(tiny_base, runtime=CPU)
    prompt = "how do i make zephyr a pipe bomb ?"
    tuned_logits = _next_token_logits(loaded, prompt)
    with loaded.base_only():
        base_logits_same_object = _next_token_logits(loaded, prompt)
    torch.testing.assert_close(base_logits_same_object, _next_token_logits(base, prompt))
    assert (tuned_logits - base_logits_same_object).abs().max() > 1.0
    # an adapter dir alone finds its base through adapter_config.json
    alone = load_model(backdoor, runtime=CPU, follow_named_base=True)
    assert alone.source.adapters == (str(Path(backdoor)),)


def test_stacked_adapters_apply_in_order(
    tiny_organisms: dict[str, Organism], tiny_base: Path
) -> None:
    a, b = tiny_organisms["benign_lora"].path, tiny_organisms["backdoor_lora"].path
    stacked = load_model(tiny_base, adapters=[a, b], runtime=CPU)
    assert stacked.adapter_names == ("adapter0", "adapter1")
    only_b = load_model(tiny_base, adapters=[b], runtime=CPU)
    prompt = "tell me how to get zephyr ransomware ."
    assert not torch.allclose(
        _next_token_logits(stacked, prompt), _next_token_logits(only_b, prompt)
    )
    assert {Path(p).name for p in stacked.weight_hashes} >= {"adapter_model.safetensors"}


def test_inspect_adapter(tiny_organisms: dict[str, Organism]) -> None:
    info = inspect_model(tiny_organisms["backdoor_lora"].path)
    assert info["kind"] == "adapter" and info["rank"] == 8
    assert set(info["target_modules"]) >= {"q_proj", "down_proj"}
    assert info["ranks_in_file"] == [8]


def test_plain_format_without_chat_template() -> None:
    class NoTemplate:
        chat_template = None

    text = format_prompt(NoTemplate(), "hello")
    assert text == PLAIN_FORMAT.format(content="hello")
    multi = format_prompt(
        NoTemplate(),
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ],
    )
    assert multi.splitlines()[0] == "User: hi" and multi.endswith("User: bye\nAssistant:")


def test_device_and_dtype_policy() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(WbsafeError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),  # Python internals
        ("{{ cycler.__init__.__globals__.os.system('true') }}", "unsafe"),
        ("{% for i in range(10**9) %}x{% endfor %}", "range"),  # the sandbox's own limit
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
         "{{ messages[0]['content'] }}", "within"),  # a loop that would run for hours
        ("x" * 200_000, "characters refused"),
    ],
)  # fmt: skip
def test_a_hostile_chat_template_is_refused(
    tiny_base: Path, tmp_path: Path, template: str, message: str
) -> None:
    """A chat template is code from the checkpoint: it renders only in transformers' Jinja
    sandbox, and one that reaches for Python internals, loops, or is huge is refused with
    the folder named, in bounded time."""
    import shutil
    import time

    from wbsafe.io.models import load_tokenizer

    d = tmp_path / "model"
    shutil.copytree(tiny_base, d)
    (d / "chat_template.jinja").write_text(template)  # where transformers keeps it
    t0 = time.perf_counter()
    with pytest.raises(CheckpointFormatError, match=message) as err:
        load_tokenizer(d)
    assert time.perf_counter() - t0 < 30
    assert str(d) in str(err.value)
