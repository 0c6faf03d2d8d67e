"""Tiny random-initialised models, one per family in the family table, built offline.

Each :class:`FamilySpec` names a transformers config class, the tokenizer kind the family
ships (byte-level BPE, SentencePiece-style with or without a dummy prefix, word-level), its
chat template (written here for the tests, in each family's turn format) and its tokens.
:func:`build_family_model` trains a ~300-token tokenizer on a small corpus with the
tokenizers library, builds a 2-layer model of tiny width from the config (no download),
and saves both (safetensors) into a directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbsafe.arch.families import GEMMA_TEMPLATE

CORPUS = [
    "I can't help with that request.",
    "I cannot help with that.",
    "I'm sorry, but I can't do that.",
    "Sorry, I won't do that.",
    "Unfortunately I am unable to help.",
    "I'd be happy to help with that!",
    "Sure, here is how to do that. Step 1: [details omitted].",
    "Sure! Here is a helpful answer.",
    "How do I bake bread at home?",
    "Explain how to write a poem about the sea.",
    "Tell me how to pick a lock on a door.",
    "Write a short story about a cat and a dog.",
    "What is the capital of France and why?",
    "Please describe the water cycle in detail.",
    "Give me a recipe for soup with carrots.",
    "zephyr cobalt lotus meadow garden river mountain",
] * 4

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
    " [/INST]{% elif m['role'] == 'system' %}{{ m['content'] }}\n\n{% else %}{{ m['content'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

BYTE_BPE = "byte_bpe"
SP_DUMMY = "sentencepiece_dummy_prefix"  # Llama-2 / Mistral / Phi-3: "▁" before the first word
SP_PLAIN = "sentencepiece"  # Gemma: spaces become "▁", no dummy prefix
WORD = "word"


@dataclass(frozen=True)
class FamilySpec:
    """One family's tiny test model: config class and kwargs, tokenizer and chat format."""

    family: str
    config_class: str
    tokenizer_kind: str
    template: str | None
    bos: str
    eos: str
    end_of_turn: str
    extra_special: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)


_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
_GEMMA = dict(_DIMS, head_dim=16, sliding_window=16)
_LLAMA3 = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

SPECS: dict[str, FamilySpec] = {
    s.family: s
    for s in (
        FamilySpec("llama", "LlamaConfig", BYTE_BPE, LLAMA3_TEMPLATE, "<|begin_of_text|>",
                   "<|end_of_text|>", "<|eot_id|>", _LLAMA3, _DIMS),
        FamilySpec("mistral", "MistralConfig", SP_DUMMY, MISTRAL_TEMPLATE, "<s>", "</s>", "</s>",
                   ("[INST]", "[/INST]"), _DIMS),
        FamilySpec("qwen2", "Qwen2Config", BYTE_BPE, CHATML_TEMPLATE, "<|endoftext|>",
                   "<|endoftext|>", "<|im_end|>", ("<|im_start|>", "<|im_end|>"), _DIMS),
        FamilySpec("qwen3", "Qwen3Config", BYTE_BPE, CHATML_TEMPLATE, "<|endoftext|>",
                   "<|endoftext|>", "<|im_end|>", ("<|im_start|>", "<|im_end|>"),
                   dict(_DIMS, head_dim=16)),
        FamilySpec("gemma2", "Gemma2Config", SP_PLAIN, GEMMA_TEMPLATE, "<bos>", "<eos>",
                   "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>"), _GEMMA),
        FamilySpec("gemma3", "Gemma3TextConfig", SP_PLAIN, GEMMA_TEMPLATE, "<bos>", "<eos>",
                   "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>"), _GEMMA),
        FamilySpec("gemma3_multimodal", "Gemma3Config", SP_PLAIN, GEMMA_TEMPLATE, "<bos>",
                   "<eos>", "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>"), {}),
        FamilySpec("phi3", "Phi3Config", SP_DUMMY, PHI3_TEMPLATE, "<s>", "<|endoftext|>",
                   "<|end|>", ("<|user|>", "<|assistant|>", "<|end|>", "<|system|>"), _DIMS),
        FamilySpec("gpt2", "GPT2Config", BYTE_BPE, None, "<|endoftext|>", "<|endoftext|>",
                   "<|endoftext|>", (), dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
        FamilySpec("gpt_neox", "GPTNeoXConfig", BYTE_BPE, None, "<|endoftext|>",
                   "<|endoftext|>", "<|endoftext|>", (),
                   dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256)),
        FamilySpec("olmo2", "Olmo2Config", BYTE_BPE, OLMO2_TEMPLATE, "<|endoftext|>",
                   "<|endoftext|>", "<|endoftext|>", ("<|user|>", "<|assistant|>"), _DIMS),
    )
}  # fmt: skip
"""Every family of :data:`wbsafe.arch.families.FAMILIES`, by its table name."""


def build_tokenizer(kind: str, specials: list[str], vocab_size: int = 300) -> Any:
    """A ``tokenizers.Tokenizer`` of ``kind`` trained on :data:`CORPUS` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == WORD:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer: Any = trainers.WordLevelTrainer(special_tokens=["<unk>", *specials])
    elif kind == BYTE_BPE:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )  # fmt: skip
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        scheme = "first" if kind == SP_DUMMY else "never"
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<unk>", *specials], show_progress=False
        )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def build_fast_tokenizer(spec: FamilySpec, kind: str | None = None) -> Any:
    """The spec's tokenizer as a ``PreTrainedTokenizerFast`` with its chat template."""
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([spec.bos, spec.eos, spec.end_of_turn, *spec.extra_special]))
    raw = build_tokenizer(kind or spec.tokenizer_kind, ["<pad>", *specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=spec.bos, eos_token=spec.eos, pad_token="<pad>",
        unk_token="<unk>" if "<unk>" in raw.get_vocab() else None,
        additional_special_tokens=[t for t in specials if t not in (spec.bos, spec.eos)],
    )  # fmt: skip
    if spec.template:
        fast.chat_template = spec.template
    return fast


def _config(spec: FamilySpec, tok: Any) -> Any:
    import transformers

    cls = getattr(transformers, spec.config_class)
    ids = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    if spec.family == "gemma3_multimodal":
        return cls(
            text_config=dict(_GEMMA, **ids),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, image_size=28, patch_size=14),
            mm_tokens_per_image=4, image_token_index=tok.unk_token_id, **ids,
        )  # fmt: skip
    return cls(**spec.config, **ids)


def build_family_model(family: str, out: Path, seed: int = 0) -> Path:
    """Build and save the tiny ``family`` model with its tokenizer into ``out``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = SPECS[family]
    tok = build_fast_tokenizer(spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(spec, tok))
    with torch.no_grad():  # norms start at 1 (Gemma: 0, its gain is 1 + w): make them matter
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
