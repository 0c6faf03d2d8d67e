"""Causal tests of a candidate refusal direction in the base model.

A direction ``r`` is Float64[d_model] (a raw mean difference; unit-normalised where it is
projected out). :func:`ablation` projects it out of the residual stream at every layer,
:func:`addition` adds it to the stream entering one layer. :func:`clean_pass` scores the
unedited base once on the validation prompts (refusal scores Float64[n], first-token
log-probabilities Float64[n, vocab]); :func:`causal_effect` then measures one direction's
bypass, induce and KL against it, and :func:`random_bypass` the bypass of a random direction
of the same norm (the causal control). :func:`causal_rows` picks which candidates are tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wbsafe.capture.refusal_score import (
    first_token_logprobs,
    refusal_token_ids,
    scores_from_logprobs,
)

if TYPE_CHECKING:
    import torch

    from wbsafe.io.models import LoadedModel


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


def causal_rows(
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


@dataclass(frozen=True)
class CleanPass:
    """The unedited base on the validation prompts, shared by every causal test.

    ``clean_h``/``clean_s``: refusal scores Float64[n_h]/Float64[n_s] of the harmful/harmless
    prompts; ``lp_s``: first-token log-probabilities Float64[n_s, vocab] of the harmless ones.
    """

    texts_h: list[str]
    texts_s: list[str]
    ids: list[int]
    clean_h: torch.Tensor
    clean_s: torch.Tensor
    lp_s: torch.Tensor
    batch_size: int

    def scores(self, base: LoadedModel, texts: Sequence[str], edit: Any) -> torch.Tensor:
        """Refusal scores Float64[n] of ``texts`` with ``edit`` active."""
        lp = first_token_logprobs(base, texts, batch_size=self.batch_size, edit=edit)
        return scores_from_logprobs(lp, self.ids)


def clean_pass(
    base: LoadedModel, val_h: Sequence[Any], val_s: Sequence[Any], batch_size: int
) -> CleanPass:
    """Score the unedited ``base`` on validation harmful (``val_h``) and harmless prompts."""
    from wbsafe.capture.activations import prompt_texts

    ids = refusal_token_ids(base.tokenizer)
    texts_h, texts_s = prompt_texts(base, val_h), prompt_texts(base, val_s)
    clean_h = scores_from_logprobs(first_token_logprobs(base, texts_h, batch_size=batch_size), ids)
    lp_s = first_token_logprobs(base, texts_s, batch_size=batch_size)
    clean_s = scores_from_logprobs(lp_s, ids)
    return CleanPass(texts_h, texts_s, ids, clean_h, clean_s, lp_s, batch_size)


def causal_effect(base: LoadedModel, clean: CleanPass, r: Any, layer: int) -> dict[str, float]:
    """``bypass``/``induce``/``kl`` of direction ``r`` (Float64[d_model]) read at ``layer``.

    ``bypass``: mean drop of the refusal score of harmful prompts when ``r`` is ablated;
    ``induce``: mean rise on harmless prompts when it is added at ``layer``; ``kl``: mean
    KL(base || ablated) of the first response token on harmless prompts.
    """
    import torch

    bs = clean.batch_size
    with torch.no_grad():
        abl_h = clean.scores(base, clean.texts_h, ablation(base, r))
        lp_abl_s = first_token_logprobs(base, clean.texts_s, batch_size=bs, edit=ablation(base, r))
        add_s = clean.scores(base, clean.texts_s, addition(base, r, layer))
    lp_s = clean.lp_s
    kl = (lp_s.exp() * (lp_s - lp_abl_s)).sum(dim=-1).mean()
    return dict(
        bypass=float((clean.clean_h - abl_h).mean()),
        induce=float((add_s - clean.clean_s).mean()),
        kl=float(kl),
    )


def random_bypass(base: LoadedModel, clean: CleanPass, like: Any, seed: int) -> float:
    """Bypass of a seeded random direction with the norm of ``like`` (Float64[d_model])."""
    rng = np.random.default_rng(seed)
    rand = rng.standard_normal(like.shape)
    rand *= np.linalg.norm(like) / np.linalg.norm(rand)
    abl_rand = clean.scores(base, clean.texts_h, ablation(base, rand))
    return float((clean.clean_h - abl_rand).mean())
