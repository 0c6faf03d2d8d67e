"""The typed results of a weight diff: flat, JSON-friendly dataclasses.

:class:`TensorDiff` is one tensor's row (any shape; spectra for 2-D ``[out, in]``),
:class:`RowReport` the per-token report of a ``[vocab, d]`` embedding or unembedding with
its :class:`TokenRowChange` rows, :class:`Rollup` a sum over tensors (per layer, per module,
per layer × module), :class:`ShapeChange` a tensor whose shape differs, and
:class:`WeightDiffResult` the whole diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wbsafe.arch.names import canonical_name
from wbsafe.io.serialize import SCHEMA_VERSION, to_jsonable


@dataclass(frozen=True)
class TensorDiff:
    """One tensor's change. Flat and JSON-friendly; None where a figure does not apply."""

    name: str
    layer: int | None
    module: str
    shape: tuple[int, ...]
    dtype_base: str
    dtype_tuned: str
    source: str  # "dense" or "lora"
    fro_base: float | None
    fro_diff: float | None
    rel_diff: float | None
    cosine: float | None
    max_abs_diff: float | None
    changed_share: float | None
    changed_share_note: str
    top_singular_values: list[float]
    stable_rank: float | None
    energy_top1: float | None
    energy_top8: float | None
    spectrum_method: str | None
    nonfinite_base: int
    nonfinite_tuned: int


@dataclass(frozen=True)
class TokenRowChange:
    """One vocabulary row of an embedding or unembedding matrix."""

    token_id: int
    token: str | None
    rel_change: float  # ||dE_i|| / ||E_i||, shrink included
    residual_rel: float  # ||E_t,i - s E_b,i|| / ||E_b,i||, shrink removed
    z: float  # robust z of residual_rel over the vocabulary


@dataclass(frozen=True)
class RowReport:
    """Per-token change of an embedding (``[vocab, d]``) or unembedding matrix."""

    tensor: str
    n_rows: int
    global_scale: float
    median_residual_rel: float
    mad_residual_rel: float
    top: list[TokenRowChange]
    added_rows: list[int]
    added_row_norms: list[float]
    n_moved: int = -1
    """Rows whose values changed at all (-1: not recorded; 0: the matrix is unchanged).
    ``top`` holds moved rows only, so an unchanged matrix has an empty ``top``."""
    method: str = (
        "residual after least-squares global scale s=<E_t,E_b>/||E_b||^2; "
        "robust z=(x-median)/(1.4826*MAD)"
    )


@dataclass(frozen=True)
class Rollup:
    """A sum over tensors: norms combine as the square root of summed squares."""

    layer: int | None
    module: str | None
    fro_base: float
    fro_diff: float
    rel_diff: float | None
    n_tensors: int


@dataclass(frozen=True)
class ShapeChange:
    name: str
    base_shape: tuple[int, ...]
    tuned_shape: tuple[int, ...]


@dataclass(frozen=True)
class WeightDiffResult:
    """The whole diff. ``singular_vectors`` (name -> (u1, v1)) stays in memory, not in JSON."""

    base: str
    tuned: str | None
    adapters: list[str]
    rows: list[TensorDiff]
    by_layer: list[Rollup]
    by_module: list[Rollup]
    ranking: list[Rollup]
    embedding: RowReport | None
    unembedding: RowReport | None
    missing: list[str]
    extra: list[str]
    shape_changed: list[ShapeChange]
    nonfinite: list[str]
    tied_embeddings: bool
    notes: list[str]
    dense_engine: str = "torch"  # what computed the dense figures (see dense.engine_summary)
    singular_vectors: dict[str, tuple[Any, Any]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def row(self, name: str) -> TensorDiff:
        """The row of a tensor, by exact or prefix-stripped name."""
        canon = canonical_name(name)
        for r in self.rows:
            if r.name == name or canonical_name(r.name) == canon:
                return r
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: flat rows, roll-ups, row reports and the reported lists."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "weight_diff"}
        for f in self.__dataclass_fields__:
            if f != "singular_vectors":
                out[f] = to_jsonable(getattr(self, f))
        return out
