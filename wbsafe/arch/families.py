"""The family table: how each supported model family lays out its layers, weights and chat.

One :class:`Family` per family, detected from ``config.json`` (``architectures`` first, then
``model_type``; :func:`family_of_config`) or from a loaded transformers model
(:func:`family_of_model`). Every analysis that needs to place something (decoder layers,
the matrices that read and write the residual stream, an embedding scale, the norms after
a block's output, an end-of-turn token, LoRA targets) reads it here instead of keeping its
own pattern list. An architecture that is not in the table raises
:class:`UnknownFamilyError` naming what could not be placed; adding a family is one
:data:`FAMILIES` entry plus its test in ``tests/test_families.py``.

Module paths below are relative to one decoder layer (``self_attn.o_proj``); tensor names
are matched on :func:`wbsafe.arch.names.canonical_name` forms (``layers.3.self_attn.o_proj.weight``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wbsafe.errors import WbsafeError

LINEAR = "linear"
"""Storage layout of ``torch.nn.Linear``: weight ``[out, in]``."""
CONV1D = "conv1d"
"""Storage layout of GPT-2's ``Conv1D``: weight ``[in, out]`` (``y = x W + b``)."""

PRE_NORM = "pre"
"""Norm on each block's input only (Llama, GPT-2): a block's output is added as it is."""
SANDWICH_NORM = "sandwich"
"""Norms on a block's input and on its output before the add (Gemma 2 / 3)."""
POST_NORM = "post"
"""Norm on a block's output before the add only (OLMo 2)."""


class UnknownFamilyError(WbsafeError):
    """The architecture is not in the family table; the message says what is missing."""


@dataclass(frozen=True)
class Family:
    """How one model family is laid out (see the module docstring for the name forms)."""

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    layers_path: str
    """Attribute path of the decoder ``ModuleList`` in the transformers causal-LM module."""
    attention: str
    mlp: str
    readers: tuple[str, ...]
    """Matrices reading the residual stream (through the block's input norm)."""
    writers: tuple[str, ...]
    """Matrices whose output is added to the residual stream (after a post-norm if any)."""
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """A fused matrix -> the parts it stacks along its output rows, in order."""
    storage: str = LINEAR
    embed: str = "embed_tokens"
    pos_embed: str | None = None
    embed_scale: str | None = None
    """``"sqrt_d_model"``: the token embedding is multiplied by sqrt(hidden_size) (Gemma)."""
    norms: str = PRE_NORM
    post_norms: tuple[str, ...] = ()
    """Layer modules that norm the attention and the MLP output before the add, in order."""
    norm_offset: float = 0.0
    """RMSNorm gain is ``offset + weight`` (Gemma: 1)."""
    text_config: str | None = None
    """Key of the language model's config inside a multimodal config.json."""
    text_prefix: str = ""
    """Raw tensor-name prefix of the language model in a multimodal checkpoint
    (:func:`~wbsafe.arch.names.canonical_name` drops it, so canonical names match the
    text-only model's)."""
    system_role: bool = True
    """False: the chat template has no system turn; a system message is folded into the
    first user turn."""
    end_of_turn: tuple[str, ...] = ()
    """Token strings that end an assistant turn (besides the tokenizer's eos)."""
    chat_template: str | None = None
    """The family's chat template (Jinja), given to a checkpoint whose tokenizer has none
    (a pretrained base such as Gemma 3 270M)."""
    lora_targets: tuple[str, ...] = ()
    """Layer-relative modules a default LoRA adapter targets."""
    parallel_residual: bool = False

    @property
    def layer_prefix(self) -> str:
        """Canonical-name prefix of layer ``N`` tensors, with ``{}`` for N: ``layers.{}.``."""
        leaf = self.layers_path.rsplit(".", 1)[-1]
        return f"{leaf}.{{}}."

    def lora_target_regex(self) -> str:
        """A peft ``target_modules`` regex (full match) for :attr:`lora_targets` inside the
        decoder layers only (a multimodal model's vision tower is never matched)."""
        path = re.escape(self.layers_path)
        mods = "|".join(re.escape(t) for t in self.lora_targets)
        return rf"(?:.*\.)?{path}\.\d+\.(?:{mods})"


