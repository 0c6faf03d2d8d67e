"""Diff of a full fine-tuned checkpoint against its base, streamed chunk by chunk.

Tensors are matched by name (exact, then prefix-stripped); each matched pair of the same
shape is diffed on a worker thread. A ``[vocab, d]`` embedding or ``lm_head`` whose tuned
side has more rows (``[vocab + n, d]``) is diffed over the shared rows, the added rows'
norms reported apart; other shape changes are listed, not diffed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wbsafe.analyses.weights.accumulate import TASK, Acc
from wbsafe.analyses.weights.dense import BLOCK, DenseStats, Source, row_step, scratch_source
from wbsafe.analyses.weights.figures import dense_row
from wbsafe.analyses.weights.inputs import check_architecture, load_config, tokens_fn
from wbsafe.analyses.weights.results import ShapeChange, TensorDiff, WeightDiffResult
from wbsafe.analyses.weights.workers import no_gc_pause, worker_pool
from wbsafe.arch.names import canonical_name, parse_name, vocab_matrix_kind
from wbsafe.errors import WbsafeError
from wbsafe.io.checkpoints import FileMaps, TensorInfo, TensorReader, read_headers, weight_files
from wbsafe.io.token_strings import TokenStrings
from wbsafe.progress import Progress, no_progress

if TYPE_CHECKING:
    import torch


def _match(
    base: dict[str, TensorInfo], tuned: dict[str, TensorInfo]
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Pairs (base name, tuned name), then missing (base only) and extra (tuned only)."""
    pairs: list[tuple[str, str]] = []
    used: set[str] = set()
    base_canon: dict[str, str] = {}
    for n in base:
        base_canon.setdefault(canonical_name(n), n)
    extra = []
    for n in tuned:
        if n in base:
            pairs.append((n, n))
            used.add(n)
    for n in tuned:
        if n in used:
            continue
        b = base_canon.get(canonical_name(n))
        if b is not None and b not in used:
            pairs.append((b, n))
            used.add(b)
        elif n not in base:
            extra.append(n)
    missing = [n for n in base if n not in used]
    return pairs, missing, extra


