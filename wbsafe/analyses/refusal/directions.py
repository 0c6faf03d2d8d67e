"""Refusal direction of the base, its drift in a fine-tune, and refusal alignment of updates.

Definitions follow DESIGN.md: the direction at (layer, position) is mean(harmful) -
mean(harmless) of the residual stream (float64), fitted on a train split; the (layer,
position) is selected on a validation split by causal effect (ablating it in the base
lowers the refusal score of harmful prompts, adding it raises that of harmless ones, the
KL on harmless prompts stays small), preferring layers < 0.8 L; AUROC, recall at 1% FPR
and a best-of-N random-direction baseline are reported on the held-out test split.

Only ``blocks.{l}.hook_resid_pre`` sites are fitted: the direction at layer ``l`` is read
where activation addition at layer ``l`` writes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

    from wbsafe.capture.activations import Activations
    from wbsafe.io.models import LoadedModel

FIT_FORMAT = "wbsafe.refusal_fit/1"
WRITER_PATTERNS = (
    "o_proj", "down_proj", "embed_tokens", "attention.dense", "dense_4h_to_h",
    "attn.c_proj", "mlp.c_proj", "wte",
)  # fmt: skip
"""Module names of matrices that write the residual stream (a table over model families)."""
_LAYER_RE = re.compile(r"(?:layers|h)\.(\d+)\.")


# ---------------------------------------------------------------------------------------
# refusal score


def _last_logprobs(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    edit: Any = None,
) -> torch.Tensor:
    """Float64[n, vocab] log-probabilities of the first response token (one forward pass)."""
    import torch

    from wbsafe.capture.activations import encode

    out: list[torch.Tensor] = []
    ctx = edit if edit is not None else _null()
    with torch.no_grad(), ctx:
        for start in range(0, len(texts), batch_size):
            batch = encode(loaded, texts[start : start + batch_size])
            width = batch.input_ids.shape[1]
            if bool((batch.last_index == width - 1).all()):
                # left padded: only the last position's logits are needed (saves the
                # [batch, pos, vocab] tensor, ~1 GB for a 49k vocabulary at batch 32)
                logits = loaded.model(**batch.kwargs(), use_cache=False, logits_to_keep=1).logits
                last = logits[:, -1].double()
            else:
                logits = loaded.model(**batch.kwargs(), use_cache=False).logits
                rows = torch.arange(logits.shape[0], device=logits.device)
                last = logits[rows, batch.last_index].double()
            out.append(torch.log_softmax(last, dim=-1).cpu())
    return torch.cat(out, dim=0)


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _scores_from_logprobs(logprobs: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """log p_R - log(1 - p_R), p_R summed over ``ids``: Float64[n]."""
    import torch

    if not ids:
        raise WbsafeError("the tokenizer has no refusal-start tokens; no refusal score")
    lp_r = torch.logsumexp(logprobs[:, list(ids)], dim=-1)
    mask = torch.ones(logprobs.shape[1], dtype=torch.bool)
    mask[list(ids)] = False
    lp_not = torch.logsumexp(logprobs[:, mask], dim=-1)
    return lp_r - lp_not


def refusal_scores(
    loaded: LoadedModel,
    prompts: Sequence[Any],
    *,
    batch_size: int = 32,
    edit: Any = None,
    refusal_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """Refusal log-odds of the first response token for each prompt: Float64[n].

    ``edit`` is an optional context manager (e.g. :func:`ablation`) active during the pass;
    ``refusal_ids`` defaults to :func:`wbsafe.io.models.refusal_token_ids`.
    """
    from wbsafe.capture.activations import prompt_texts
    from wbsafe.io.models import refusal_token_ids

    texts = prompt_texts(loaded, prompts)
    lp = _last_logprobs(loaded, texts, batch_size=batch_size, edit=edit)
    ids = list(refusal_ids) if refusal_ids is not None else refusal_token_ids(loaded.tokenizer)
    return _scores_from_logprobs(lp, ids)


def ablation(loaded: LoadedModel, direction: Any) -> Any:
    """Context manager projecting ``direction`` out of the residual stream at every layer."""
    import torch

    from wbsafe.capture.activations import residual_edit

    r = torch.as_tensor(np.asarray(direction), dtype=torch.float64)
    r = r / r.norm()

    def edit(h: torch.Tensor) -> torch.Tensor:
        rr = r.to(h.device, h.dtype)
        return h - (h @ rr)[..., None] * rr

    return residual_edit(loaded.model, edit)


def addition(loaded: LoadedModel, vector: Any, layer: int) -> Any:
    """Context manager adding ``vector`` to the residual stream entering ``layer``."""
    import torch

    from wbsafe.capture.activations import residual_edit

    v = torch.as_tensor(np.asarray(vector), dtype=torch.float64)

    def edit(h: torch.Tensor) -> torch.Tensor:
        return h + v.to(h.device, h.dtype)

    return residual_edit(loaded.model, edit, layers=[layer])


# ---------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Candidate:
    """One (layer, position) candidate with its separation and causal numbers.

    ``bypass``: mean drop of the base's refusal score on validation harmful prompts when the
    direction is ablated; ``induce``: mean rise on validation harmless prompts when it is
    added at ``layer``; ``kl``: mean KL(base || ablated) of the first response token on
    harmless prompts. AUROC/recall/random baseline are on the test split.
    """

    layer: int
    position: str
    val_auroc: float | None
    auroc: float | None
    recall_at_1pct_fpr: float | None
    random_auroc: float
    separation: float | None
    bypass: float | None
    induce: float | None
    kl: float | None
    eligible: bool


@dataclass(frozen=True)
class RefusalDirectionFit:
    """The base's refusal directions at every layer/position, and the selected one.

    ``directions`` is Float64[n_layers, n_positions, d_model] (raw mean differences);
    ``harmful_proj``/``harmless_proj`` are Float64[n_layers, n_positions], the base's mean
    test-split projections onto each unit direction (for drift without reloading the base).
    """

    layer: int
    position: str
    site: str
    n_layers: int
    d_model: int
    positions: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    selection: str
    random_bypass: float
    base_refusal_harmful: float
    base_refusal_harmless: float
    base_weight_sha256: tuple[str, ...]
    base_model: dict[str, Any]
    prompt_ids: dict[str, tuple[str, ...]]
    directions: Any = field(repr=False)
    harmful_proj: Any = field(repr=False)
    harmless_proj: Any = field(repr=False)
    loaded_from: str | None = None

    @property
    def direction(self) -> Any:
        """Unit refusal direction at the selected (layer, position): Float64[d_model]."""
        r = self.directions[self.layer, self.positions.index(self.position)]
        return r / np.linalg.norm(r)

    def unit(self, layer: int, position: str | None = None) -> Any:
        r = self.directions[layer, self.positions.index(position or self.position)]
        return r / np.linalg.norm(r)

    def selected(self) -> Candidate:
        return next(
            c for c in self.candidates if (c.layer, c.position) == (self.layer, self.position)
        )

    def to_json(self) -> dict[str, Any]:
        from wbsafe.io.serialize import to_jsonable

        skip = {"directions", "harmful_proj", "harmless_proj"}
        out = {k: to_jsonable(getattr(self, k)) for k in self.__dataclass_fields__ if k not in skip}
        out["format"] = FIT_FORMAT
        return out


@dataclass(frozen=True)
class RefusalComparison:
    """A tuned model against the base's refusal directions.

    ``shift``: (mean tuned harmful projection - mean base harmful projection) onto the
    base's unit direction, in units of the base's harmful-harmless separation; negative =
    harmful prompts moved toward harmless. ``refusal_drop``: mean base minus mean tuned
    refusal score (log-odds) on the harmful prompts. Per-layer lists are at the selected
    position; ``max_abs_shift`` looks at every layer and position.
    """

    layer: int
    position: str
    cosine_per_layer: tuple[float, ...]
    probe_auroc_per_layer: tuple[float, ...]
    shift_per_layer: tuple[float, ...]
    probe_auroc: float
    shift: float
    max_abs_shift: float
    max_abs_shift_at: tuple[int, str]
    base_refusal_harmful: float
    tuned_refusal_harmful: float
    refusal_drop: float
    base_refusal_harmless: float
    tuned_refusal_harmless: float
    base_source: str
    projections: dict[str, tuple[float, ...]] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        from wbsafe.io.serialize import to_jsonable

        return dict(to_jsonable(self))


@dataclass(frozen=True)
class MatrixAlignment:
    name: str
    layer: int | None
    kind: str
    update_norm: float
    along_norm: float

    @property
    def alignment(self) -> float:
        return self.along_norm / self.update_norm if self.update_norm > 0 else 0.0


@dataclass(frozen=True)
class RefusalAlignment:
    """||r̂ᵀ dW|| / ||dW|| for matrices writing the residual stream; 1 = the update only
    writes along the refusal direction (an abliteration-style edit), ~1/sqrt(d) = random."""

    overall: float
    per_layer: dict[str, float]
    matrices: tuple[MatrixAlignment, ...]
    source: str

    def to_json(self) -> dict[str, Any]:
        from wbsafe.io.serialize import to_jsonable

        out = dict(to_jsonable(self))
        out["matrices"] = [{**to_jsonable(m), "alignment": m.alignment} for m in self.matrices]
        return out


# ---------------------------------------------------------------------------------------
# fitting


def _splits(prompts: Sequence[Any], fractions: tuple[float, float, float]) -> list[str]:
    from wbsafe.data.prompts import split_for

    return [split_for(p.id, fractions, salt="refusal-fit") for p in prompts]


def _projections(x: Any, unit: Any) -> Any:
    return np.asarray(x, dtype=np.float64) @ unit


def _dprime(a: Any, b: Any) -> float:
    """(mean a - mean b) / pooled std; 0 when undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return 0.0
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    d = (a.mean() - b.mean()) / sd if sd > 0 else 0.0
    return float(d) if math.isfinite(d) else 0.0


