"""Token pieces read straight from tokenizer.json equal what the tokenizers library returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import BPE, Unigram, WordLevel, WordPiece

from wbsafe.io.token_strings import _pieces_by_id, _pieces_by_line, token_strings_from_file

PIECES = ["<unk>", "a", "b", "ab", 'q"uote', "back\\slash", "ü", "日本", "Ġthe", "vocab"]


def _tokenizers() -> dict[str, Tokenizer]:
    vocab = {p: i for i, p in enumerate(PIECES)}
    bpe = Tokenizer(BPE(vocab, [("a", "b")], unk_token="<unk>"))
    bpe.add_special_tokens(["<|special|>", "<pad>"])
    return {
        "bpe": bpe,
        "wordpiece": Tokenizer(WordPiece(vocab, unk_token="<unk>")),
        "wordlevel": Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        "unigram": Tokenizer(Unigram([(p, -float(i)) for i, p in enumerate(PIECES)], 0)),
    }


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "wordlevel", "unigram"])
def test_pieces_match_the_library(kind: str, tmp_path: Path) -> None:
    tok = _tokenizers()[kind]
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    assert _pieces_by_id(path.read_bytes()) is not None  # the fast path, not the fallback
    n = tok.get_vocab_size(with_added_tokens=True)
    ids = list(range(n + 3))  # and ids past the end
    assert token_strings_from_file(path)(ids) == [tok.id_to_token(i) for i in ids]
    # the one-entry-per-line shortcut applies to object vocabularies, never to a list one
    quick = _pieces_by_line(path.read_bytes(), list(range(n)))
    if kind == "unigram":
        assert quick is None
    else:
        assert quick == [tok.id_to_token(i) for i in range(n)]


def test_compact_json_and_a_real_tokenizer(tmp_path: Path, tiny_base: Path) -> None:
    src = tiny_base / "tokenizer.json"
    tok = Tokenizer.from_file(str(src))
    compact = tmp_path / "tokenizer.json"
    compact.write_text(json.dumps(json.loads(src.read_text()), separators=(",", ":")))
    ids = list(range(tok.get_vocab_size(with_added_tokens=True)))
    want = [tok.id_to_token(i) for i in ids]
    assert token_strings_from_file(src)(ids) == want
    assert token_strings_from_file(compact)(ids) == want
    assert _pieces_by_line(compact.read_bytes(), ids) is None  # no lines: the full decode ran


def test_unreadable_file_gives_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "Mystery", "vocab": 7}}')
    assert token_strings_from_file(path)([0, 1]) == [None, None]
