"""Drift of a tuned model against the base's refusal directions (:func:`compare`).

The tuned (and, when available, the base) residual stream is captured at every
``blocks.{l}.hook_resid_pre`` site and the fit's positions: Float64[L, n, P, d_model],
projected onto the fit's unit directions Float64[L, P, d_model] to Float64[L, n, P]. Shifts
are per (layer, position), Float64[L, P], in units of the base's harmful-harmless separation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from wbsafe.analyses.refusal.probes import auroc
from wbsafe.capture.refusal_score import refusal_scores
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    from wbsafe.analyses.refusal.fit import RefusalDirectionFit
    from wbsafe.capture.activations import Activations
    from wbsafe.io.models import LoadedModel


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


def _stack(acts: Activations, n_layers: int) -> Any:
    """Float64[L, n, P, d_model] from captured ``resid_pre`` activations."""
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
