"""Diff of one or several stacked PEFT LoRA adapters against their base, from the factors.

Each adapted base tensor ``W [out, in]`` is measured from the stacked factors ``B_cat
[out, Σr_i]`` and ``A_cat [Σr_i, in]`` (:func:`diff_adapters`); full tensors an adapter
stores (``modules_to_save``) are diffed densely against the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wbsafe.analyses.weights.accumulate import TASK, Acc
from wbsafe.analyses.weights.adapters import read_adapter
from wbsafe.analyses.weights.dense import BLOCK, scratch_source, tensor_source
from wbsafe.analyses.weights.figures import dense_row, factor_row
from wbsafe.analyses.weights.inputs import load_config, tokens_fn
from wbsafe.analyses.weights.lora_math import factor_row_parts
from wbsafe.analyses.weights.results import WeightDiffResult
from wbsafe.arch.families import try_family
from wbsafe.arch.names import canonical_name, parse_name, vocab_matrix_kind
from wbsafe.errors import WbsafeError
from wbsafe.io.checkpoints import TensorReader, read_headers, read_tensor, weight_files
from wbsafe.io.token_strings import TokenStrings
from wbsafe.progress import Progress, no_progress

if TYPE_CHECKING:
    import torch


@dataclass
class _Factors:
    b: list[torch.Tensor] = field(default_factory=list)  # [out, r_i], scale folded in
    a: list[torch.Tensor] = field(default_factory=list)  # [r_i, in]
    sources: list[str] = field(default_factory=list)


def diff_adapters(
    base_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    *,
    spectrum_k: int = 8,
    spectra: bool = True,
    progress: Progress = no_progress,
    top_tokens: int = 50,
    token_strings: TokenStrings | None = None,
    tokenizer_dir: str | Path | None = None,
    chunk_elements: int = BLOCK,
) -> WeightDiffResult:
    """Diff one or several stacked PEFT LoRA adapters on ``base_dir``, from their factors.

    Stacked adapters sum: ``dW = Σ_i s_i B_i A_i`` = ``B_cat A_cat`` with
    ``B_cat = [s_1 B_1, s_2 B_2, …]`` and ``A_cat = [A_1; A_2; …]``. Rows cover the tensors
    the adapters touch; relative roll-ups are over those tensors. Full tensors an adapter
    stores (``modules_to_save``) are diffed densely; the last adapter's copy wins.
    ``progress("weight diff", done, total, tensor)`` is called once with ``done`` 0, then
    after each tensor.
    """
    import torch

    base_dir = Path(base_dir)
    if not adapter_dirs:
        raise WbsafeError("no adapter directories given")
    bh = read_headers(weight_files(base_dir, "model"))
    base_canon: dict[str, str] = {}
    for n in bh:
        base_canon.setdefault(canonical_name(n), n)
    factors: dict[str, _Factors] = {}
    full: dict[str, torch.Tensor] = {}
    acc = Acc()
    family = try_family(load_config(base_dir))
    for d in adapter_dirs:
        lora, whole, fname = read_adapter(Path(d), bh, base_canon, family)
        for target, (bf, af) in lora.items():
            f = factors.setdefault(target, _Factors())
            f.b.append(bf)
            f.a.append(af)
            f.sources.append(fname)
        for target, t in whole.items():
            if target in full:
                acc.notes.append(f"{target}: stored in several adapters; the last one is used")
            full[target] = t
    tok_fn = tokens_fn(token_strings, [Path(tokenizer_dir) if tokenizer_dir else None,
                                       *(Path(d) for d in adapter_dirs), base_dir])  # fmt: skip
    names = [n for n in bh if n in factors or n in full]
    progress(TASK, 0, len(names))
    for done, name in enumerate(names, start=1):
        info = bh[name]
        vocab_kind = vocab_matrix_kind(name)
        if name in full:
            t_full = full[name]
            if name in factors:
                f = factors[name]
                t_full = t_full + torch.cat(f.b, dim=1) @ torch.cat(f.a, dim=0)
                acc.notes.append(f"{name}: full tensor and LoRA both present; diffed densely")
            shape = tuple(info.shape)
            want_rows = bool(vocab_kind) and len(shape) == 2
            with TensorReader(info) as rw:
                row, st = dense_row(
                    info, info, scratch_source(rw), tensor_source(t_full), shape,
                    spectrum_k=spectrum_k, spectra=spectra, acc=acc, want_rows=want_rows,
                    chunk=chunk_elements,
                )  # fmt: skip
            acc.rows.append(row)
            if vocab_kind and st is not None and st.rows is not None:
                acc.set_row_report(vocab_kind, name, st.rows, top_tokens, tok_fn)
            del st
        else:
            w = read_tensor(info, torch.float32)
            f = factors[name]
            b, a = torch.cat(f.b, dim=1), torch.cat(f.a, dim=0)
            row = factor_row(name, info, w, b, a, spectrum_k, spectra, acc)
            acc.rows.append(row)
            if vocab_kind and row.fro_base is not None and w.ndim == 2:
                parts = factor_row_parts(w, b, a)
                acc.set_row_report(vocab_kind, name, parts, top_tokens, tok_fn)
            del w
        progress(TASK, done, len(names), name)
    embed = next((n for n in bh if parse_name(n)[1] == "embed"), None)
    head = next((n for n in bh if parse_name(n)[1] == "lm_head"), None)
    tied = embed is not None and (
        head is None or bool(load_config(base_dir).get("tie_word_embeddings", False))
    )
    if tied:
        acc.notes.append("tied embeddings in the base: lm_head absent or tied to embed_tokens")
    return acc.result(
        base=str(base_dir), tuned=None, adapters=[str(d) for d in adapter_dirs], missing=[],
        extra=[], tied=tied,
    )  # fmt: skip