def _causal_rows(
    rows: Sequence[dict[str, Any]], selectable: Sequence[int], dprime: Sequence[float],
    top_k: int | None,
) -> set[int]:  # fmt: skip
    """Which selectable rows get the (costly) causal tests.

    Validation AUROC saturates over a range of layers, so a plain top-k by AUROC would test
    only the first layers of that range. Instead: the best position of each layer (AUROC,
    then d'); of the layers within 0.02 of the best AUROC, ``top_k`` spread evenly over
    depth; remaining slots filled by AUROC, then d'.
    """
    if top_k is None:
        return set(selectable)
    key = {i: (np.nan_to_num(rows[i]["val_auroc"]), dprime[i]) for i in selectable}
    best: dict[int, int] = {}
    for i in selectable:
        layer = rows[i]["layer"]
        if layer not in best or key[i] > key[best[layer]]:
            best[layer] = i
    if not best:
        return set()
    top = max(key[i][0] for i in best.values())
    near = [best[layer] for layer in sorted(best) if key[best[layer]][0] >= top - 0.02]
    if len(near) > top_k:
        near = [near[round(j * (len(near) - 1) / max(1, top_k - 1))] for j in range(top_k)]
    chosen = list(dict.fromkeys(near))[:top_k]
    for i in sorted(selectable, key=lambda i: key[i], reverse=True):
        if len(chosen) >= top_k:
            break
        if i not in chosen:
            chosen.append(i)
    return set(chosen)


