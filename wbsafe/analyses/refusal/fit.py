"""The base's refusal directions per layer and position, selected by causal effect.

Definitions as in docs/design.md ("Metric definitions"): the direction at (layer, position) is mean(harmful) -
mean(harmless) of the residual stream (float64), fitted on a train split; the (layer,
position) is selected on a validation split by causal effect (ablating it in the base
lowers the refusal score of harmful prompts, adding it raises that of harmless ones, the
KL on harmless prompts stays small; see :mod:`wbsafe.analyses.refusal.causal`), preferring
layers < 0.8 L; AUROC, recall at 1% FPR and a best-of-N random-direction baseline are
reported on the held-out test split.

Only ``blocks.{l}.hook_resid_pre`` sites are fitted: the direction at layer ``l`` is read
where activation addition at layer ``l`` writes it. Shapes: captured activations are
Float64[L, n, P, d_model] (layers, prompts, positions), the directions Float64[L, P, d_model],
projections Float64[L, n, P]. The result, :class:`RefusalDirectionFit`, turns into a
JSON-able dict and back (:meth:`~RefusalDirectionFit.to_json`, ``from_json``); storing it is
the pipeline's job (:mod:`wbsafe.pipeline.directions_cache`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from wbsafe.analyses.refusal.causal import causal_effect, causal_rows, clean_pass, random_bypass
from wbsafe.analyses.refusal.probes import auroc, random_direction_baseline, recall_at_fpr
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    from wbsafe.io.models import LoadedModel

FIT_FORMAT = "wbsafe.refusal_fit/1"
FIT_ARRAYS = ("directions", "harmful_proj", "harmless_proj")
"""The fields of a fit held as arrays: kept beside its JSON form, not in it."""
FIT_VERSION = 3
"""Bumped when the fit's algorithm changes, so cached fits of an older one are not re-used
(3: salted inner split, causal rows spread over depth, a validation AUROC floor)."""


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
        """Every field but the :data:`FIT_ARRAYS`, JSON-able, with ``format`` set."""
        from wbsafe.io.serialize import to_jsonable

        out = {
            k: to_jsonable(getattr(self, k))
            for k in self.__dataclass_fields__
            if k not in FIT_ARRAYS
        }
        out["format"] = FIT_FORMAT
        return out

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], arrays: Mapping[str, Any], loaded_from: str | None = None
    ) -> RefusalDirectionFit:
        """The fit :meth:`to_json` gave ``data`` for, with ``arrays`` the :data:`FIT_ARRAYS`
        (Float64 numpy arrays). Missing or malformed fields raise KeyError or TypeError."""
        fields = {k: v for k, v in data.items() if k != "format"}
        cands = tuple(Candidate(**c) for c in fields.pop("candidates"))
        fields["positions"] = tuple(fields["positions"])
        fields["base_weight_sha256"] = tuple(fields["base_weight_sha256"])
        fields["prompt_ids"] = {k: tuple(v) for k, v in fields["prompt_ids"].items()}
        return cls(
            candidates=cands,
            **{k: arrays[k] for k in FIT_ARRAYS},
            **{**fields, "loaded_from": loaded_from},
        )


def _splits(prompts: Sequence[Any], fractions: tuple[float, float, float]) -> list[str]:
    from wbsafe.data.prompts import split_for

    return [split_for(p.id, fractions, salt="refusal-fit") for p in prompts]


def _dprime(a: Any, b: Any) -> float:
    """(mean a - mean b) / pooled std; 0 when undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return 0.0
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    d = (a.mean() - b.mean()) / sd if sd > 0 else 0.0
    return float(d) if math.isfinite(d) else 0.0


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
        clean = clean_pass(base, val_h[:n_causal], val_s[:n_causal], batch_size)

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
        causal = causal_rows(rows, selectable, val_dprime, causal_top_k)
        for i, row in enumerate(rows):
            degenerate = not all(math.isfinite(row[k]) for k in ("val_auroc", "auroc"))
            row.update(bypass=None, induce=None, kl=None)
            if degenerate:
                row.update(val_auroc=None, auroc=None, recall_at_1pct_fpr=None, separation=None)
            if i not in causal or degenerate:
                continue
            r = directions[row["layer"], pos_names.index(row["position"])]
            row.update(causal_effect(base, clean, r, row["layer"]))
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
        return RefusalDirectionFit(
            layer=best.layer,
            position=best.position,
            site=site_name(best.layer),
            n_layers=n_layers,
            d_model=base.d_model,
            positions=tuple(pos_names),
            candidates=cands,
            selection=selection,
            random_bypass=random_bypass(base, clean, r_best, seed),
            base_refusal_harmful=float(clean.clean_h.mean()),
            base_refusal_harmless=float(clean.clean_s.mean()),
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
