"""Weight diff between a base checkpoint and a fine-tune (full checkpoint or PEFT LoRA adapters).

Streams from safetensors files in chunks of whole rows, read through read-only memory maps
whose pages are dropped once used (never unpickles, never builds a model, never holds a
whole checkpoint); worker threads take whole tensors. For each tensor,
``||dW||_F``, ``||dW||_F / ||W||_F``, cos(W_base, W_tuned), max |dW|, the share of changed
entries and, for 2-D tensors, the spectrum of dW (top-k singular values, stable rank
``||dW||_F² / σ1²``, energy in the top 1 and top 8). LoRA updates are measured from their
factors (see :mod:`wbsafe.analyses.weights.lora_math`), never from B·A.

Embedding and unembedding rows get a per-token report: the global shrink is removed by the
least-squares scalar ``s = <E_tuned, E_base> / ||E_base||²`` and each row scored by
``||E_tuned,i - s E_base,i|| / ||E_base,i||``; scores are robust-z-scored over the vocabulary
with ``(x - median) / (1.4826 · MAD)``.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.weights.diff_kernel import kernel
from wbsafe.analyses.weights.lora_math import (
    Spectrum,
    cosine_from_parts,
    dense_spectrum,
    factor_row_parts,
    factor_stats,
    lora_rank,
    lora_scale,
    one_thread,
    sq_norm,
)
from wbsafe.errors import AdapterMismatchError, CheckpointFormatError, WbsafeError
from wbsafe.io.checkpoints import (
    FileMaps,
    TensorInfo,
    TensorReader,
    read_headers,
    read_tensor,
    weight_files,
)
from wbsafe.io.models import strip_prefix
from wbsafe.io.serialize import SCHEMA_VERSION, to_jsonable
from wbsafe.io.token_strings import TokenStrings, token_strings_from_file

if TYPE_CHECKING:
    import torch


# --------------------------------------------------------------------------- name table


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")

MODULE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(?:^|\.)(?:self_attn|attention|attn)\.(?:q_proj|query|wq)\.", "q"),
    (r"(?:^|\.)(?:self_attn|attention|attn)\.(?:k_proj|key|wk)\.", "k"),
    (r"(?:^|\.)(?:self_attn|attention|attn)\.(?:v_proj|value|wv)\.", "v"),
    (r"(?:^|\.)(?:attn\.c_attn|attention\.query_key_value|self_attn\.qkv_proj)\.", "qkv"),
    (r"(?:^|\.)(?:self_attn\.o_proj|attn\.c_proj|attention\.dense|attn\.out_proj)\.", "o"),
    (r"(?:^|\.)(?:self_attn|attn)\.(?:q_norm|k_norm)\.", "qk_norm"),
    (r"(?:^|\.)mlp\.(?:gate_proj|w1)\.", "gate"),
    (r"(?:^|\.)mlp\.(?:up_proj|c_fc|dense_h_to_4h|w3|fc1)\.", "up"),
    (r"(?:^|\.)mlp\.(?:down_proj|c_proj|dense_4h_to_h|w2|fc2)\.", "down"),
    (r"(?:^|\.)(?:input_layernorm|ln_1|attention_norm)\.", "input_norm"),
    (r"(?:^|\.)(?:post_attention_layernorm|ln_2|ffn_norm)\.", "post_attn_norm"),
    (r"(?:^|\.)(?:pre_feedforward_layernorm|post_feedforward_layernorm)\.", "ffn_norm"),
    (r"^(?:norm|ln_f|final_layer_norm)\.", "final_norm"),
    (r"^(?:embed_tokens|wte|embed_in|tok_embeddings)\.", "embed"),
    (r"^wpe\.", "pos_embed"),
    (r"^(?:lm_head|embed_out|output)\.", "lm_head"),
)
"""(regex on the prefix-stripped name, module type): Llama/Mistral/Qwen/GPT-2/GPT-NeoX names."""

MODULE_ORDER = (
    "embed", "pos_embed", "q", "k", "v", "qkv", "qk_norm", "o", "gate", "up", "down",
    "input_norm", "post_attn_norm", "ffn_norm", "final_norm", "lm_head", "other",
)  # fmt: skip
_COMPILED = tuple((re.compile(p), m) for p, m in MODULE_PATTERNS)


def canonical_name(name: str) -> str:
    """Strip the export prefixes (``base_model.model.``, ``model.``, ``transformer.``)."""
    return strip_prefix(name)


@functools.lru_cache(maxsize=65536)
def parse_name(name: str) -> tuple[int | None, str]:
    """(layer index or None, module type) of a tensor name, from the pattern table."""
    canon = canonical_name(name)
    m = _LAYER_RE.search("." + canon)
    layer = int(m.group(1)) if m else None
    for rx, module in _COMPILED:
        if rx.search(canon):
            return layer, module
    return layer, "other"


# --------------------------------------------------------------------------- results


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
    dense_engine: str = "torch"  # what computed the dense figures (see _engine_summary)
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


# --------------------------------------------------------------------------- helpers


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


def _load_config(directory: str | Path) -> dict[str, Any]:
    p = Path(directory)
    cfg = p / "config.json" if p.is_dir() else p.parent / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"config.json is not valid JSON ({exc.msg})", cfg) from exc
    return data if isinstance(data, dict) else {}


_ARCH_KEYS = (
    ("model_type",),
    ("hidden_size", "n_embd", "d_model"),
    ("num_hidden_layers", "n_layer", "num_layers"),
)


def _check_architecture(base_dir: Path, tuned_dir: Path) -> None:
    cb, ct = _load_config(base_dir), _load_config(tuned_dir)
    for keys in _ARCH_KEYS:
        vb = next((cb[k] for k in keys if k in cb), None)
        vt = next((ct[k] for k in keys if k in ct), None)
        if vb is not None and vt is not None and vb != vt:
            raise WbsafeError(
                f"different architecture from base {base_dir}: {keys[0]} {vt!r} vs {vb!r} "
                "(a weight diff needs a fine-tune of the same base model)",
                tuned_dir / "config.json" if tuned_dir.is_dir() else tuned_dir,
            )


def _tokens_fn(
    token_strings: TokenStrings | None, tokenizer_dirs: Sequence[Path | None]
) -> TokenStrings | None:
    if token_strings is not None:
        return token_strings
    for d in tokenizer_dirs:
        if d is None:
            continue
        path = (d if d.is_dir() else d.parent) / "tokenizer.json"
        if path.is_file():
            return token_strings_from_file(path)
    return None


def _robust_z(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``(x - median) / (1.4826 MAD)``; MAD 0 falls back to the std, then to 1."""
    med = float(x.median())
    mad = float((x - med).abs().median())
    scale = 1.4826 * mad
    if scale <= 0.0:
        scale = float(x.std()) if x.numel() > 1 else 0.0
    if not math.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    return (x - med) / scale, med, mad