def fit_base_directions(
    loaded_base: LoadedModel,
    harmful: Sequence[Any],
    harmless: Sequence[Any],
    *,
    val_split: tuple[float, float, float] = (0.5, 0.25, 0.25),
    positions: Sequence[str] | None = None,
    max_layer_frac: float = 0.8,
    kl_max: float = 0.1,
    min_bypass: float = 1.0,
    min_auroc: float = 0.8,
    select_positions: Sequence[str] | None = None,
    n_random: int = 100,
    n_causal: int = 48,
    causal_top_k: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> RefusalDirectionFit:
    """Fit the base's refusal directions and select (layer, position) by causal effect.

    ``val_split`` gives train/val/test fractions (deterministic by prompt id). Causal tests
    use at most ``n_causal`` validation prompts per class; ``causal_top_k`` limits them to
    the candidates with the best validation AUROC (None: all). Adapters, when loaded, are
    disabled for the whole fit.

    Selection (Arditi et al.): among token positions (``select_positions``, default all but
    ``mean``) at layers < ``max_layer_frac`` L whose direction separates the validation
    prompts (AUROC >= ``min_auroc``) and whose addition induces refusal, the largest
    bypass with KL <= ``kl_max``; when that bypass is below ``min_bypass`` (log-odds) the
    KL limit is dropped (small models are brittle) and ``selection`` says so. A direction
    that is zero (e.g. a fixed template token at the embedding) is never a candidate.
    """
    import torch

    from wbsafe.analyses.refusal.probes import auroc, random_direction_baseline, recall_at_fpr
    from wbsafe.capture.activations import capture, site_name

    with loaded_base.base_only() as base:
        n_layers = base.n_layers
        sites = [site_name(layer) for layer in range(n_layers)]
        prompts = list(harmful) + list(harmless)
        y = np.array([1] * len(harmful) + [0] * len(harmless))
        split = np.array(_splits(prompts, val_split))
        for name in ("train", "val", "test"):
            for label in (0, 1):
                if not ((split == name) & (y == label)).any():
                    raise WbsafeError(f"too few prompts: the {name} split has no class {label}")
        acts = capture(base, prompts, sites, positions, batch_size=batch_size)
        pos_names = acts.positions
        stacked = np.stack([acts.acts[s].double().numpy() for s in sites])  # [L, n, P, d]
        tr, va, te = split == "train", split == "val", split == "test"
        directions = stacked[:, tr & (y == 1)].mean(axis=1) - stacked[:, tr & (y == 0)].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            units = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
        proj = np.einsum("lnpd,lpd->lnp", stacked, units)  # [L, n, P]
        harm_proj = proj[:, te & (y == 1)].mean(axis=1)
        safe_proj = proj[:, te & (y == 0)].mean(axis=1)

        val_h = [p for p, s in zip(harmful, split[: len(harmful)], strict=True) if s == "val"]
        val_s = [p for p, s in zip(harmless, split[len(harmful) :], strict=True) if s == "val"]
        val_h, val_s = val_h[:n_causal], val_s[:n_causal]
        from wbsafe.capture.activations import prompt_texts
        from wbsafe.io.models import refusal_token_ids

        ids = refusal_token_ids(base.tokenizer)
        texts_h, texts_s = prompt_texts(base, val_h), prompt_texts(base, val_s)
        clean_h = _scores_from_logprobs(_last_logprobs(base, texts_h, batch_size=batch_size), ids)
        lp_s = _last_logprobs(base, texts_s, batch_size=batch_size)
        clean_s = _scores_from_logprobs(lp_s, ids)

        rows: list[dict[str, Any]] = []
        val_dprime: list[float] = []  # val separation / pooled std, the AUROC tie-break
        for layer in range(n_layers):
            for pi, pos in enumerate(pos_names):
                p = proj[layer, :, pi]
                rows.append(
                    dict(
                        layer=layer,
                        position=pos,
                        val_auroc=auroc(p[va], y[va]),
                        auroc=auroc(p[te], y[te]),
                        recall_at_1pct_fpr=recall_at_fpr(p[te], y[te], 0.01),
                        random_auroc=random_direction_baseline(
                            stacked[layer, te, pi], y[te], n=n_random, seed=seed
                        ),
                        separation=float(harm_proj[layer, pi] - safe_proj[layer, pi]),
                    )
                )
                val_dprime.append(_dprime(p[va & (y == 1)], p[va & (y == 0)]))
        # causal tests (3 forward passes each) only where a direction could be selected
        max_layer = max_layer_frac * n_layers
        allowed = set(select_positions or [p for p in pos_names if p != "mean"])
        selectable = [
            i for i, r in enumerate(rows) if r["layer"] < max_layer and r["position"] in allowed
        ]
        causal = _causal_rows(rows, selectable, val_dprime, causal_top_k)
        for i, row in enumerate(rows):
            degenerate = not all(math.isfinite(row[k]) for k in ("val_auroc", "auroc"))
            row.update(bypass=None, induce=None, kl=None)
            if degenerate:
                row.update(val_auroc=None, auroc=None, recall_at_1pct_fpr=None, separation=None)
            if i not in causal or degenerate:
                continue
            r = directions[row["layer"], pos_names.index(row["position"])]
            with torch.no_grad():
                abl_h = _scores_from_logprobs(
                    _last_logprobs(base, texts_h, batch_size=batch_size, edit=ablation(base, r)),
                    ids,
                )
                lp_abl_s = _last_logprobs(
                    base, texts_s, batch_size=batch_size, edit=ablation(base, r)
                )
                add_s = _scores_from_logprobs(
                    _last_logprobs(
                        base, texts_s, batch_size=batch_size, edit=addition(base, r, row["layer"])
                    ),
                    ids,
                )
            kl = (lp_s.exp() * (lp_s - lp_abl_s)).sum(dim=-1).mean()
            row.update(
                bypass=float((clean_h - abl_h).mean()),
                induce=float((add_s - clean_s).mean()),
                kl=float(kl),
            )
        for row in rows:
            row["eligible"] = bool(
                row["bypass"] is not None
                and (row["val_auroc"] or 0.0) >= min_auroc
                and row["layer"] < max_layer
                and row["position"] in allowed
                and row["induce"] > 0
                and row["bypass"] > 0
            )
        cands = tuple(Candidate(**row) for row in rows)
        pool = [c for c in cands if c.eligible and (c.kl or 0.0) <= kl_max]
        selection = (
            f"causal: max bypass over positions {sorted(allowed)}, layer < {max_layer_frac} L, "
            f"val AUROC >= {min_auroc}, induce > 0, KL <= {kl_max}"
        )
        if not pool or max(c.bypass or 0.0 for c in pool) < min_bypass:
            pool = [c for c in cands if c.eligible]
            selection = (
                f"causal, KL limit dropped (no candidate with KL <= {kl_max} had bypass >= "
                f"{min_bypass}): max bypass over positions {sorted(allowed)}, "
                f"layer < {max_layer_frac} L, induce > 0"
            )
        if not pool:
            pool = [c for c in cands if c.bypass is not None]
            selection = "fallback: no candidate met the criteria; max bypass over all tested"
        if not pool:
            raise WbsafeError("no usable refusal direction: every candidate is degenerate")
        best = max(pool, key=lambda c: c.bypass or 0.0)
        # causal control: a random direction of the same norm
        r_best = directions[best.layer, pos_names.index(best.position)]
        rng = np.random.default_rng(seed)
        rand = rng.standard_normal(r_best.shape)
        rand *= np.linalg.norm(r_best) / np.linalg.norm(rand)
        abl_rand = _scores_from_logprobs(
            _last_logprobs(base, texts_h, batch_size=batch_size, edit=ablation(base, rand)), ids
        )
        return RefusalDirectionFit(
            layer=best.layer,
            position=best.position,
            site=site_name(best.layer),
            n_layers=n_layers,
            d_model=base.d_model,
            positions=tuple(pos_names),
            candidates=cands,
            selection=selection,
            random_bypass=float((clean_h - abl_rand).mean()),
            base_refusal_harmful=float(clean_h.mean()),
            base_refusal_harmless=float(clean_s.mean()),
            base_weight_sha256=tuple(sorted(base.base_weight_hashes().values())),
            base_model=base.describe(),
            prompt_ids={
                name: tuple(p.id for p, s in zip(prompts, split, strict=True) if s == name)
                for name in ("train", "val", "test")
            },
            directions=directions,
            harmful_proj=harm_proj,
            harmless_proj=safe_proj,
        )


# ---------------------------------------------------------------------------------------
# artifacts


def save_fit(fit: RefusalDirectionFit, directory: str | Path) -> Path:
    """Write ``directions.safetensors`` (tensors + metadata) and ``fit.json`` to ``directory``."""
    import json

    import torch
    from safetensors.torch import save_file

    from wbsafe.io.serialize import write_json_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "directions": torch.from_numpy(np.ascontiguousarray(fit.directions)),
        "harmful_proj": torch.from_numpy(np.ascontiguousarray(fit.harmful_proj)),
        "harmless_proj": torch.from_numpy(np.ascontiguousarray(fit.harmless_proj)),
    }
    meta = {
        "format": FIT_FORMAT,
        "layer": str(fit.layer),
        "position": fit.position,
        "positions": json.dumps(list(fit.positions)),
        "base_weight_sha256": json.dumps(list(fit.base_weight_sha256)),
    }
    tmp = directory / ".directions.safetensors.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(directory / "directions.safetensors")
    write_json_atomic(directory / "fit.json", fit.to_json())
    return directory


