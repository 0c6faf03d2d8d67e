"""Shape rules for ``config.json`` and ``adapter_config.json``: the keys wbsafe reads.

A config is untrusted: its sizes are used to build a model skeleton (a config claiming a
billion layers would build for hours), its LoRA rank divides the adapter's scale, its module
patterns are matched against tensor names. Each key wbsafe or transformers reads is checked
for type and range here, so a malformed config is a clear error naming the file, before any
of that happens. Keys wbsafe does not read are left to transformers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wbsafe.errors import AdapterMismatchError, CheckpointFormatError

MAX_STRING = 4096
_SIZES: dict[str, int] = {
    "num_hidden_layers": 1024, "hidden_size": 1 << 17, "intermediate_size": 1 << 20,
    "num_attention_heads": 4096, "num_key_value_heads": 4096, "head_dim": 1 << 14,
    "vocab_size": 1 << 23, "max_position_embeddings": 1 << 31, "n_layer": 1024,
    "n_embd": 1 << 17, "n_head": 4096, "n_positions": 1 << 31, "n_inner": 1 << 20,
}  # fmt: skip
"""Size keys and their largest accepted value (well above any released model's)."""
_STRINGS = ("model_type", "torch_dtype", "dtype", "hidden_act", "transformers_version")
_BOOLS = ("tie_word_embeddings", "use_cache")


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _short_str(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_STRING


def check_model_config(cfg: dict[str, Any], path: Path) -> None:
    """Refuse a ``config.json`` whose sizes, names or flags have the wrong type or range
    (``text_config``, a multimodal model's language part, is held to the same rules)."""

    def bad(what: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"malformed config.json: {what}", path)

    for where, part in (("", cfg), ("text_config.", cfg.get("text_config"))):
        if where and part is None:
            continue
        if not isinstance(part, dict):
            raise bad(f"{where or 'the config'} is not an object")
        for key, high in _SIZES.items():
            if part.get(key) is not None and not _int_in(part[key], 0, high):
                raise bad(f"{where}{key} is {str(part[key])[:40]}, not an integer in [0, {high}]")
        for key in _STRINGS:
            if part.get(key) is not None and not _short_str(part[key]):
                raise bad(f"{where}{key} is not a short string")
        for key in _BOOLS:
            if part.get(key) is not None and not isinstance(part[key], bool):
                raise bad(f"{where}{key} is not true or false")
    arch = cfg.get("architectures")
    if arch is not None and not (
        isinstance(arch, list) and arch and all(_short_str(a) for a in arch)
    ):
        raise bad("architectures is not a list of class names")


def _str_or_strs(value: Any) -> bool:
    """null, a module-name string (or regex), or a list of them."""
    if value is None or _short_str(value):
        return True
    return isinstance(value, list) and all(_short_str(v) for v in value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_adapter_config(cfg: dict[str, Any], path: Path) -> None:
    """Refuse an ``adapter_config.json`` whose LoRA settings are malformed: ``r`` a positive
    integer, ``lora_alpha`` a finite number, module lists strings, ``rank_pattern`` /
    ``alpha_pattern`` objects of such numbers, the base a string."""

    def bad(what: str) -> AdapterMismatchError:
        return AdapterMismatchError(f"malformed adapter_config.json: {what}", path)

    if "peft_type" in cfg and not _short_str(cfg["peft_type"]):
        raise bad("peft_type is not a string")
    if "r" in cfg and not _int_in(cfg["r"], 1, 1 << 16):
        raise bad(f"r is {str(cfg['r'])[:40]}, not a rank in [1, 65536]")
    if "lora_alpha" in cfg and not _finite(cfg["lora_alpha"]):
        raise bad("lora_alpha is not a finite number")
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        if not _str_or_strs(cfg.get(key)):
            raise bad(f"{key} is not a module name or a list of them")
    for key, ok in (("rank_pattern", lambda v: _int_in(v, 1, 1 << 16)), ("alpha_pattern", _finite)):
        pattern = cfg.get(key)
        if pattern is None:
            continue
        if not isinstance(pattern, dict) or not all(
            len(k) <= MAX_STRING and ok(v) for k, v in pattern.items()
        ):
            raise bad(f"{key} is not an object of module patterns and numbers")
    base = cfg.get("base_model_name_or_path")
    if base is not None and not _short_str(base):
        raise bad("base_model_name_or_path is not a string")
    for key in ("use_dora", "use_rslora", "fan_in_fan_out", "inference_mode"):
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise bad(f"{key} is not true or false")
    layers = cfg.get("layers_to_transform")
    if layers is not None and not (
        _int_in(layers, 0, 1 << 16)
        or (isinstance(layers, list) and all(_int_in(x, 0, 1 << 16) for x in layers))
    ):
        raise bad("layers_to_transform is not a layer index or a list of them")