def _row_norms(read: Source, rowlen: int, start: int, stop: int, chunk: int) -> torch.Tensor:
    """float64 ``[stop - start]``: the norms of rows ``start..stop`` (each ``rowlen`` long)."""
    import torch

    step = max(1, chunk // max(rowlen, 1))
    out = [torch.zeros(0, dtype=torch.float64)]
    for i in range(start, stop, step):
        j = min(stop, i + step)
        rows = read(i * rowlen, j * rowlen).to(torch.float32).view(j - i, rowlen)
        out.append(rows.norm(dim=1).double())
    return torch.cat(out)


def _same_tensor(
    a: TensorInfo, b: TensorInfo, row_norms: dict[str, torch.Tensor], chunk: int = BLOCK
) -> bool:
    """Whether the tuned embed and lm_head hold the same values. Their row norms screen
    first; only when those agree are both tensors read, chunk by chunk, and compared."""
    import torch

    if a.shape != b.shape:
        return False
    na, nb = row_norms.get("embed"), row_norms.get("lm_head")
    if na is not None and nb is not None and not torch.allclose(na, nb, rtol=1e-5, atol=0):
        return False
    rowlen, n_rows, step = row_step(tuple(a.shape), chunk)
    with TensorReader(a) as ra, TensorReader(b) as rb:
        for i in range(0, n_rows, step):
            lo, hi = i * rowlen, min(n_rows, i + step) * rowlen
            if not torch.equal(ra.read(lo, hi, scratch=True), rb.read(lo, hi, scratch=True)):
                return False
    return True


@dataclass
class _PairDiff:
    """One matched tensor pair's figures, made on a worker thread and merged in pair order."""

    acc: Acc
    row: TensorDiff | None = None
    stats: DenseStats | None = None
    added: torch.Tensor | None = None


def reduce_device(device: str | None) -> torch.device | None:
    """The accelerator the diff's reductions run on (None: the host engines)."""
    import torch

    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    if device is None or device == "cpu":
        return None
    return torch.device(device)


def _diff_pair(
    bi: TensorInfo, ti: TensorInfo, maps: FileMaps, spectrum_k: int, spectra: bool, chunk: int,
    device: torch.device | None = None,
) -> _PairDiff:  # fmt: skip
    """Diff one tensor pair into its own accumulator (it touches no shared state)."""
    out = _PairDiff(Acc())
    vocab_kind = vocab_matrix_kind(ti.name)
    if bi.shape != ti.shape and not (
        vocab_kind
        and len(bi.shape) == 2
        and bi.shape[1:] == ti.shape[1:]
        and ti.shape[0] > bi.shape[0]
    ):
        out.acc.shape_changed.append(ShapeChange(ti.name, tuple(bi.shape), tuple(ti.shape)))
        return out
    shape = tuple(bi.shape)
    with TensorReader(bi, maps) as rw, TensorReader(ti, maps) as rt:
        if ti.shape != bi.shape:
            out.added = _row_norms(rt.read, shape[1], shape[0], ti.shape[0], chunk)
            out.acc.notes.append(
                f"{ti.name}: vocabulary resized {bi.shape[0]} -> {ti.shape[0]}; "
                "diff over the shared rows, added rows reported apart"
            )
        out.row, out.stats = dense_row(
            bi, ti, scratch_source(rw), scratch_source(rt), shape,
            spectrum_k=spectrum_k, spectra=spectra, acc=out.acc,
            want_rows=bool(vocab_kind) and len(shape) == 2, chunk=chunk, device=device,
        )  # fmt: skip
    return out


def diff_checkpoints(
    base_dir: str | Path,
    tuned_dir: str | Path,
    *,
    spectrum_k: int = 8,
    spectra: bool = True,
    progress: Progress = no_progress,
    top_tokens: int = 50,
    token_strings: TokenStrings | None = None,
    tokenizer_dir: str | Path | None = None,
    chunk_elements: int = BLOCK,
    workers: int | None = None,
    device: str | None = "auto",
) -> WeightDiffResult:
    """Diff a full fine-tuned checkpoint against its base, streaming chunk by chunk.

    Tensors are read through memory maps in chunks of about ``chunk_elements`` entries
    (whole rows, at least one), each chunk's pages dropped from the process once used (see
    :class:`~wbsafe.io.checkpoints.TensorReader`), so memory is a few chunks per worker plus
    float64 per-row figures of the vocabulary matrices (``[vocab]`` × 3), not the largest
    tensor; with spectra, each worker also keeps dW of its current 2-D tensor in float32
    for the SVD. ``workers`` threads (None: torch's thread count) take whole tensors; the
    figures do not depend on how many. ``progress("weight diff", done, total, tensor)`` is
    called once with ``done`` 0, then after each tensor pair. ``device``: where the
    reductions run (``auto``: a CUDA GPU when one is present, :mod:`~.device_stats`; None or
    ``cpu``: the host engines). Raises WbsafeError when the two are different architectures.
    """
    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    check_architecture(base_dir, tuned_dir)
    bh = read_headers(weight_files(base_dir, "model"))
    th = read_headers(weight_files(tuned_dir, "model"))
    pairs, missing, extra = _match(bh, th)
    acc = Acc()
    if not pairs:
        raise WbsafeError(f"no tensor names in common with base {base_dir}", tuned_dir)
    mismatched = [
        (b, t) for b, t in pairs if bh[b].shape != th[t].shape and not vocab_matrix_kind(t)
    ]
    if len(mismatched) > len(pairs) // 2 or len(pairs) < max(1, len(bh) // 2):
        raise WbsafeError(
            f"different architecture from base {base_dir}: {len(mismatched)} of {len(pairs)} "
            f"matched tensors differ in shape, {len(missing)} base tensors have no match",
            tuned_dir,
        )
    tok_fn = tokens_fn(token_strings, [Path(tokenizer_dir) if tokenizer_dir else None,
                                       tuned_dir, base_dir])  # fmt: skip
    embed_pair = next(((b, t) for b, t in pairs if parse_name(t)[1] == "embed"), None)
    head_pair = next(((b, t) for b, t in pairs if parse_name(t)[1] == "lm_head"), None)
    cfg_tied = bool(load_config(tuned_dir).get("tie_word_embeddings", False))
    tied = embed_pair is not None and (head_pair is None or cfg_tied)
    tuned_norms: dict[str, torch.Tensor] = {}

    def one(pair: tuple[str, str]) -> _PairDiff:
        return _diff_pair(bh[pair[0]], th[pair[1]], maps, spectrum_k, spectra, chunk_elements,
                          on)  # fmt: skip

    on = reduce_device(device)

    progress(TASK, 0, len(pairs))
    with no_gc_pause(), FileMaps() as maps, worker_pool(workers) as pool:
        results = zip(pairs, pool.map(one, pairs), strict=True)
        for done, ((_, t), got) in enumerate(results, start=1):
            acc.merge(got.acc)
            if got.row is not None:
                acc.rows.append(got.row)
                st, vocab_kind = got.stats, vocab_matrix_kind(t)
                if vocab_kind and st is not None and st.rows is not None:
                    parts = st.rows
                    acc.set_row_report(vocab_kind, t, parts, top_tokens, tok_fn, got.added)
                    tuned_norms[vocab_kind] = (
                        (parts[0] + 2 * parts[2] + parts[1]).clamp_min(0).sqrt()
                    )
                del st
            del got
            progress(TASK, done, len(pairs), t)
    if not tied and embed_pair is not None and head_pair is not None:
        tied = _same_tensor(th[embed_pair[1]], th[head_pair[1]], tuned_norms, chunk_elements)
    if tied:
        acc.notes.append("tied embeddings: lm_head absent or equal to embed_tokens")
        acc.unembedding = None
    return acc.result(
        base=str(base_dir), tuned=str(tuned_dir), adapters=[], missing=missing, extra=extra,
        tied=tied,
    )  # fmt: skip