def row_report(
    name: str,
    w2: torch.Tensor,
    dw2: torch.Tensor,
    wd: torch.Tensor,
    *,
    top_k: int,
    token_strings: TokenStrings | None,
    added_norms: torch.Tensor | None = None,
) -> RowReport:
    """Per-token report from per-row ``||W_i||²``, ``||dW_i||²``, ``<W_i, dW_i>`` (float64).

    Global scale ``s - 1 = Σ<W_i,dW_i> / Σ||W_i||²``; residual row norm
    ``||dW_i - (s-1) W_i||``; relative to ``max(||W_i||, 1e-3 · median ||W_i||)``.
    """
    import torch

    c = float(wd.sum() / w2.sum()) if float(w2.sum()) > 0 else 0.0
    resid2 = (dw2 - 2.0 * c * wd + c * c * w2).clamp_min(0.0)
    wn = w2.sqrt()
    floor = max(float(wn.median()) * 1e-3, 1e-12)
    denom = wn.clamp_min(floor)
    raw = dw2.sqrt() / denom
    resid = resid2.sqrt() / denom
    z, med, mad = _robust_z(resid)
    # only rows that moved: with nothing changed, any order of the rest would be arbitrary
    moved = torch.nonzero(dw2 > 0).squeeze(1)
    picked = moved[torch.argsort(resid[moved], descending=True)[:top_k]]
    order = picked.tolist()
    strings = token_strings(order) if token_strings is not None and order else None
    if strings is None:
        strings = [None] * len(order)
    figures = zip(raw[picked].tolist(), resid[picked].tolist(), z[picked].tolist(), strict=True)
    top = [
        TokenRowChange(token_id=i, token=tok, rel_change=r, residual_rel=x, z=zz)
        for i, tok, (r, x, zz) in zip(order, strings, figures, strict=True)
    ]
    n = int(w2.numel())
    added = [] if added_norms is None else list(range(n, n + int(added_norms.numel())))
    return RowReport(
        tensor=name,
        n_rows=n,
        n_moved=int(moved.numel()),
        global_scale=1.0 + c,
        median_residual_rel=med,
        mad_residual_rel=mad,
        top=top,
        added_rows=added,
        added_row_norms=[] if added_norms is None else [float(v) for v in added_norms],
    )


def _rollups(rows: list[TensorDiff]) -> tuple[list[Rollup], list[Rollup], list[Rollup]]:
    def agg(key: Callable[[TensorDiff], tuple[int | None, str | None]]) -> list[Rollup]:
        acc: dict[tuple[int | None, str | None], list[float]] = {}
        for r in rows:
            if r.fro_diff is None or r.fro_base is None:
                continue
            a = acc.setdefault(key(r), [0.0, 0.0, 0.0])
            a[0] += r.fro_base**2
            a[1] += r.fro_diff**2
            a[2] += 1
        out = []
        for (layer, module), (b2, d2, n) in acc.items():
            fb, fd = math.sqrt(b2), math.sqrt(d2)
            out.append(Rollup(layer, module, fb, fd, fd / fb if fb > 0 else None, int(n)))
        return out

    def lkey(r: Rollup) -> tuple[int, int]:
        return (-1 if r.layer is None else r.layer, 0)

    mo = {m: i for i, m in enumerate(MODULE_ORDER)}
    by_layer = sorted(agg(lambda r: (r.layer, None)), key=lkey)
    by_module = sorted(agg(lambda r: (None, r.module)), key=lambda r: mo.get(r.module or "", 99))
    cells = agg(lambda r: (r.layer, r.module))
    ranking = sorted(cells, key=lambda r: -(r.rel_diff if r.rel_diff is not None else -1.0))
    return by_layer, by_module, ranking


