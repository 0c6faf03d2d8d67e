"""The tensor-name table: layer index and module kind from a checkpoint tensor name.

A name such as ``model.layers.3.self_attn.q_proj.weight`` is first stripped of export
prefixes (:data:`PREFIXES`), then matched against :data:`MODULE_PATTERNS`; the layer index
comes from ``layers.N.`` / ``h.N.`` / ``blocks.N.`` / ``layer.N.``. The embedding
(``[vocab, d]``) and the unembedding (``lm_head``, ``[vocab, d]``) are the two vocabulary
matrices (:func:`vocab_matrix_kind`).
"""

from __future__ import annotations

import functools
import re

PREFIXES = ("base_model.model.", "model.", "transformer.", "gpt_neox.", "language_model.")
"""Name prefixes that differ between exports of the same model; stripped for matching
(``language_model.``: the text part of a multimodal checkpoint such as
Gemma3ForConditionalGeneration, ``model.language_model.layers.0...`` or the older
``language_model.model.layers.0...``, named as the text-only model names it)."""

VISION_PREFIXES = ("vision_tower.", "vision_model.", "multi_modal_projector.", "visual.")
"""Prefix-stripped names of a multimodal model's image side: never a decoder-layer module."""

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")

MODULE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(?:^|\.)(?:self_attn|attention|attn)\.(?:q_proj|query|wq)\.", "q"),
    (r"(?:^|\.)(?:self_attn|attention|attn)\.(?:k_proj|key|wk)\.", "k"),
    (r"(?:^|\.)(?:self_attn|attention|attn)\.(?:v_proj|value|wv)\.", "v"),
    (r"(?:^|\.)(?:attn\.c_attn|attention\.query_key_value|self_attn\.qkv_proj)\.", "qkv"),
    (r"(?:^|\.)(?:self_attn\.o_proj|attn\.c_proj|attention\.dense|attn\.out_proj)\.", "o"),
    (r"(?:^|\.)(?:self_attn|attn)\.(?:q_norm|k_norm)\.", "qk_norm"),
    (r"(?:^|\.)mlp\.gate_up_proj\.", "gate_up"),
    (r"(?:^|\.)mlp\.(?:gate_proj|w1)\.", "gate"),
    (r"(?:^|\.)mlp\.(?:up_proj|c_fc|dense_h_to_4h|w3|fc1)\.", "up"),
    (r"(?:^|\.)mlp\.(?:down_proj|c_proj|dense_4h_to_h|w2|fc2)\.", "down"),
    (r"(?:^|\.)(?:input_layernorm|ln_1|attention_norm)\.", "input_norm"),
    (r"(?:^|\.)(?:post_attention_layernorm|ln_2|ffn_norm)\.", "post_attn_norm"),
    (r"(?:^|\.)(?:pre_feedforward_layernorm|post_feedforward_layernorm)\.", "ffn_norm"),
    (r"^(?:norm|ln_f|final_layer_norm)\.", "final_norm"),
    (r"^(?:embed_tokens|wte|embed_in|tok_embeddings)\.", "embed"),
    (r"^wpe\.", "pos_embed"),
    (r"^(?:lm_head|embed_out|output)\.", "lm_head"),
)
"""(regex on the prefix-stripped name, module type): the names of every family in
:data:`wbsafe.arch.families.FAMILIES` (Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` included)."""

MODULE_ORDER = (
    "embed", "pos_embed", "q", "k", "v", "qkv", "qk_norm", "o", "gate_up", "gate", "up", "down",
    "input_norm", "post_attn_norm", "ffn_norm", "final_norm", "lm_head", "vision", "other",
)  # fmt: skip
"""Every module type :func:`parse_name` returns, in the order a forward pass meets them."""

_COMPILED = tuple((re.compile(p), m) for p, m in MODULE_PATTERNS)


RENAMES = (("embed_out.", "lm_head."),)
"""(stored, as transformers names it now): GPT-NeoX checkpoints store the unembedding as
``embed_out``; transformers 5 loads it into ``lm_head``."""


def canonical_name(name: str) -> str:
    """Strip the export prefixes (:data:`PREFIXES`, repeatedly: ``base_model.model.model.``)
    and apply :data:`RENAMES`."""
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p) :], True
    for old, new in RENAMES:
        if name.startswith(old):
            name = new + name[len(old) :]
    return name


@functools.lru_cache(maxsize=65536)
def parse_name(name: str) -> tuple[int | None, str]:
    """(layer index or None, module type) of a tensor name, from the pattern table."""
    canon = canonical_name(name)
    if canon.startswith(VISION_PREFIXES):
        return None, "vision"
    m = _LAYER_RE.search("." + canon)
    layer = int(m.group(1)) if m else None
    for rx, module in _COMPILED:
        if rx.search(canon):
            return layer, module
    return layer, "other"


def vocab_matrix_kind(name: str) -> str | None:
    """``"embed"`` or ``"lm_head"`` for the two ``[vocab, d]`` matrices, else None."""
    _, module = parse_name(name)
    return module if module in ("embed", "lm_head") else None