def load_fit(directory: str | Path) -> RefusalDirectionFit:
    """Read a fit written by :func:`save_fit`; errors name the file at fault."""
    from safetensors.torch import load_file

    from wbsafe.io.checkpoints import read_header
    from wbsafe.io.serialize import read_json

    directory = Path(directory)
    data = read_json(directory / "fit.json")
    if not isinstance(data, dict) or data.get("format") != FIT_FORMAT:
        raise WbsafeError("not a wbsafe refusal-direction fit", directory / "fit.json")
    tensor_path = directory / "directions.safetensors"
    read_header(tensor_path)
    tensors = load_file(str(tensor_path))
    try:
        data.pop("format")
        cands = tuple(Candidate(**c) for c in data.pop("candidates"))
        data["positions"] = tuple(data["positions"])
        data["base_weight_sha256"] = tuple(data["base_weight_sha256"])
        data["prompt_ids"] = {k: tuple(v) for k, v in data["prompt_ids"].items()}
        fit = RefusalDirectionFit(
            candidates=cands,
            directions=tensors["directions"].double().numpy(),
            harmful_proj=tensors["harmful_proj"].double().numpy(),
            harmless_proj=tensors["harmless_proj"].double().numpy(),
            **{**data, "loaded_from": str(directory)},
        )
    except (KeyError, TypeError) as exc:
        raise WbsafeError(f"fit.json is missing fields or malformed ({exc})", directory) from exc
    if fit.directions.shape != (fit.n_layers, len(fit.positions), fit.d_model):
        raise WbsafeError("directions tensor shape disagrees with fit.json", tensor_path)
    return fit