_LLAMA_READ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "mlp.gate_proj", "mlp.up_proj")  # fmt: skip
_LLAMA_WRITE = ("self_attn.o_proj", "mlp.down_proj")
_LLAMA_LORA = tuple(m for m in _LLAMA_READ + _LLAMA_WRITE)
_GEMMA_POST = ("post_attention_layernorm", "post_feedforward_layernorm")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma 2 / 3's turn format (``<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n``);
no system turn (wbsafe folds a system message into the first user turn)."""


def _llama_like(name: str, model_types: tuple[str, ...], archs: tuple[str, ...],
                end_of_turn: tuple[str, ...], **kw: Any) -> Family:  # fmt: skip
    return Family(
        name=name, model_types=model_types, architectures=archs, layers_path="model.layers",
        attention="self_attn", mlp="mlp", readers=_LLAMA_READ, writers=_LLAMA_WRITE,
        end_of_turn=end_of_turn, lora_targets=_LLAMA_LORA, **kw,
    )  # fmt: skip


FAMILIES: tuple[Family, ...] = (
    _llama_like(
        "llama", ("llama",), ("LlamaForCausalLM",), ("<|eot_id|>", "<|end_of_text|>", "</s>")
    ),
    _llama_like("mistral", ("mistral",), ("MistralForCausalLM",), ("</s>",)),
    _llama_like("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), ("<|im_end|>", "<|endoftext|>")),
    _llama_like("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), ("<|im_end|>", "<|endoftext|>")),
    _llama_like(
        "gemma2",
        ("gemma2",),
        ("Gemma2ForCausalLM",),
        ("<end_of_turn>", "<eos>"),
        embed_scale="sqrt_d_model",
        norms=SANDWICH_NORM,
        post_norms=_GEMMA_POST,
        norm_offset=1.0,
        system_role=False,
        chat_template=GEMMA_TEMPLATE,
    ),
    _llama_like(
        "gemma3",
        ("gemma3_text",),
        ("Gemma3ForCausalLM",),
        ("<end_of_turn>", "<eos>"),
        embed_scale="sqrt_d_model",
        norms=SANDWICH_NORM,
        post_norms=_GEMMA_POST,
        norm_offset=1.0,
        system_role=False,
        chat_template=GEMMA_TEMPLATE,
    ),
    Family(
        name="gemma3_multimodal",
        model_types=("gemma3",),
        architectures=("Gemma3ForConditionalGeneration",),
        layers_path="model.language_model.layers",
        attention="self_attn",
        mlp="mlp",
        readers=_LLAMA_READ,
        writers=_LLAMA_WRITE,
        embed_scale="sqrt_d_model",
        norms=SANDWICH_NORM,
        post_norms=_GEMMA_POST,
        norm_offset=1.0,
        text_config="text_config",
        text_prefix="model.language_model.",
        system_role=False,
        end_of_turn=("<end_of_turn>", "<eos>"),
        chat_template=GEMMA_TEMPLATE,
        lora_targets=_LLAMA_LORA,
    ),
    Family(
        name="phi3",
        model_types=("phi3",),
        architectures=("Phi3ForCausalLM",),
        layers_path="model.layers",
        attention="self_attn",
        mlp="mlp",
        readers=("self_attn.qkv_proj", "mlp.gate_up_proj"),
        writers=("self_attn.o_proj", "mlp.down_proj"),
        fused={"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")},
        end_of_turn=("<|end|>", "<|endoftext|>"),
        lora_targets=(
            "self_attn.qkv_proj",
            "self_attn.o_proj",
            "mlp.gate_up_proj",
            "mlp.down_proj",
        ),
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        architectures=("GPT2LMHeadModel",),
        layers_path="transformer.h",
        attention="attn",
        mlp="mlp",
        readers=("attn.c_attn", "mlp.c_fc"),
        writers=("attn.c_proj", "mlp.c_proj"),
        fused={"attn.c_attn": ("q", "k", "v")},
        storage=CONV1D,
        embed="wte",
        pos_embed="wpe",
        end_of_turn=("<|endoftext|>",),
        lora_targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    ),
    Family(
        name="gpt_neox",
        model_types=("gpt_neox",),
        architectures=("GPTNeoXForCausalLM",),
        layers_path="gpt_neox.layers",
        attention="attention",
        mlp="mlp",
        readers=("attention.query_key_value", "mlp.dense_h_to_4h"),
        writers=("attention.dense", "mlp.dense_4h_to_h"),
        fused={"attention.query_key_value": ("qkv_by_head",)},
        embed="embed_in",
        end_of_turn=("<|endoftext|>",),
        parallel_residual=True,
        lora_targets=(
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        ),
    ),
    _llama_like(
        "olmo2",
        ("olmo2",),
        ("Olmo2ForCausalLM",),
        ("<|endoftext|>",),
        norms=POST_NORM,
        post_norms=_GEMMA_POST,
    ),
)
"""Every supported family. Llama covers Llama 2 / 3 and Llama-architecture models
(SmolLM2, the tiny tier); Qwen2 covers Qwen2.5."""

_BY_ARCH = {a: f for f in FAMILIES for a in f.architectures}
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}

PLACES = ("decoder layers", "residual readers and writers", "weight storage layout",
          "embedding scale", "norm placement", "end-of-turn tokens", "LoRA targets")  # fmt: skip
"""What the table places for a family; an unknown one can place none of it."""


def _unknown(what: str) -> UnknownFamilyError:
    known = ", ".join(sorted(_BY_TYPE))
    return UnknownFamilyError(
        f"{what} is not in wbsafe's family table (known model types: {known}); wbsafe cannot "
        f"place its {', '.join(PLACES)}. Add a Family entry to wbsafe/arch/families.py "
        "and its test."
    )


def try_family(config: Mapping[str, Any]) -> Family | None:
    """The family of a ``config.json`` mapping, or None when it is not in the table."""
    for arch in config.get("architectures") or ():
        if arch in _BY_ARCH:
            return _BY_ARCH[arch]
    mt = config.get("model_type")
    if mt == "gemma3" and config.get("text_config") is not None:
        return _BY_ARCH["Gemma3ForConditionalGeneration"]
    return _BY_TYPE.get(str(mt)) if mt is not None else None


def family_of_config(config: Mapping[str, Any]) -> Family:
    """The family of a ``config.json`` mapping; :class:`UnknownFamilyError` when unknown."""
    fam = try_family(config)
    if fam is None:
        archs = list(config.get("architectures") or [])
        raise _unknown(f"model_type {config.get('model_type')!r} (architectures {archs})")
    return fam


def try_family_of_model(model: Any) -> Family | None:
    """The family of a loaded transformers model (plain or PEFT-wrapped), or None."""
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    arch = type(inner).__name__
    mt = getattr(getattr(inner, "config", None), "model_type", None)
    return _BY_ARCH.get(arch) or try_family({"architectures": [arch], "model_type": mt})


def family_of_model(model: Any) -> Family:
    """The family of a loaded transformers model; :class:`UnknownFamilyError` when unknown."""
    fam = try_family_of_model(model)
    if fam is None:
        get_base = getattr(model, "get_base_model", None)
        inner = get_base() if callable(get_base) else model
        mt = getattr(getattr(inner, "config", None), "model_type", None)
        raise _unknown(f"{type(inner).__name__} (model_type {mt!r})")
    return fam


def text_config(family: Family, config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of ``config.json`` (the whole config unless multimodal)."""
    if family.text_config is None:
        return config
    sub = config.get(family.text_config)
    if not isinstance(sub, Mapping):
        raise WbsafeError(f"config.json of a {family.name} model has no {family.text_config}")
    return sub


