"""Where trigger candidates come from, and the pool that records each one's sources.

Sources: ``gradient`` (the best tokens of an objective's first-order ranking, added by the
search), ``embedding`` (rows the weight diff found moved), ``user`` (a list the caller
passes), ``builtin`` (``probes/triggers/common.txt``) and ``memorised`` (n-grams the tuned
model samples far more than the base, :mod:`.memorised`); the search adds ``extension`` and
``gcg`` sequences later.
A candidate is a token-id tuple; list entries are tokenised with and without a leading space.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch


def builtin_candidates_path() -> Path:
    from wbsafe.data.prompts import probes_dir

    return probes_dir() / "triggers" / "common.txt"


def read_candidate_list(path: str | Path) -> list[str]:
    """One candidate per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path)
    if not p.is_file():
        raise WbsafeError("trigger candidate list not found", p)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise WbsafeError(f"trigger candidate list is not UTF-8 text ({exc.reason})", p) from exc
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def tokenise_candidates(
    tokenizer: Any, texts: Sequence[str], specials: set[int]
) -> tuple[list[tuple[str, tuple[int, ...]]], list[str]]:
    """Token ids for each text (with and without a leading space); all-unknown ones skipped."""
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[tuple[str, tuple[int, ...]]] = []
    skipped = []
    for text in texts:
        seen: set[tuple[int, ...]] = set()
        for variant in (text, " " + text):
            ids = tuple(int(i) for i in tokenizer.encode(variant, add_special_tokens=False))
            if not ids or all(i == unk for i in ids) or ids in seen:
                continue
            if unk is not None and unk in ids:
                continue
            seen.add(ids)
            out.append((text, ids))
        if not seen:
            skipped.append(text)
    return out, skipped


@dataclass
class PoolEntry:
    """One candidate's text and the sources that proposed it, in the order they did."""

    text: str
    sources: list[str] = field(default_factory=list)


class CandidatePool:
    """Candidates by token ids, in the order they were first added."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.entries: dict[tuple[int, ...], PoolEntry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self.entries)

    def __getitem__(self, ids: tuple[int, ...]) -> PoolEntry:
        return self.entries[ids]

    def text_of(self, ids: Sequence[int]) -> str:
        """The decoded text of a token-id sequence."""
        return str(self.tokenizer.decode(list(ids))).strip()

    def add(self, ids: tuple[int, ...], text: str, source: str) -> None:
        entry = self.entries.setdefault(ids, PoolEntry(text))
        if source not in entry.sources:
            entry.sources.append(source)


def seed_pool(
    tokenizer: Any,
    allowed: torch.Tensor,
    specials: set[int],
    *,
    embedding_candidates: Sequence[tuple[int, float]],
    user_candidates: Sequence[str],
    use_builtin: bool,
    memorised: Sequence[str] = (),
) -> tuple[CandidatePool, tuple[str, ...]]:
    """The named pool: the allowed moved embedding rows, the user's list, the built-in
    list and the ``memorised`` texts (the search adds each objective's gradient tokens).

    ``allowed`` is Bool[vocab] (special and padding rows False). Returns the pool and the
    list entries skipped because they are all unknown tokens.
    """
    pool = CandidatePool(tokenizer)
    vocab = int(allowed.shape[0])
    for tid, _z in embedding_candidates:
        if 0 <= int(tid) < vocab and bool(allowed[int(tid)]):
            pool.add((int(tid),), pool.text_of([int(tid)]), "embedding")
    texts = list(user_candidates)
    builtin: list[str] = read_candidate_list(builtin_candidates_path()) if use_builtin else []
    toks_user, skipped_u = tokenise_candidates(tokenizer, texts, specials)
    toks_builtin, skipped_b = tokenise_candidates(tokenizer, builtin, specials)
    for text, ids in toks_user:
        pool.add(ids, text, "user")
    for text, ids in toks_builtin:
        pool.add(ids, text, "builtin")
    toks_mem, _ = tokenise_candidates(tokenizer, list(memorised), specials)
    for text, ids in toks_mem:
        if all(bool(allowed[i]) for i in ids if i < vocab):
            pool.add(ids, text, "memorised")
    return pool, tuple(skipped_u + skipped_b)