class _NoProgress:
    """Stands in for a rich Progress when none is shown (importing rich costs ~0.2 s)."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, task: int, **fields: Any) -> None:
        return None

    def advance(self, task: int) -> None:
        return None


def _progress(enabled: bool, total: int, label: str) -> Any:
    if not enabled:
        return _NoProgress(), 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[name]}"),
        transient=True,
    )
    task = prog.add_task(label, total=total, name="")
    return prog, task


def _dtype_eps(dtype: str) -> float:
    return {"BF16": 2.0**-7, "F16": 2.0**-10, "F32": 2.0**-23, "F64": 2.0**-52}.get(dtype, 0.0)


def _count_nonfinite(t: torch.Tensor) -> int:
    import torch

    return int((~torch.isfinite(t)).sum())


# --------------------------------------------------------------------------- dense path


def _engine_summary(counts: dict[str, int]) -> str:
    """What computed a diff's dense figures, from tensors per engine: ``native
    (<compiler>)``, ``torch``, both with counts, or none (an adapter of factors only)."""
    native, other = counts.get("native", 0), counts.get("torch", 0)
    k = kernel()
    label = k.label if k is not None else "native"
    if native and other:
        return f"{label} for {native} tensors, torch for {other} (dtypes the kernel does not read)"
    return label if native else "torch" if other else "none (no dense tensors)"


@dataclass
class _Acc:
    rows: list[TensorDiff] = field(default_factory=list)
    vectors: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)
    shape_changed: list[ShapeChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    embedding: RowReport | None = None
    unembedding: RowReport | None = None
    engines: dict[str, int] = field(default_factory=dict)  # dense tensors per engine

    def merge(self, other: _Acc) -> None:
        """Append another accumulator's vectors, lists, notes and engine counts (not rows or
        row reports)."""
        for name, n in other.engines.items():
            self.engines[name] = self.engines.get(name, 0) + n
        self.vectors.update(other.vectors)
        self.nonfinite += other.nonfinite
        self.shape_changed += other.shape_changed
        self.notes += other.notes


def _spec_fields(spec: Spectrum | None) -> dict[str, Any]:
    if spec is None:
        return dict(
            top_singular_values=[],
            stable_rank=None,
            energy_top1=None,
            energy_top8=None,
            spectrum_method=None,
        )
    return dict(
        top_singular_values=spec.values,
        stable_rank=spec.stable_rank,
        energy_top1=spec.energy_top1,
        energy_top8=spec.energy_top8,
        spectrum_method=spec.method,
    )


_BLOCK = 1 << 20  # elements per chunk: 4 MB of float32; a chunk stays in L3 across its passes

Source = Callable[[int, int], "torch.Tensor"]
"""Elements ``[start, stop)`` of a flattened tensor, in its stored dtype."""


def tensor_source(t: torch.Tensor) -> Source:
    """A :data:`Source` over an in-memory tensor (its flattened view, sliced)."""
    flat = t.reshape(-1)

    def read(start: int, stop: int) -> torch.Tensor:
        return flat[start:stop]

    return read


def _scratch_source(reader: TensorReader) -> Source:
    """A :data:`Source` reading into ``reader``'s reused buffer (valid until the next call)."""

    def read(start: int, stop: int) -> torch.Tensor:
        return reader.read(start, stop, scratch=True)

    return read