def hidden_size(family: Family, config: Mapping[str, Any]) -> int:
    cfg = text_config(family, config)
    d = cfg.get("hidden_size", cfg.get("n_embd"))
    if not isinstance(d, int):
        raise WbsafeError(f"config.json of a {family.name} model has no hidden_size")
    return d


def embedding_scale(family: Family, config: Mapping[str, Any]) -> float:
    """The factor the model multiplies its token embedding rows by (1.0 for most)."""
    if family.embed_scale == "sqrt_d_model":
        return math.sqrt(hidden_size(family, config))
    return 1.0


def fused_split(family: Family, module: str, config: Mapping[str, Any]) -> dict[str, slice]:
    """Row ranges of each part of a fused matrix in the ``[out, in]`` view
    (``{"q": slice, "k": ..., "v": ...}`` or ``{"gate": ..., "up": ...}``).

    GPT-NeoX interleaves q/k/v per head, so its parts are not contiguous: ``{}``.
    """
    parts = family.fused.get(module)
    if not parts or parts == ("qkv_by_head",):
        return {}
    cfg = text_config(family, config)
    d = hidden_size(family, config)
    if parts == ("gate", "up"):
        ff = int(cfg.get("intermediate_size") or 4 * d)
        return {"gate": slice(0, ff), "up": slice(ff, 2 * ff)}
    heads = int(cfg.get("num_attention_heads", cfg.get("n_head", 1)))
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or d // heads)
    q, k = heads * hd, kv * hd
    return {"q": slice(0, q), "k": slice(q, q + k), "v": slice(q + k, q + 2 * k)}


