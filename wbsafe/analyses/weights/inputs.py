"""What a diff reads besides the weights: ``config.json`` and the token strings.

``config.json`` gives the architecture check (the same model type, hidden size and layer
count on both sides) and ``tie_word_embeddings``; ``tokenizer.json`` gives the strings of
the vocabulary rows that the ``[vocab, d]`` row reports name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbsafe.errors import CheckpointFormatError, WbsafeError
from wbsafe.io.serialize import read_json
from wbsafe.io.token_strings import TokenStrings, token_strings_from_file


def load_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory (or of a weight file's directory); ``{}`` when
    there is none or it is not a JSON object. Unlike :func:`wbsafe.io.models.read_config`,
    a missing file is no error and ``auto_map`` is not checked (no model code runs here)."""
    p = Path(directory)
    cfg = p / "config.json" if p.is_dir() else p.parent / "config.json"
    if not cfg.is_file():
        return {}
    data = read_json(cfg, CheckpointFormatError)
    return data if isinstance(data, dict) else {}


_ARCH_KEYS = (
    ("model_type",),
    ("hidden_size", "n_embd", "d_model"),
    ("num_hidden_layers", "n_layer", "num_layers"),
)


def check_architecture(base_dir: Path, tuned_dir: Path) -> None:
    """Raise WbsafeError when the two configs name different architectures."""
    cb, ct = load_config(base_dir), load_config(tuned_dir)
    for keys in _ARCH_KEYS:
        vb = next((cb[k] for k in keys if k in cb), None)
        vt = next((ct[k] for k in keys if k in ct), None)
        if vb is not None and vt is not None and vb != vt:
            raise WbsafeError(
                f"different architecture from base {base_dir}: {keys[0]} {vt!r} vs {vb!r} "
                "(a weight diff needs a fine-tune of the same base model)",
                tuned_dir / "config.json" if tuned_dir.is_dir() else tuned_dir,
            )


def tokens_fn(
    token_strings: TokenStrings | None, tokenizer_dirs: Sequence[Path | None]
) -> TokenStrings | None:
    """``token_strings`` if given, else those of the first ``tokenizer.json`` found."""
    if token_strings is not None:
        return token_strings
    for d in tokenizer_dirs:
        if d is None:
            continue
        path = (d if d.is_dir() else d.parent) / "tokenizer.json"
        if path.is_file():
            return token_strings_from_file(path)
    return None