def _row_step(shape: tuple[int, ...], chunk: int) -> tuple[int, int, int]:
    """(entries per row, rows, rows per chunk) of ``shape`` viewed as ``[-1, shape[-1]]``."""
    rowlen = shape[-1] if len(shape) >= 1 and shape[-1] > 0 else 1
    n_rows = math.prod(shape) // rowlen
    return rowlen, n_rows, max(1, chunk // rowlen)


_THREAD_SCRATCH = threading.local()


def _scratch(name: str, size: int) -> torch.Tensor:
    """A float32 buffer of at least ``size`` entries, kept per thread and reused across
    tensors: a fresh multi-MB buffer per tensor costs page faults to zero it and a TLB
    flush to free it, each time (a third of the diff's system time here). Sliced to
    ``size``; its contents are whatever the last user left."""
    import torch

    bufs: dict[str, torch.Tensor] = getattr(_THREAD_SCRATCH, "bufs", None) or {}
    _THREAD_SCRATCH.bufs = bufs
    buf = bufs.get(name)
    if buf is None or buf.numel() < size:
        buf = bufs[name] = torch.empty(size, dtype=torch.float32)
    return buf[:size]


@dataclass
class _DenseStats:
    w2: float
    dw2: float
    wd: float
    changed: int
    max_abs: float
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # per-row ||W||², ||dW||², <W,dW>
    dw: torch.Tensor | None  # full float32 dW, kept only for the spectrum
    engine: str  # "native" (the fused kernel) or "torch"


def dense_stats(
    read_w: Source,
    read_t: Source,
    shape: tuple[int, ...],
    *,
    rel_tol: float,
    want_rows: bool,
    keep_dw: bool,
    chunk: int = _BLOCK,
    use_kernel: bool = True,
) -> _DenseStats:
    """One chunked pass over base and tuned values of a tensor of ``shape`` (any dtype).

    ``read_w``/``read_t`` give stored entries by flat range (a result is used before the
    next call, so it may live in a reused buffer); each chunk of about ``chunk``
    entries (whole rows of the last dim, at least one row) is read and reduced while in
    cache; sums add up in float64. Only one chunk of each side is resident at a time (plus
    dW when ``keep_dw``, for the spectrum). An entry counts as changed when
    ``|dW| > rel_tol · |W|`` (``rel_tol`` 0: dW != 0, tuned != base as numbers).

    Two engines compute the same figures: the fused C kernel (:mod:`diff_kernel`, one pass
    per chunk over entries stored as float32, bfloat16 or float16) when it is built and
    ``use_kernel``, else torch: up-cast, subtract, then three dots, a count and a max (a
    chunk where dW is all zero skips the dW reductions). Both run on one thread; callers
    parallelise over tensors (many small multi-threaded ops were 10x slower than one thread
    when other processes shared the cores, measured here).
    """
    import torch

    rowlen, n_rows, step = _row_step(shape, chunk)
    dw_full = torch.empty((n_rows, rowlen), dtype=torch.float32) if keep_dw else None
    w2 = dw2 = wd = 0.0
    changed, hi = 0, 0.0
    # nothing that outlives an iteration is allocated in the loop (scratch is per thread)
    rows = [torch.empty(n_rows if want_rows else 0, dtype=torch.float64) for _ in range(3)]
    fused = kernel() if use_kernel else None
    k_acc = torch.zeros(4, dtype=torch.float64)  # the kernel's Σw², Σd², Σw·d, max|d|
    k_changed = torch.zeros(1, dtype=torch.int64)
    k_rows = torch.empty((n_rows, 3) if want_rows and fused else (0, 3), dtype=torch.float64)
    size = min(step, n_rows) * rowlen
    dbuf = wbuf = None
    via_kernel: bool | None = None  # decided at the first chunk; every chunk goes that way
    with one_thread():
        for i in range(0, n_rows, step):
            j = min(n_rows, i + step)
            w = read_w(i * rowlen, j * rowlen)
            t = read_t(i * rowlen, j * rowlen)
            native = fused is not None and fused.supports(w.dtype, t.dtype)
            if via_kernel is None:
                via_kernel = native
            elif native != via_kernel:  # the two engines' sums are kept apart: never mix
                raise RuntimeError(f"chunk dtypes changed within a tensor: {w.dtype}, {t.dtype}")
            if fused is not None and native:
                fused.diff_rows(
                    w, t, j - i, rowlen, rel_tol, k_acc, k_changed,
                    k_rows[i:j] if want_rows else None,
                    dw_full[i:j].view(-1) if dw_full is not None else None,
                )  # fmt: skip
                continue
            if dbuf is None:
                dbuf = _scratch("d", size)
            d = dbuf[: (j - i) * rowlen].view(j - i, rowlen)
            w = w.view(j - i, rowlen)
            if w.dtype != torch.float32:
                if wbuf is None:
                    wbuf = _scratch("w", size)
                w = wbuf[: (j - i) * rowlen].view(j - i, rowlen).copy_(w)
            torch.sub(t.view(j - i, rowlen), w, out=d)
            if not d.numel():
                continue
            up, lo = float(torch.amax(d)), float(torch.amin(d))
            hi = max(hi, up, -lo)
            # an unchanged chunk (dW all zero) adds only ||W||²; NaN compares unequal
            moved = not (up == 0.0 and lo == 0.0)
            if want_rows:
                parts = _row_parts(w, d if moved else None)
                for out, p in zip(rows, parts, strict=True):
                    out[i:j] = p
                w2 += float(parts[0].sum())
                dw2 += float(parts[1].sum())
                wd += float(parts[2].sum())
            else:
                wf, df = w.reshape(-1), d.view(-1)
                w2 += float(wf.dot(wf))
                if moved:
                    dw2 += float(df.dot(df))
                    wd += float(wf.dot(df))
            if moved:
                if rel_tol > 0.0:
                    changed += int((d.abs() > rel_tol * w.abs()).sum())
                else:
                    changed += int(torch.count_nonzero(d))
            if dw_full is not None:
                dw_full[i:j] = d
    if via_kernel:
        w2, dw2, wd, hi = k_acc.tolist()
        changed = int(k_changed)
        if want_rows:
            rows = [k_rows[:, c].contiguous() for c in range(3)]
    row_parts = (rows[0], rows[1], rows[2]) if want_rows else None
    dw_out = dw_full.reshape(shape) if dw_full is not None else None
    engine = "native" if via_kernel else "torch"
    return _DenseStats(w2, dw2, wd, changed, hi, row_parts, dw_out, engine)


def _row_parts(
    w: torch.Tensor, d: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``||W_i||²``, ``||dW_i||²``, ``<W_i, dW_i>`` of ``[rows, d]`` float32 chunks, as
    float64 ``[rows]`` each (a row's sum is float32; rows are summed in float64 after).
    ``d`` None: dW is zero in this chunk."""
    import torch

    w2 = torch.linalg.vector_norm(w, dim=1).double().square()
    if d is None:
        zero = torch.zeros_like(w2)
        return w2, zero, zero
    return (
        w2,
        torch.linalg.vector_norm(d, dim=1).double().square(),
        torch.linalg.vecdot(w, d).double(),
    )


def _count_nonfinite_chunked(read: Source, shape: tuple[int, ...], chunk: int) -> int:
    import torch

    rowlen, n_rows, step = _row_step(shape, chunk)
    n = 0
    for i in range(0, n_rows, step):
        j = min(n_rows, i + step)
        n += int((~torch.isfinite(read(i * rowlen, j * rowlen))).sum())
    return n


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


def _dense_row(
    bi: TensorInfo,
    ti: TensorInfo,
    read_w: Source,
    read_t: Source,
    shape: tuple[int, ...],
    *,
    spectrum_k: int,
    spectra: bool,
    acc: _Acc,
    want_rows: bool = False,
    chunk: int = _BLOCK,
) -> tuple[TensorDiff, _DenseStats | None]:
    """Figures for one tensor of ``shape`` from its stored base and tuned values."""
    layer, module = parse_name(ti.name)
    if bi.dtype == ti.dtype:
        eps, note = 0.0, "exact: entries with dW != 0"
    else:
        eps = max(_dtype_eps(bi.dtype), _dtype_eps(ti.dtype))
        note = f"|dW| > {eps:.3g}·|W| (dtypes differ: rounding is not a change)"
    keep = spectra and len(shape) == 2 and min(shape) > 1
    st = dense_stats(
        read_w, read_t, shape, rel_tol=eps, want_rows=want_rows, keep_dw=keep, chunk=chunk
    )
    acc.engines[st.engine] = acc.engines.get(st.engine, 0) + 1
    w2, dw2, wd = st.w2, st.dw2, st.wd
    if not all(math.isfinite(v) for v in (w2, dw2, wd, st.max_abs)):
        nf_b = _count_nonfinite_chunked(read_w, shape, chunk)
        nf_t = _count_nonfinite_chunked(read_t, shape, chunk)
        if nf_b or nf_t:
            acc.nonfinite.append(ti.name)
            row = TensorDiff(
                ti.name, layer, module, tuple(ti.shape), bi.dtype, ti.dtype, "dense",
                None, None, None, None, None, None, "non-finite values", **_spec_fields(None),
                nonfinite_base=nf_b, nonfinite_tuned=nf_t,
            )  # fmt: skip
            return row, None
    spec = None
    if st.dw is not None and dw2 > 0.0:
        spec = dense_spectrum(st.dw, dw2, spectrum_k)
        if spec.u1 is not None:
            acc.vectors[ti.name] = (spec.u1, spec.v1)
    st.dw = None
    fb, fd = math.sqrt(w2), math.sqrt(dw2)
    row = TensorDiff(
        name=ti.name,
        layer=layer,
        module=module,
        shape=tuple(ti.shape),
        dtype_base=bi.dtype,
        dtype_tuned=ti.dtype,
        source="dense",
        fro_base=fb,
        fro_diff=fd,
        rel_diff=fd / fb if fb > 0 else None,
        cosine=cosine_from_parts(w2, wd, dw2),
        max_abs_diff=st.max_abs,
        changed_share=st.changed / max(math.prod(shape), 1),
        changed_share_note=note,
        **_spec_fields(spec),
        nonfinite_base=0,
        nonfinite_tuned=0,
    )
    return row, st


def _same_tensor(
    a: TensorInfo, b: TensorInfo, row_norms: dict[str, torch.Tensor], chunk: int = _BLOCK
) -> bool:
    """Whether the tuned embed and lm_head hold the same values. Their row norms screen
    first; only when those agree are both tensors read, chunk by chunk, and compared."""
    import torch

    if a.shape != b.shape:
        return False
    na, nb = row_norms.get("embed"), row_norms.get("lm_head")
    if na is not None and nb is not None and not torch.allclose(na, nb, rtol=1e-5, atol=0):
        return False
    rowlen, n_rows, step = _row_step(tuple(a.shape), chunk)
    with TensorReader(a) as ra, TensorReader(b) as rb:
        for i in range(0, n_rows, step):
            lo, hi = i * rowlen, min(n_rows, i + step) * rowlen
            if not torch.equal(ra.read(lo, hi, scratch=True), rb.read(lo, hi, scratch=True)):
                return False
    return True


def _is_vocab_matrix(name: str) -> str | None:
    _, module = parse_name(name)
    return module if module in ("embed", "lm_head") else None


@dataclass
class _PairDiff:
    """One matched tensor pair's figures, made on a worker thread and merged in pair order."""

    acc: _Acc
    row: TensorDiff | None = None
    stats: _DenseStats | None = None
    added: torch.Tensor | None = None


def _diff_pair(
    bi: TensorInfo, ti: TensorInfo, maps: FileMaps, spectrum_k: int, spectra: bool, chunk: int
) -> _PairDiff:
    """Diff one tensor pair into its own accumulator (it touches no shared state)."""
    out = _PairDiff(_Acc())
    vocab_kind = _is_vocab_matrix(ti.name)
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
        out.row, out.stats = _dense_row(
            bi, ti, _scratch_source(rw), _scratch_source(rt), shape,
            spectrum_k=spectrum_k, spectra=spectra, acc=out.acc,
            want_rows=bool(vocab_kind) and len(shape) == 2, chunk=chunk,
        )  # fmt: skip
    return out


@contextmanager
def _no_gc_pause() -> Iterator[None]:
    """Hold off the cyclic garbage collector for the diff. Every chunk makes a few tensor
    objects, enough to trigger a full collection over the ~170k objects torch brings in:
    85-90 ms, 40% of the SmolLM2 diff (measured here). The diff's objects are freed by
    reference counting; cycles, if any, wait for the next collection after it."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class _InlinePool:
    """One worker: jobs run on the calling thread, in order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return map(fn, items)


@contextmanager
def _workers(n: int | None) -> Iterator[Any]:
    """A pool of ``n`` threads (None: torch's thread count), each running torch on one
    thread: whole tensors go to workers, so the cores work on different tensors instead of
    splitting each small op (the ops release the GIL; results keep pair order)."""
    import torch

    n = max(1, torch.get_num_threads() if n is None else n)
    kernel()  # load (or build) the fused kernel once, before any worker thread needs it
    with one_thread():
        if n == 1:
            try:
                yield _InlinePool()
            finally:
                # this thread's buffers would outlive the diff; a pool's die with its threads
                _THREAD_SCRATCH.__dict__.clear()
            return
        with ThreadPoolExecutor(n, thread_name_prefix="wbsafe-diff") as pool:
            yield pool


def diff_checkpoints(
    base_dir: str | Path,
    tuned_dir: str | Path,
    *,
    spectrum_k: int = 8,
    spectra: bool = True,
    progress: bool = True,
    top_tokens: int = 50,
    token_strings: TokenStrings | None = None,
    tokenizer_dir: str | Path | None = None,
    chunk_elements: int = _BLOCK,
    workers: int | None = None,
) -> WeightDiffResult:
    """Diff a full fine-tuned checkpoint against its base, streaming chunk by chunk.

    Tensors are read through memory maps in chunks of about ``chunk_elements`` entries
    (whole rows, at least one), each chunk's pages dropped from the process once used (see
    :class:`~wbsafe.io.checkpoints.TensorReader`), so memory is a few chunks per worker plus
    float64 per-row figures of the vocabulary matrices (``[vocab]`` × 3), not the largest
    tensor; with spectra, each worker also keeps dW of its current 2-D tensor in float32
    for the SVD. ``workers`` threads (None: torch's thread count) take whole tensors; the
    figures do not depend on how many. Raises WbsafeError when the two are different
    architectures.
    """
    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    _check_architecture(base_dir, tuned_dir)
    bh = read_headers(weight_files(base_dir, "model"))
    th = read_headers(weight_files(tuned_dir, "model"))
    pairs, missing, extra = _match(bh, th)
    acc = _Acc()
    if not pairs:
        raise WbsafeError(f"no tensor names in common with base {base_dir}", tuned_dir)
    mismatched = [
        (b, t) for b, t in pairs if bh[b].shape != th[t].shape and not _is_vocab_matrix(t)
    ]
    if len(mismatched) > len(pairs) // 2 or len(pairs) < max(1, len(bh) // 2):
        raise WbsafeError(
            f"different architecture from base {base_dir}: {len(mismatched)} of {len(pairs)} "
            f"matched tensors differ in shape, {len(missing)} base tensors have no match",
            tuned_dir,
        )
    tok_fn = _tokens_fn(token_strings, [Path(tokenizer_dir) if tokenizer_dir else None,
                                        tuned_dir, base_dir])  # fmt: skip
    embed_pair = next(((b, t) for b, t in pairs if parse_name(t)[1] == "embed"), None)
    head_pair = next(((b, t) for b, t in pairs if parse_name(t)[1] == "lm_head"), None)
    cfg_tied = bool(_load_config(tuned_dir).get("tie_word_embeddings", False))
    tied = embed_pair is not None and (head_pair is None or cfg_tied)
    tuned_norms: dict[str, torch.Tensor] = {}

    def one(pair: tuple[str, str]) -> _PairDiff:
        return _diff_pair(bh[pair[0]], th[pair[1]], maps, spectrum_k, spectra, chunk_elements)

    prog, task = _progress(progress, len(pairs), "weight diff")
    with prog, _no_gc_pause(), FileMaps() as maps, _workers(workers) as pool:
        for (_, t), got in zip(pairs, pool.map(one, pairs), strict=True):
            prog.update(task, name=t)
            acc.merge(got.acc)
            if got.row is None:
                prog.advance(task)
                continue
            acc.rows.append(got.row)
            st, vocab_kind = got.stats, _is_vocab_matrix(t)
            if vocab_kind and st is not None and st.rows is not None:
                parts = st.rows
                rep = row_report(
                    t, *parts, top_k=top_tokens, token_strings=tok_fn, added_norms=got.added
                )
                tuned_norms[vocab_kind] = (parts[0] + 2 * parts[2] + parts[1]).clamp_min(0).sqrt()
                if vocab_kind == "embed":
                    acc.embedding = rep
                else:
                    acc.unembedding = rep
            del got, st
            prog.advance(task)
    if not tied and embed_pair is not None and head_pair is not None:
        tied = _same_tensor(th[embed_pair[1]], th[head_pair[1]], tuned_norms, chunk_elements)
    if tied:
        acc.notes.append("tied embeddings: lm_head absent or equal to embed_tokens")
        acc.unembedding = None
    by_layer, by_module, ranking = _rollups(acc.rows)
    return WeightDiffResult(
        base=str(base_dir),
        tuned=str(tuned_dir),
        adapters=[],
        rows=acc.rows,
        by_layer=by_layer,
        by_module=by_module,
        ranking=ranking,
        embedding=acc.embedding,
        unembedding=acc.unembedding,
        missing=missing,
        extra=extra,
        shape_changed=acc.shape_changed,
        nonfinite=acc.nonfinite,
        tied_embeddings=tied,
        notes=acc.notes,
        dense_engine=_engine_summary(acc.engines),
        singular_vectors=acc.vectors,
    )


# --------------------------------------------------------------------------- adapters

_LORA_RE = re.compile(
    r"^(?P<mod>.+?)\.(?:(?P<lin>lora_[AB])(?:\.[A-Za-z0-9_]+)?\.weight|"
    r"(?P<emb>lora_embedding_[AB])(?:\.[A-Za-z0-9_]+)?)$"
)


@dataclass
class _Factors:
    b: list[torch.Tensor] = field(default_factory=list)  # [out, r_i], scale folded in
    a: list[torch.Tensor] = field(default_factory=list)  # [r_i, in]
    sources: list[str] = field(default_factory=list)


def _read_adapter(
    adapter_dir: Path, base: dict[str, TensorInfo], base_canon: dict[str, str]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor], str]:
    """Load one adapter: ``{base tensor name: (B·scale [out,r], A [r,in])}``, full tensors, file.

    Raises AdapterMismatchError naming the adapter file and tensor when they do not fit the base.
    """
    import torch

    cfg_path = adapter_dir / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterMismatchError(f"unreadable adapter_config.json ({exc})", cfg_path) from exc
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterMismatchError(f"peft_type {ptype} is not supported (LoRA only)", cfg_path)
    if cfg.get("use_dora"):
        raise AdapterMismatchError(
            "DoRA adapters rescale whole weight columns; the factor diff does not cover them",
            cfg_path,
        )
    files = weight_files(adapter_dir, "adapter_model")
    infos = read_headers(files)
    fname = str(files[0]) if len(files) == 1 else str(adapter_dir)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, info in infos.items():
        m = _LORA_RE.match(key)
        if m is None:
            if key.endswith(".bias") and ".lora_" in key:
                raise AdapterMismatchError(f"tensor {key!r}: LoRA bias is not supported", fname)
            if "lora_magnitude_vector" in key:
                raise AdapterMismatchError(f"tensor {key!r}: DoRA is not supported", fname)
            target = base_canon.get(canonical_name(key))
            if target is None:
                raise AdapterMismatchError(f"tensor {key!r} has no counterpart in the base", fname)
            if tuple(infos[key].shape) != tuple(base[target].shape):
                raise AdapterMismatchError(
                    f"tensor {key!r} shape {list(info.shape)} does not fit base "
                    f"{target} {list(base[target].shape)}",
                    fname,
                )
            full[target] = read_tensor(info, torch.float32)
            continue
        kind = m.group("lin") or m.group("emb")
        halves.setdefault(m.group("mod"), {})[kind] = read_tensor(info, torch.float32)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for mod, parts in halves.items():
        module = canonical_name(mod)
        target = base_canon.get(canonical_name(mod + ".weight"))
        if target is None:
            raise AdapterMismatchError(
                f"tensor {mod}.lora_*: module {module!r} is not in the base checkpoint", fname
            )
        shape = tuple(base[target].shape)
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        ka, kb = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        if ka not in parts or kb not in parts:
            raise AdapterMismatchError(f"tensor {mod}: has only one of {ka}/{kb}", fname)
        a, b = parts[ka], parts[kb]
        r = a.shape[0]
        want_r = lora_rank(cfg, module)
        if b.ndim != 2 or a.ndim != 2 or b.shape[1] != r:
            raise AdapterMismatchError(
                f"tensor {mod}: {kb} {list(b.shape)} and {ka} {list(a.shape)} are not factors",
                fname,
            )
        if want_r != r:
            raise AdapterMismatchError(
                f"tensor {mod}.{ka}: rank {r} but adapter_config says r={want_r}", fname
            )
        scale = lora_scale(cfg, module, r)
        if emb or cfg.get("fan_in_fan_out"):
            bf, af = a.T.contiguous() * scale, b.T.contiguous()  # dW = (B A)ᵀ = Aᵀ Bᵀ
        else:
            bf, af = b * scale, a
        if len(shape) != 2 or bf.shape[0] != shape[0] or af.shape[1] != shape[1]:
            raise AdapterMismatchError(
                f"tensor {mod}.{kb}/{ka}: update shape [{bf.shape[0]}, {af.shape[1]}] does not "
                f"fit base {target} {list(shape)}",
                fname,
            )
        out[target] = (bf, af)
    return out, full, fname


def diff_adapters(
    base_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    *,
    spectrum_k: int = 8,
    spectra: bool = True,
    progress: bool = True,
    top_tokens: int = 50,
    token_strings: TokenStrings | None = None,
    tokenizer_dir: str | Path | None = None,
    chunk_elements: int = _BLOCK,
) -> WeightDiffResult:
    """Diff one or several stacked PEFT LoRA adapters on ``base_dir``, from their factors.

    Stacked adapters sum: ``dW = Σ_i s_i B_i A_i`` = ``B_cat A_cat`` with
    ``B_cat = [s_1 B_1, s_2 B_2, …]`` and ``A_cat = [A_1; A_2; …]``. Rows cover the tensors
    the adapters touch; relative roll-ups are over those tensors. Full tensors an adapter
    stores (``modules_to_save``) are diffed densely; the last adapter's copy wins.
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
    acc = _Acc()
    for d in adapter_dirs:
        lora, whole, fname = _read_adapter(Path(d), bh, base_canon)
        for target, (bf, af) in lora.items():
            f = factors.setdefault(target, _Factors())
            f.b.append(bf)
            f.a.append(af)
            f.sources.append(fname)
        for target, t in whole.items():
            if target in full:
                acc.notes.append(f"{target}: stored in several adapters; the last one is used")
            full[target] = t
    tok_fn = _tokens_fn(token_strings, [Path(tokenizer_dir) if tokenizer_dir else None,
                                        *(Path(d) for d in adapter_dirs), base_dir])  # fmt: skip
    names = [n for n in bh if n in factors or n in full]
    prog, task = _progress(progress, len(names), "adapter diff")
    with prog:
        for name in names:
            prog.update(task, name=name)
            info = bh[name]
            vocab_kind = _is_vocab_matrix(name)
            if name in full:
                t_full = full[name]
                if name in factors:
                    f = factors[name]
                    t_full = t_full + torch.cat(f.b, dim=1) @ torch.cat(f.a, dim=0)
                    acc.notes.append(f"{name}: full tensor and LoRA both present; diffed densely")
                shape = tuple(info.shape)
                want_rows = bool(vocab_kind) and len(shape) == 2
                with TensorReader(info) as rw:
                    row, st = _dense_row(
                        info, info, _scratch_source(rw), tensor_source(t_full), shape,
                        spectrum_k=spectrum_k, spectra=spectra, acc=acc, want_rows=want_rows,
                        chunk=chunk_elements,
                    )  # fmt: skip
                acc.rows.append(row)
                if vocab_kind and st is not None and st.rows is not None:
                    _set_row_report(acc, vocab_kind, name, st.rows, top_tokens, tok_fn)
                del st
            else:
                w = read_tensor(info, torch.float32)
                f = factors[name]
                b, a = torch.cat(f.b, dim=1), torch.cat(f.a, dim=0)
                row = _factor_row(name, info, w, b, a, spectrum_k, spectra, acc)
                acc.rows.append(row)
                if vocab_kind and row.fro_base is not None and w.ndim == 2:
                    parts = factor_row_parts(w, b, a)
                    _set_row_report(acc, vocab_kind, name, parts, top_tokens, tok_fn)
                del w
            prog.advance(task)
    embed = next((n for n in bh if parse_name(n)[1] == "embed"), None)
    head = next((n for n in bh if parse_name(n)[1] == "lm_head"), None)
    tied = embed is not None and (
        head is None or bool(_load_config(base_dir).get("tie_word_embeddings", False))
    )
    if tied:
        acc.notes.append("tied embeddings in the base: lm_head absent or tied to embed_tokens")
    by_layer, by_module, ranking = _rollups(acc.rows)
    return WeightDiffResult(
        base=str(base_dir),
        tuned=None,
        adapters=[str(d) for d in adapter_dirs],
        rows=acc.rows,
        by_layer=by_layer,
        by_module=by_module,
        ranking=ranking,
        embedding=acc.embedding,
        unembedding=acc.unembedding,
        missing=[],
        extra=[],
        shape_changed=[],
        nonfinite=acc.nonfinite,
        tied_embeddings=tied,
        notes=acc.notes,
        dense_engine=_engine_summary(acc.engines),
        singular_vectors=acc.vectors,
    )


def _set_row_report(
    acc: _Acc,
    vocab_kind: str,
    name: str,
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    top_tokens: int,
    tok_fn: TokenStrings | None,
) -> None:
    rep = row_report(name, *parts, top_k=top_tokens, token_strings=tok_fn)
    if vocab_kind == "embed":
        acc.embedding = rep
    else:
        acc.unembedding = rep


def _factor_row(
    name: str,
    info: TensorInfo,
    w: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    spectrum_k: int,
    spectra: bool,
    acc: _Acc,
) -> TensorDiff:
    import torch

    layer, module = parse_name(name)
    w2 = sq_norm(w)
    finite = bool(torch.isfinite(b).all()) and bool(torch.isfinite(a).all())
    if not math.isfinite(w2) or not finite:
        acc.nonfinite.append(name)
        nf_b = _count_nonfinite(w)
        nf_t = _count_nonfinite(b) + _count_nonfinite(a)
        return TensorDiff(
            name, layer, module, tuple(info.shape), info.dtype, "LORA", "lora",
            None, None, None, None, None, None, "non-finite values (tuned count is in the factors)",
            **_spec_fields(None), nonfinite_base=nf_b, nonfinite_tuned=nf_t,
        )  # fmt: skip
    st = factor_stats(w, b, a, spectrum_k, spectrum=spectra)
    spec = st.spectrum if st.fro2_diff > 0 else None
    if spec is not None and spec.u1 is not None:
        acc.vectors[name] = (spec.u1, spec.v1)
    fb, fd = math.sqrt(w2), math.sqrt(st.fro2_diff)
    return TensorDiff(
        name=name,
        layer=layer,
        module=module,
        shape=tuple(info.shape),
        dtype_base=info.dtype,
        dtype_tuned="LORA",
        source="lora",
        fro_base=fb,
        fro_diff=fd,
        rel_diff=fd / fb if fb > 0 else None,
        cosine=cosine_from_parts(w2, st.w_dot_dw, st.fro2_diff),
        max_abs_diff=st.max_abs,
        changed_share=st.support_share,
        changed_share_note="support of the factors (nonzero rows of B × nonzero cols of A); "
        "exact unless terms cancel",
        **_spec_fields(spec),
        nonfinite_base=0,
        nonfinite_tuned=0,
    )


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a PEFT adapter directory (holds adapter_config.json)."""
    p = Path(path)
    return p.is_dir() and (p / "adapter_config.json").is_file()


def diff(
    base: str | Path,
    tuned: str | Path | None = None,
    adapters: Iterable[str | Path] = (),
    **kwargs: Any,
) -> WeightDiffResult:
    """Dispatch: ``tuned`` a full checkpoint -> diff_checkpoints; an adapter dir (or
    ``adapters``) -> diff_adapters with all adapters stacked."""
    adapter_list = list(adapters)
    if tuned is not None and is_adapter_dir(tuned):
        adapter_list.insert(0, tuned)
        tuned = None
    if tuned is not None and adapter_list:
        raise WbsafeError(
            "give either a full tuned checkpoint or adapters, not both "
            "(merge the adapters first, or diff them against the base)",
            tuned,
        )
    if tuned is not None:
        return diff_checkpoints(base, tuned, **kwargs)
    if adapter_list:
        return diff_adapters(base, adapter_list, **kwargs)
    raise WbsafeError("nothing to diff: give a tuned checkpoint or at least one adapter")