FIT_VERSION = 3
"""Bumped when the fit's algorithm changes, so cached fits of an older one are not re-used
(3: salted inner split, causal rows spread over depth, a validation AUROC floor)."""


def fit_or_load_directions(
    loaded_base: LoadedModel,
    cache_dir: str | Path,
    harmful: Sequence[Any],
    harmless: Sequence[Any],
    **kwargs: Any,
) -> RefusalDirectionFit:
    """Re-use a saved fit for the same base weights (hashes), prompts and settings, or fit
    and save one. A re-used fit has ``loaded_from`` set."""
    from wbsafe.io.serialize import stable_hash

    # key on the base's own weight files: a base loaded with adapters (disabled for the
    # fit) shares its fit with every other adapter on that base
    hashes = sorted(loaded_base.base_weight_hashes().values())
    if not hashes:
        raise WbsafeError("the base was loaded without weight hashes; cannot key the cache")
    key = stable_hash(
        {
            "fit_version": FIT_VERSION,
            "hashes": hashes,
            "harmful": [p.id for p in harmful],
            "harmless": [p.id for p in harmless],
            "kwargs": {k: kwargs[k] for k in sorted(kwargs)},
        }
    )
    directory = Path(cache_dir) / f"refusal-{key}"
    if (directory / "fit.json").is_file() and (directory / "directions.safetensors").is_file():
        fit = load_fit(directory)
        if list(fit.base_weight_sha256) == hashes:
            return fit
    fit = fit_base_directions(loaded_base, harmful, harmless, **kwargs)
    save_fit(fit, directory)
    return replace(fit, loaded_from=None)


