"""Tokenizer files checked before transformers reads them: size, links, shape.

transformers and the ``tokenizers`` library parse these files with their own code, whose
errors on a hostile file range from a clear message to a bare ``Exception`` or a very long
allocation. Here each file a tokenizer loads from a model directory is held to a size limit
and to the directory (no links leaving it, see :mod:`wbsafe.io.containment`), and the JSON
files to the shape transformers expects (objects where objects go, strings where strings
go, a bounded vocabulary), so a malformed one is a CheckpointFormatError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wbsafe.errors import CheckpointFormatError, UnsafeCheckpointError
from wbsafe.io.containment import check_inside
from wbsafe.io.serialize import read_bytes_bounded, read_json_object

BIG_FILE_BYTES = 64 * 1024 * 1024
"""tokenizer.json, vocabularies and sentencepiece models (the largest real ones: ~35 MB)."""
SMALL_FILE_BYTES = 8 * 1024 * 1024
"""tokenizer_config.json, special_tokens_map.json, added_tokens.json, chat templates."""
MAX_VOCAB = 4_000_000
MAX_TOKEN_CHARS = 65_536
TOKENIZER_FILES: dict[str, int] = {
    "tokenizer.json": BIG_FILE_BYTES, "vocab.json": BIG_FILE_BYTES,
    "merges.txt": BIG_FILE_BYTES, "tokenizer.model": BIG_FILE_BYTES,
    "vocab.txt": BIG_FILE_BYTES, "spiece.model": BIG_FILE_BYTES,
    "tokenizer_config.json": SMALL_FILE_BYTES, "special_tokens_map.json": SMALL_FILE_BYTES,
    "added_tokens.json": SMALL_FILE_BYTES, "chat_template.jinja": SMALL_FILE_BYTES,
    "chat_template.json": SMALL_FILE_BYTES,
}  # fmt: skip
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                 "mask_token")  # fmt: skip


def check_tokenizer_files(model_dir: str | Path) -> list[Path]:
    """Check every tokenizer file present in ``model_dir``; returns the files checked.

    Raises CheckpointFormatError naming the file (too large, not UTF-8 or JSON, the wrong
    shape), UnsafeCheckpointError for a link leaving the directory or a tokenizer that asks
    for remote code (``auto_map``).
    """
    model_dir = Path(model_dir)
    found: list[Path] = []
    for name, limit in TOKENIZER_FILES.items():
        path = model_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        check_inside(path, model_dir, f"tokenizer file {name}")
        if name.endswith(".json"):
            data = read_json_object(path, CheckpointFormatError, max_bytes=limit)
            _SHAPES.get(name, _any_object)(data, path)
        else:
            raw = read_bytes_bounded(path, limit, CheckpointFormatError)
            if name in ("merges.txt", "vocab.txt", "chat_template.jinja"):
                _utf8(raw, path)
        found.append(path)
    return found


def _bad(path: Path, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"malformed {path.name}: {what}", path)


def _utf8(raw: bytes, path: Path) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(path, "not UTF-8 text") from exc


def _any_object(data: dict[str, Any], path: Path) -> None:
    """Files with no further shape rules (added_tokens.json, chat_template.json) beyond the
    ones that matter to wbsafe: token strings bounded."""
    if path.name == "added_tokens.json":
        for token, token_id in list(data.items())[:MAX_VOCAB]:
            if len(token) > MAX_TOKEN_CHARS or type(token_id) is not int or token_id < 0:
                raise _bad(path, f"entry {token[:40]!r} is not a token and an id >= 0")
    if path.name == "chat_template.json" and not isinstance(data.get("chat_template"), str):
        raise _bad(path, "chat_template is not a string")


def _special(value: Any, key: str, path: Path) -> None:
    """A special token: null, a string, or an AddedToken-like object with a string content."""
    if value is None:
        return
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, str) or len(content) > MAX_TOKEN_CHARS:
        raise _bad(path, f"{key} is not a token string")


def _tokenizer_config(data: dict[str, Any], path: Path) -> None:
    if "auto_map" in data:
        raise UnsafeCheckpointError(
            "tokenizer_config.json asks for custom (remote) code via auto_map; wbsafe never "
            "runs a model's own code",
            path,
        )
    for key in ("tokenizer_class", "backend"):
        if key in data and not (isinstance(data[key], str) and len(data[key]) <= 200):
            raise _bad(path, f"{key} is not a short string")
    for key in _SPECIAL_KEYS:
        _special(data.get(key), key, path)
    limit = data.get("model_max_length")
    if limit is not None and not (isinstance(limit, int | float) and not isinstance(limit, bool)):
        raise _bad(path, "model_max_length is not a number")
    template = data.get("chat_template")
    if template is not None and not isinstance(template, str):
        ok = isinstance(template, list) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str)
            and isinstance(t.get("template"), str) for t in template
        )  # fmt: skip
        if not ok:
            raise _bad(path, "chat_template is neither a string nor a list of named templates")
    decoder = data.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict) or len(decoder) > MAX_VOCAB:
            raise _bad(path, "added_tokens_decoder is not a mapping of token ids")
        for key, tok in decoder.items():
            if not key.isdigit() or not isinstance(tok, dict):
                raise _bad(path, f"added_tokens_decoder entry {key[:40]!r} is malformed")
            _special(tok, f"added_tokens_decoder[{key[:20]}]", path)
    extra = data.get("extra_special_tokens", data.get("additional_special_tokens"))
    if extra is not None:
        items = extra.values() if isinstance(extra, dict) else extra
        if not isinstance(items, list | type({}.values())):
            raise _bad(path, "extra special tokens are not a list")
        for tok in items:
            _special(tok, "an extra special token", path)


def _tokenizer_json(data: dict[str, Any], path: Path) -> None:
    model = data.get("model")
    if not isinstance(model, dict):
        raise _bad(path, "no 'model' object")
    if "type" in model and not isinstance(model["type"], str):
        raise _bad(path, "model.type is not a string")
    vocab = model.get("vocab")
    if vocab is not None:
        if not isinstance(vocab, dict | list) or len(vocab) > MAX_VOCAB:
            raise _bad(path, f"model.vocab is not a vocabulary of at most {MAX_VOCAB} tokens")
        if isinstance(vocab, dict) and not all(
            len(tok) <= MAX_TOKEN_CHARS and type(i) is int and i >= 0 for tok, i in vocab.items()
        ):
            raise _bad(path, "model.vocab maps a token to something other than an id >= 0")
    merges = model.get("merges")
    if merges is not None and (not isinstance(merges, list) or len(merges) > MAX_VOCAB):
        raise _bad(path, "model.merges is not a list of merges")
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation",
                "padding"):  # fmt: skip
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _bad(path, f"{key} is not an object or null")
    added = data.get("added_tokens")
    if added is not None:
        if not isinstance(added, list) or len(added) > MAX_VOCAB:
            raise _bad(path, "added_tokens is not a list")
        for tok in added:
            ok = isinstance(tok, dict) and type(tok.get("id")) is int and tok["id"] >= 0
            if not ok:
                raise _bad(path, "an added token has no id >= 0")
            _special(tok, f"added token {tok['id']}", path)


def _special_tokens_map(data: dict[str, Any], path: Path) -> None:
    for key, value in data.items():
        if isinstance(value, list):
            for tok in value:
                _special(tok, key, path)
        else:
            _special(value, key, path)


_SHAPES = {
    "tokenizer_config.json": _tokenizer_config,
    "tokenizer.json": _tokenizer_json,
    "special_tokens_map.json": _special_tokens_map,
}
