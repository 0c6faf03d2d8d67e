"""What a diff collects as it goes, and the :class:`WeightDiffResult` made from it at the end.

An :class:`Acc` holds the tensor rows, the top singular vectors (``u1 [out]``, ``v1 [in]``
per 2-D tensor), the reported lists and notes, the two row reports of the ``[vocab, d]``
matrices and how many tensors each dense engine computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.weights.dense import engine_summary
from wbsafe.analyses.weights.results import RowReport, ShapeChange, TensorDiff, WeightDiffResult
from wbsafe.analyses.weights.rows import rollups, row_report
from wbsafe.io.token_strings import TokenStrings

if TYPE_CHECKING:
    import torch

TASK = "weight diff"
"""The task both diffs report progress under (``progress(TASK, done, total, tensor)``)."""


@dataclass
class Acc:
    rows: list[TensorDiff] = field(default_factory=list)
    vectors: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)
    shape_changed: list[ShapeChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    embedding: RowReport | None = None
    unembedding: RowReport | None = None
    engines: dict[str, int] = field(default_factory=dict)  # dense tensors per engine

    def merge(self, other: Acc) -> None:
        """Append another accumulator's vectors, lists, notes and engine counts (not rows or
        row reports)."""
        for name, n in other.engines.items():
            self.engines[name] = self.engines.get(name, 0) + n
        self.vectors.update(other.vectors)
        self.nonfinite += other.nonfinite
        self.shape_changed += other.shape_changed
        self.notes += other.notes

    def set_row_report(
        self,
        vocab_kind: str,
        name: str,
        parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        top_tokens: int,
        tok_fn: TokenStrings | None,
        added_norms: torch.Tensor | None = None,
    ) -> None:
        """The row report of ``name`` (``vocab_kind`` ``"embed"`` or ``"lm_head"``) from its
        per-row parts (float64 ``[vocab]`` × 3, see :func:`~.rows.row_report`)."""
        rep = row_report(
            name, *parts, top_k=top_tokens, token_strings=tok_fn, added_norms=added_norms
        )
        if vocab_kind == "embed":
            self.embedding = rep
        else:
            self.unembedding = rep

    def result(
        self,
        *,
        base: str,
        tuned: str | None,
        adapters: list[str],
        missing: list[str],
        extra: list[str],
        tied: bool,
    ) -> WeightDiffResult:
        """The whole diff: these rows, their roll-ups and everything collected."""
        by_layer, by_module, ranking = rollups(self.rows)
        return WeightDiffResult(
            base=base,
            tuned=tuned,
            adapters=adapters,
            rows=self.rows,
            by_layer=by_layer,
            by_module=by_module,
            ranking=ranking,
            embedding=self.embedding,
            unembedding=self.unembedding,
            missing=missing,
            extra=extra,
            shape_changed=self.shape_changed,
            nonfinite=self.nonfinite,
            tied_embeddings=tied,
            notes=self.notes,
            dense_engine=engine_summary(self.engines),
            singular_vectors=self.vectors,
        )