# ---------------------------------------------------------------------------------------
# tuned vs base


def _stack(acts: Activations, n_layers: int) -> Any:
    from wbsafe.capture.activations import site_name

    return np.stack([acts.acts[site_name(layer)].double().numpy() for layer in range(n_layers)])


def compare(
    loaded_tuned: LoadedModel,
    fit: RefusalDirectionFit,
    harmful: Sequence[Any],
    harmless: Sequence[Any],
    *,
    base: LoadedModel | None = None,
    batch_size: int = 32,
) -> RefusalComparison:
    """The tuned model's refusal representation and refusal score against the base's.

    The base side comes from ``base`` when given, else from ``loaded_tuned.base_only()``
    when the tuned model is base + adapters, else from the fit's stored test-split
    statistics (``base_source`` records which).
    """
    from wbsafe.analyses.refusal.probes import auroc
    from wbsafe.capture.activations import capture, site_name

    if loaded_tuned.n_layers != fit.n_layers or loaded_tuned.d_model != fit.d_model:
        raise WbsafeError(
            f"tuned model has {loaded_tuned.n_layers} layers x {loaded_tuned.d_model}; the fit "
            f"was made on {fit.n_layers} x {fit.d_model} (another base?)"
        )
    L = fit.n_layers
    sites = [site_name(layer) for layer in range(L)]
    prompts = list(harmful) + list(harmless)
    y = np.array([1] * len(harmful) + [0] * len(harmless))
    with np.errstate(divide="ignore", invalid="ignore"):
        units = fit.directions / np.linalg.norm(fit.directions, axis=-1, keepdims=True)
    sep = fit.harmful_proj - fit.harmless_proj  # [L, P]

    t_acts = _stack(capture(loaded_tuned, prompts, sites, fit.positions, batch_size=batch_size), L)
    t_proj = np.einsum("lnpd,lpd->lnp", t_acts, units)
    t_harm = t_proj[:, y == 1].mean(axis=1)
    t_dirs = t_acts[:, y == 1].mean(axis=1) - t_acts[:, y == 0].mean(axis=1)
    t_score_h = refusal_scores(loaded_tuned, harmful, batch_size=batch_size)
    t_score_s = refusal_scores(loaded_tuned, harmless, batch_size=batch_size)

    base_model = base
    source = "base model"
    if base_model is None and loaded_tuned.adapter_names:
        base_model, source = loaded_tuned, "adapters disabled (base_only)"
    if base_model is not None:
        with base_model.base_only() as b:
            b_acts = _stack(capture(b, prompts, sites, fit.positions, batch_size=batch_size), L)
            b_score_h = float(refusal_scores(b, harmful, batch_size=batch_size).mean())
            b_score_s = float(refusal_scores(b, harmless, batch_size=batch_size).mean())
        b_proj = np.einsum("lnpd,lpd->lnp", b_acts, units)
        b_harm = b_proj[:, y == 1].mean(axis=1)
        b_sel = b_proj[fit.layer, :, fit.positions.index(fit.position)]
    else:
        source = "stored fit statistics (base test split)"
        b_harm = fit.harmful_proj
        b_score_h, b_score_s = fit.base_refusal_harmful, fit.base_refusal_harmless
        b_sel = None
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = (t_harm - b_harm) / sep  # [L, P]
    pi = fit.positions.index(fit.position)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = [
            float(t_dirs[layer, pi] @ units[layer, pi] / np.linalg.norm(t_dirs[layer, pi]))
            for layer in range(L)
        ]
    probe = [
        auroc(t_proj[layer, :, pi], y) if np.isfinite(t_proj[layer, :, pi]).all() else math.nan
        for layer in range(L)
    ]
    valid = np.isfinite(shift) & (np.abs(sep) > 1e-9)
    flat = int(np.argmax(np.where(valid, np.abs(shift), -1.0)))
    l_max, p_max = divmod(flat, shift.shape[1])
    t_sel = t_proj[fit.layer, :, pi]
    projections: dict[str, tuple[float, ...]] = {
        "tuned_harmful": tuple(t_sel[y == 1].tolist()),
        "tuned_harmless": tuple(t_sel[y == 0].tolist()),
    }
    if b_sel is not None:
        projections["base_harmful"] = tuple(b_sel[y == 1].tolist())
        projections["base_harmless"] = tuple(b_sel[y == 0].tolist())
    t_h, t_s = float(t_score_h.mean()), float(t_score_s.mean())
    return RefusalComparison(
        layer=fit.layer,
        position=fit.position,
        cosine_per_layer=tuple(cos),
        probe_auroc_per_layer=tuple(probe),
        shift_per_layer=tuple(float(s) for s in shift[:, pi]),
        probe_auroc=probe[fit.layer],
        shift=float(shift[fit.layer, pi]),
        max_abs_shift=float(abs(shift[l_max, p_max])),
        max_abs_shift_at=(int(l_max), fit.positions[p_max]),
        base_refusal_harmful=b_score_h,
        tuned_refusal_harmful=t_h,
        refusal_drop=b_score_h - t_h,
        base_refusal_harmless=b_score_s,
        tuned_refusal_harmless=t_s,
        base_source=source,
        projections=projections,
    )


