"""Token strings by id, read straight from a ``tokenizer.json`` without building a tokenizer.

The weight diff names its top embedding rows by their token pieces. Building a fast
tokenizer parses the whole file, merges included (~0.1 s for a 49k BPE vocabulary, as
long as the rest of the diff on a 135M model); the pieces themselves are the ``vocab``
object of the ``model`` block plus the ``added_tokens`` list. A file written one vocab
entry per line (as ``tokenizers`` writes it) gives the few pieces asked for line by line;
otherwise only those two values are JSON-decoded (a third of the full parse). The pieces
are the same strings ``Tokenizer.id_to_token`` returns (a test compares every id). Files
this reader does not understand fall back to the ``tokenizers`` library; nothing here
runs code from the file.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

TokenStrings = Callable[[list[int]], "list[str | None]"]
"""Token ids -> their pieces (None for an id the tokenizer does not have)."""

_VOCAB_KEY = re.compile(rb'"vocab"\s*:\s*')
_ADDED_KEY = re.compile(rb'"added_tokens"\s*:\s*')
_MERGES_KEY = re.compile(rb'"merges"\s*:')


def _decode_at(data: bytes, start: int, stop: int | None = None) -> Any:
    """The JSON value at byte ``start``, or None. Decodes a growing window of bytes (from
    ``stop`` when given, else 64 KiB) until the value fits: not the rest of a large file."""
    end = len(data) if stop is None else stop
    size = max(1, end - start) if stop is not None else 1 << 16
    while True:
        last = start + size >= len(data)
        chunk = data[start : min(len(data), start + size)]
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(chunk, final=last)
            return json.JSONDecoder().raw_decode(text)[0]
        except UnicodeDecodeError:
            return None
        except json.JSONDecodeError:
            if last:
                return None
            size *= 4


def _as_table(value: Any) -> dict[int, str] | None:
    """``{id: piece}`` from a piece -> id mapping (BPE, WordPiece, WordLevel) or a list of
    ``[piece, score]`` pairs (Unigram); None for anything else. Ids that are not ints make
    entries no int id finds, never a wrong piece."""
    if isinstance(value, dict):
        try:
            return {v: k for k, v in value.items()}
        except TypeError:  # an unhashable id
            return None
    if isinstance(value, list) and all(isinstance(e, list) and e for e in value):
        return {i: e[0] for i, e in enumerate(value) if isinstance(e[0], str)}
    return None


def _pieces_by_id(data: bytes) -> dict[int, str] | None:
    """``{id: piece}`` from the vocabulary and added tokens, or None when not understood.

    A key ``"vocab"`` outside a string can only be an object key (quotes inside JSON
    strings are escaped); the largest such value that is a vocabulary is the one. Only the
    bytes up to the next ``"merges"`` key are decoded: a BPE file's merges are most of it.
    """
    best: dict[int, str] | None = None
    for m in _VOCAB_KEY.finditer(data):
        merges = _MERGES_KEY.search(data, m.end())
        value = _decode_at(data, m.end(), merges.start() if merges else None)
        table = _as_table(value)
        if table is not None and (best is None or len(table) > len(best)):
            best = table
    if best is None:
        return None
    added = _added_tokens(data)
    if added is None:
        return None
    best.update(added)
    return best


def _added_tokens(data: bytes) -> dict[int, str] | None:
    """``{id: content}`` of the ``added_tokens`` list (empty without one; None if garbled)."""
    at = _ADDED_KEY.search(data)
    if at is None:
        return {}
    added = _decode_at(data, at.end())
    if not isinstance(added, list):
        return None
    return {
        e["id"]: str(e.get("content", ""))
        for e in added
        if isinstance(e, dict) and isinstance(e.get("id"), int)
    }


def _pieces_by_line(data: bytes, ids: list[int]) -> list[str | None] | None:
    """The pieces of ``ids`` without decoding the vocabulary, or None when this does not apply.

    ``tokenizers`` writes a vocabulary object one entry per line, in id order, so id ``i``
    sits on line ``i + 1`` after the opening brace. Each entry used is decoded and must say
    ``"piece": i``; anything else (compact JSON, holes, a list vocabulary) returns None and
    the caller decodes the whole vocabulary instead.
    """
    added = _added_tokens(data)
    key = _VOCAB_KEY.search(data)
    if added is None or key is None or data[key.end() : key.end() + 1] != b"{":
        return None
    merges = _MERGES_KEY.search(data, key.end())
    lines = data[key.end() : merges.start() if merges else len(data)].split(b"\n")
    out: list[str | None] = []
    for i in ids:
        if i in added:
            out.append(added[i])
            continue
        if not 0 <= i < len(lines) - 1:
            return None
        try:
            entry = json.loads(b"{" + lines[i + 1].strip().rstrip(b",") + b"}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(entry, dict) or list(entry.values()) != [i]:
            return None
        out.append(next(iter(entry)))
    return out


def token_strings_from_file(path: str | Path) -> TokenStrings:
    """A lookup of token pieces from ``path`` (a ``tokenizer.json``), parsed on first use.

    A file neither this reader nor the ``tokenizers`` library can parse gives None for
    every id: the pieces only label a report, and a weight diff must not fail over them.
    """
    path = Path(path)
    table: dict[int, str] | None = None
    library: Any = None

    def lookup(ids: list[int]) -> list[str | None]:
        nonlocal table, library
        if table is None and library is None:
            data = path.read_bytes()
            quick = _pieces_by_line(data, ids)
            if quick is not None:
                return quick
            table = _pieces_by_id(data)
            if table is None:
                from tokenizers import Tokenizer

                try:
                    library = Tokenizer.from_file(str(path))
                except Exception:  # any parse failure means "no labels"
                    table = {}
        if table is not None:
            return [p if isinstance(p := table.get(i), str) else None for i in ids]
        return [library.id_to_token(i) for i in ids]

    return lookup
