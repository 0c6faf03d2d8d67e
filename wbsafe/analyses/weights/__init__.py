"""Weight diff between a base checkpoint and a fine-tune (full checkpoint or PEFT LoRA adapters).

Streams from safetensors files in chunks of whole rows, read through read-only memory maps
whose pages are dropped once used (never unpickles, never builds a model, never holds a
whole checkpoint); worker threads take whole tensors. For each tensor,
``||dW||_F``, ``||dW||_F / ||W||_F``, cos(W_base, W_tuned), max |dW|, the share of changed
entries and, for 2-D tensors, the spectrum of dW (top-k singular values, stable rank
``||dW||_F² / σ1²``, energy in the top 1 and top 8). LoRA updates are measured from their
factors (see :mod:`~.lora_math`), never from B·A. Embedding and unembedding rows get a
per-token report with the global shrink removed (:mod:`~.rows`). Tensor names are read
with :mod:`wbsafe.arch.names`.

Modules:

- ``diff``: the entry point, :func:`diff` (full checkpoint or adapters);
- ``checkpoint_diff``: full checkpoint vs base, name matching, tensor pairs on workers;
- ``adapter_diff``: stacked LoRA adapters vs base, from their factors;
- ``adapters``: reading and validating adapter files into factors ``B·s [out, r]``, ``A [r, in]``;
- ``figures``: one tensor's :class:`TensorDiff` row, dense or from factors;
- ``dense``: the chunk engine (:func:`dense_stats`) and fused-kernel dispatch;
- ``diff_kernel``: builds and loads the fused C kernel (``diff_kernel.c``);
- ``lora_math``: dense and factored norms and spectra, LoRA rank and scale;
- ``rows``: embedding-row outliers (:func:`row_report`) and roll-ups;
- ``accumulate``: what a diff collects, and the result made from it;
- ``results``: the result dataclasses;
- ``inputs``: ``config.json`` (architecture check, tied embeddings) and token strings;
- ``workers``: worker threads and garbage-collector control.
"""

from wbsafe.analyses.weights.adapter_diff import diff_adapters
from wbsafe.analyses.weights.checkpoint_diff import diff_checkpoints
from wbsafe.analyses.weights.dense import Source, dense_stats, tensor_source
from wbsafe.analyses.weights.diff import diff
from wbsafe.analyses.weights.results import (
    Rollup,
    RowReport,
    ShapeChange,
    TensorDiff,
    TokenRowChange,
    WeightDiffResult,
)
from wbsafe.arch.names import MODULE_ORDER, parse_name

__all__ = [
    "MODULE_ORDER",
    "Rollup",
    "RowReport",
    "ShapeChange",
    "Source",
    "TensorDiff",
    "TokenRowChange",
    "WeightDiffResult",
    "dense_stats",
    "diff",
    "diff_adapters",
    "diff_checkpoints",
    "parse_name",
    "tensor_source",
]