# ---------------------------------------------------------------------------------------
# refusal alignment of a weight update


def _writer_kind(name: str) -> str | None:
    for pat in WRITER_PATTERNS:
        if f"{pat}." in name or name.endswith(pat):
            return pat
    return None


def _layer_of(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def _dense_parts(name: str, dw: torch.Tensor, r: torch.Tensor) -> tuple[float, float] | None:
    """(||dW||_F, ||component of dW along r̂||) for a writer matrix; embeddings are [vocab, d]."""
    if dw.ndim != 2:
        return None
    if dw.shape[0] == r.numel() and "embed" not in name and "wte" not in name:
        along = r @ dw
    elif dw.shape[1] == r.numel():
        along = dw @ r
    else:
        return None
    return float(dw.norm()), float(along.norm())


def _lora_parts(
    a: torch.Tensor, b: torch.Tensor, scale: float, r: torch.Tensor
) -> tuple[float, float]:
    """dW = scale * B A (B: [out, R], A: [R, in]) without forming it; for an embedding
    (A: [R, vocab], B: [d, R]) the same formulas give ||dE r̂||."""
    gram = (b.T @ b) * (a @ a.T)
    fro = scale * math.sqrt(max(float(gram.sum()), 0.0))
    along = scale * float(((r @ b) @ a).norm())
    return fro, along


def refusal_alignment(
    base_dir: str | Path,
    tuned: str | Path | Sequence[str | Path],
    fit: RefusalDirectionFit,
) -> RefusalAlignment:
    """||r̂ᵀ dW|| / ||dW|| of the update, per matrix, per layer and overall.

    ``tuned`` is a full checkpoint directory (dW read from the files with
    :mod:`wbsafe.io.checkpoints`, one tensor at a time) or one or more LoRA adapter
    directories (from the factors, never forming B A). r̂ is the fit's selected direction.
    """
    import torch

    from wbsafe.io.checkpoints import load_tensor, read_headers, weight_files
    from wbsafe.io.models import is_adapter_dir, read_adapter_config, strip_prefix

    r = torch.as_tensor(fit.direction, dtype=torch.float64)
    paths = [Path(tuned)] if isinstance(tuned, str | Path) else [Path(t) for t in tuned]
    mats: list[MatrixAlignment] = []
    if all(is_adapter_dir(p) for p in paths):
        source = "lora factors"
        for adapter in paths:
            cfg = read_adapter_config(adapter)
            rank = float(cfg.get("r", 8))
            alpha = float(cfg.get("lora_alpha", rank))
            scale = alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
            headers = read_headers(weight_files(adapter, stem="adapter_model"))
            for key, info in headers.items():
                for tag_a, tag_b in (
                    (".lora_A", ".lora_B"),
                    (".lora_embedding_A", ".lora_embedding_B"),
                ):
                    if tag_a not in key:
                        continue
                    module = key.split(tag_a)[0]
                    kind = _writer_kind(module)
                    b_key = key.replace(tag_a, tag_b)
                    if kind is None or b_key not in headers:
                        continue
                    a = load_tensor(info, torch.float64)
                    b = load_tensor(headers[b_key], torch.float64)
                    if b.shape[0] != r.numel():
                        continue
                    fro, along = _lora_parts(a, b, scale, r)
                    mats.append(
                        MatrixAlignment(strip_prefix(module), _layer_of(module), kind, fro, along)
                    )
    elif len(paths) == 1 and not is_adapter_dir(paths[0]):
        source = "checkpoint files"
        base_h = {strip_prefix(k): v for k, v in read_headers(weight_files(base_dir)).items()}
        tuned_h = {strip_prefix(k): v for k, v in read_headers(weight_files(paths[0])).items()}
        for name, info in tuned_h.items():
            kind = _writer_kind(name)
            if kind is None or name not in base_h or not name.endswith("weight"):
                continue
            dw = load_tensor(info, torch.float64) - load_tensor(base_h[name], torch.float64)
            parts = _dense_parts(name, dw, r)
            if parts is None:
                continue
            mats.append(MatrixAlignment(name, _layer_of(name), kind, *parts))
    else:
        raise WbsafeError(
            "pass either one full checkpoint or adapter directories, not a mix", paths[0]
        )
    if not mats:
        raise WbsafeError("no matrix writing the residual stream was found in the update", paths[0])
    per: dict[str, list[float]] = {}
    for m in mats:
        key = "embed" if m.layer is None else str(m.layer)
        acc = per.setdefault(key, [0.0, 0.0])
        acc[0] += m.update_norm**2
        acc[1] += m.along_norm**2
    per_layer = {k: (math.sqrt(v[1] / v[0]) if v[0] > 0 else 0.0) for k, v in per.items()}
    tot = sum(m.update_norm**2 for m in mats)
    along_tot = sum(m.along_norm**2 for m in mats)
    overall = math.sqrt(along_tot / tot) if tot > 0 else 0.0
    return RefusalAlignment(overall, per_layer, tuple(mats), source)