def layer_module(family: Family, canonical: str) -> tuple[int, str] | None:
    """``(layer, layer-relative module)`` of a canonical tensor or module name inside the
    decoder layers (``layers.3.self_attn.o_proj.weight`` -> ``(3, "self_attn.o_proj")``)."""
    pat = re.escape(family.layer_prefix).replace(re.escape("{}"), r"(\d+)")
    m = re.match(pat + r"(.+?)(?:\.(?:weight|bias))?$", canonical)
    return (int(m.group(1)), m.group(2)) if m else None


def storage_of(family: Family, canonical: str) -> str:
    """Storage layout of one tensor: Conv1D families store their layer matrices ``[in, out]``;
    embeddings and the LM head are ``nn.Embedding`` / ``nn.Linear`` everywhere."""
    if family.storage == CONV1D and layer_module(family, canonical) is not None:
        return CONV1D
    return LINEAR


def writer_kind(family: Family, canonical: str) -> str | None:
    """``"embed"``, ``"pos_embed"`` or the layer-relative writer module of a canonical tensor
    name, or None when the tensor does not write the residual stream."""
    base = canonical
    if base in (f"{family.embed}.weight", family.embed):
        return "embed"
    if family.pos_embed and base in (f"{family.pos_embed}.weight", family.pos_embed):
        return "pos_embed"
    lm = layer_module(family, canonical)
    return lm[1] if lm is not None and lm[1] in family.writers else None


def post_norm_of(family: Family, writer: str) -> str | None:
    """The layer module that norms ``writer``'s output before the add, if the family has one."""
    if not family.post_norms:
        return None
    attn_norm, mlp_norm = family.post_norms
    return attn_norm if writer.startswith(family.attention + ".") else mlp_norm


def end_of_turn_ids(family: Family | None, tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the family's end-of-turn tokens the tokenizer
    has, plus its eos."""
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for text in family.end_of_turn if family is not None else ():
        if text in vocab:
            ids.add(int(vocab[text]))
    return sorted(ids)


def fold_system_turn(family: Family | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """For a family without a system role, the system message becomes the head of the
    first user turn (what the family's own templates do where they accept one at all)."""
    if family is None or family.system_role or not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def model_embedding_scale(model: Any) -> float:
    """:func:`embedding_scale` of a loaded transformers model: what its embedding module
    multiplies the rows by, so that ``inputs_embeds = scale * E[ids]`` equals ``input_ids``."""
    fam = family_of_model(model)
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    return embedding_scale(fam, inner.config.to_dict())
