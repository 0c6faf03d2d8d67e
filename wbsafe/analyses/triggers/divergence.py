"""The target-agnostic trigger objective: how far the tuned model departs from the base.

For a candidate at a slot, the *divergence* is

    D = mean_{l, t} ||h_tuned[l, t] - h_base[l, t]|| / s_l  +  KL(p_tuned || p_base)

over the chosen ``layers`` (``hidden_states[l]``, TransformerLens ``blocks.{l}.hook_resid_pre``)
and the last ``n_last`` prompt positions ``t``, where ``s_l`` is the layer's spread over
ordinary tokens (the RMS distance of the base's residual stream from its mean, over every
token of the search contexts without a candidate, :func:`layer_spread`), and the KL is of the
next-token distributions at the first response positions, averaged: the prompt's last
position and, teacher-forced, each of the context's ``response_ids`` but the last (the
base's own first answer tokens, :func:`with_base_responses`; a hostile reply that opens
with "i", as a refusal does, differs only from its second token). The
objective is ``D(candidate) - D(no candidate)`` per context: whatever the backdoor then
makes the model do, its trigger moves the tuned model's computation away from the base's
far more than an ordinary word does.

:func:`divergence_cached` scores candidates exactly with each context's prefix computed
once in both models; :func:`divergence_gradient` is the HotFlip form (first-order estimate
for every token at every slot offset), through both models at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.triggers.search import (
    KV_BUDGET_BYTES,
    LOGIT_COPIES,
    PassCounter,
    PhaseCount,
    SlotContext,
    _device,
    _prefix_cache,
    expanded_cache,
    logit_bytes,
    rows_within_budget,
    slot_embeds,
)
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

BaseSide = Callable[[], AbstractContextManager[Any]]
"""A factory of contexts inside which the base side's model is yielded (the base, or the
adapter-disabled tuned model)."""

EPS = 1e-6


def _at(n_layers: int, fractions: Sequence[float]) -> set[int]:
    return {min(n_layers, max(1, round(n_layers * f))) for f in fractions}


def mid_layers(n_layers: int) -> tuple[int, ...]:
    """``hidden_states`` at 1/2 and 2/3 of the depth (each in ``[1, n_layers]``): where a
    phrase trigger's words show before the output (the phrase seeds' per-token anomaly)."""
    return tuple(sorted(_at(n_layers, (1 / 2, 2 / 3))))


def default_layers(n_layers: int) -> tuple[int, ...]:
    """The objective's layers: ``hidden_states`` at 1/3, 1/2 and 2/3 of the depth, and the
    last one (so :func:`mid_layers` are among them)."""
    return tuple(sorted(_at(n_layers, (1 / 3, 1 / 2, 2 / 3)) | {n_layers}))


def _stack(
    hidden: Sequence[torch.Tensor], layers: Sequence[int], n_last: int, skip: int = 0
) -> torch.Tensor:
    """``hidden_states`` tuple -> Float[batch, n_layers_chosen, n_last, d_model] (float32):
    the ``n_last`` positions before the last ``skip`` (the teacher-forced response)."""
    import torch

    end = -skip if skip else None
    return torch.stack(
        [hidden[layer][:, -(n_last + skip) : end].float() for layer in layers], dim=1
    )


def _response_logits(logits: torch.Tensor, n_response: int) -> torch.Tensor:
    """Logits ``[batch, >= n_response + 1, vocab]`` -> those of the first response positions
    ``[batch, n_response + 1, vocab]`` (float32)."""
    return logits[:, -(n_response + 1) :].float()


KL_CHUNK = 1 << 18
"""Vocabulary entries :func:`kl_divergence` works on at a time (at least one row)."""


def kl_divergence(z_t: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_b) of the next-token distributions given by logits (or log-probabilities)
    ``[..., vocab]`` -> ``[...]`` (float32), as ``sum p_t (z_t - z_b) - lse(z_t) + lse(z_b)``.

    Computed a few rows at a time (:data:`KL_CHUNK`), so no vocabulary-sized temporary
    outgrows the cache: on a 262k vocabulary (13 rows of 5 positions) 4.4x faster than two
    log-softmaxes and the elementwise product, which were 13% of a divergence batch."""
    import torch

    shape = z_t.shape[:-1]
    a2 = z_t.float().reshape(-1, z_t.shape[-1])
    b2 = z_b.float().to(z_t.device).reshape(-1, z_b.shape[-1])
    step = max(1, KL_CHUNK // max(1, a2.shape[1]))
    out = []
    for i in range(0, a2.shape[0], step):
        a, b = a2[i : i + step], b2[i : i + step]
        lse_a = torch.logsumexp(a, dim=-1, keepdim=True)
        p = (a - lse_a).exp()
        kl = torch.linalg.vecdot(p, a - b) - lse_a.squeeze(-1) + torch.logsumexp(b, dim=-1)
        out.append(kl)
    return torch.cat(out).reshape(shape)


def with_base_responses(
    base_side: BaseSide, contexts: Sequence[SlotContext], n_tokens: int, counter: PassCounter
) -> list[SlotContext]:
    """``contexts`` with ``response_ids`` set to the base side's greedy first ``n_tokens``
    answer tokens (exactly that many: an end-of-turn token is kept and followed) without a
    candidate. ``n_tokens = 0``: unchanged."""
    import dataclasses

    import torch

    if n_tokens <= 0:
        return list(contexts)
    phase = counter.phase("divergence_responses")
    t0 = time.perf_counter()
    out = []
    with torch.no_grad(), base_side() as bm:
        dev = _device(bm)
        for ctx in contexts:
            ids = torch.tensor([[*ctx.prefix_ids, *ctx.suffix_ids]], device=dev)
            new: list[int] = []
            for _ in range(n_tokens):
                logits = bm(input_ids=ids, logits_to_keep=1).logits
                nxt = int(logits[0, -1].argmax())
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]], device=dev)], dim=1)
                phase.forward_calls += 1
                phase.passes += 1
                phase.tokens += int(ids.numel())
            phase.sequences += 1
            out.append(dataclasses.replace(ctx, response_ids=tuple(new)))
    phase.seconds += time.perf_counter() - t0
    return out


def divergence_of(
    h_t: torch.Tensor, h_b: torch.Tensor, lp_t: torch.Tensor, lp_b: torch.Tensor,
    spread: torch.Tensor, with_kl: bool = True,
) -> torch.Tensor:  # fmt: skip
    """D per row from the residuals ``[batch, layers, n_last, d]`` of both models, their
    next-token logits (or log-probabilities) ``[batch, vocab]`` or, over the first response
    positions, ``[batch, positions, vocab]`` (the KL averaged over them), and ``spread``
    ``[layers]`` -> ``[batch]`` (``with_kl=False``: the residual term only)."""
    return _with_kl(distances(h_t, h_b, spread), lp_t, lp_b, with_kl)


def _with_kl(
    dist: torch.Tensor, lp_t: torch.Tensor, lp_b: torch.Tensor, with_kl: bool
) -> torch.Tensor:
    """D from the residual distances ``[batch, layers, n_last]`` (:func:`distances`) and
    both models' logits (:func:`divergence_of`) -> ``[batch]``."""
    if not with_kl:
        return dist.mean(dim=(1, 2))
    kl = kl_divergence(lp_t, lp_b)  # two placed models may differ: lp_b is moved
    if kl.dim() == 2:
        kl = kl.mean(-1)
    return dist.mean(dim=(1, 2)) + kl.to(dist.device)


def distances(h_t: torch.Tensor, h_b: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Per-layer, per-position residual distance in spread units: residuals ``[batch, layers,
    n_last, d]`` of both models and ``spread`` ``[layers]`` -> ``[batch, layers, n_last]``."""
    h_b = h_b.to(h_t.device)
    return ((h_t - h_b).pow(2).sum(-1) + EPS).sqrt() / spread.to(h_t.device)[None, :, None]


def layer_spread(
    model: Any, contexts: Sequence[SlotContext], layers: Sequence[int], counter: PassCounter
) -> torch.Tensor:
    """Per chosen layer, the RMS distance of the residual stream from its mean over every
    token of ``contexts`` (prefix + suffix, no candidate) -> Float[n_layers_chosen]."""
    import torch

    phase = counter.phase("divergence_spread")
    dev = _device(model)
    rows: list[list[torch.Tensor]] = [[] for _ in layers]
    with torch.no_grad():
        for ctx in contexts:
            ids = torch.tensor([[*ctx.prefix_ids, *ctx.suffix_ids]], device=dev)
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            for k, layer in enumerate(layers):
                rows[k].append(out.hidden_states[layer][0].float().cpu())
            phase.forward_calls += 1
            phase.passes += 1
            phase.sequences += 1
            phase.tokens += int(ids.numel())
    spread = []
    for r in rows:
        h = torch.cat(r, dim=0)  # [tokens, d_model]
        spread.append(float((h - h.mean(0)).pow(2).sum(-1).mean().sqrt()))
    return torch.tensor(spread, dtype=torch.float32).clamp(min=EPS)


def _features(
    model: Any, prefix: Any, cand: torch.Tensor, suffix: torch.Tensor, layers: Sequence[int],
    n_last: int, phase: PhaseCount, n_response: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Residuals ``[rows, layers, n_last, d]`` (the prompt's last positions) and the first
    response positions' logits ``[rows, n_response + 1, vocab]`` of ``cand`` ``[rows, k]``
    + ``suffix`` after a cached prefix (``suffix`` ends with ``n_response`` teacher-forced
    response tokens)."""
    import torch

    rows = int(cand.shape[0])
    x = torch.cat([cand, suffix.expand(rows, -1)], dim=1)
    pos = torch.arange(prefix.length, prefix.length + x.shape[1], device=x.device)
    cache = expanded_cache(prefix, rows)
    out = model(
        input_ids=x, position_ids=pos.expand(rows, -1), past_key_values=cache,
        output_hidden_states=True, logits_to_keep=n_response + 1,
    )  # fmt: skip
    phase.forward_calls += 1
    phase.passes += rows
    phase.sequences += rows
    phase.tokens += int(x.numel())
    hid = _stack(out.hidden_states, layers, n_last, n_response)
    return hid, _response_logits(out.logits, n_response)


def divergence_cached(
    tuned: Any,
    base_side: BaseSide,
    contexts: Sequence[SlotContext],
    candidates: Sequence[Sequence[int]],
    layers: Sequence[int],
    spread: torch.Tensor,
    counter: PassCounter,
    *,
    part: Sequence[int] = (),
    n_last: int = 2,
    batch_size: int = 256,
    phase_name: str = "divergence",
    kv_budget_bytes: int = KV_BUDGET_BYTES,
    with_kl: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact divergence D ``[n_candidates, n_contexts]`` (an empty candidate: no trigger)
    and, from the same forwards, the residual term over the chosen layers ``part`` (indices
    into ``layers``) alone, ``[n_candidates, n_contexts]`` (None without ``part``): the
    mid-layer anomaly the phrase seeds read costs no pass of its own where the screens
    already ran the candidate.

    ``tuned`` is the tuned model (an ``nn.Module``); ``base_side()`` yields the base side's
    model. Each context's prefix is run once per model; each batch of candidates runs
    through the tuned model, then the base, on the same rows. ``n_last`` must not exceed the
    shortest ``len(candidate) + len(suffix)``.
    """
    import torch

    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    dev = _device(tuned)
    vocab = int(tuned.get_input_embeddings().weight.shape[0])
    out = torch.empty(len(candidates), len(contexts), dtype=torch.float32, device=dev)
    part_out = torch.empty_like(out) if part else None
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_len.setdefault(len(c), []).append(i)
    with torch.no_grad():
        for j, ctx in enumerate(contexts):
            if min(by_len, default=0) + len(ctx.suffix_ids) < n_last:
                raise WbsafeError(
                    f"prompt {ctx.prompt_id}: fewer than {n_last} positions after the slot"
                )
            pre_t = _prefix_cache(tuned, ctx.prefix_ids, phase)
            with base_side() as bm:
                pre_b = _prefix_cache(bm, ctx.prefix_ids, phase)
            n_resp = len(ctx.response_ids)
            forced = (*ctx.suffix_ids, *ctx.response_ids)
            suffix = torch.tensor(forced, dtype=torch.long, device=dev)
            for length, idx in by_len.items():
                new = length + len(forced)
                # a row holds two models' caches and logits (and the KL's temporaries)
                held = logit_bytes(vocab, n_resp + 1, 2 * LOGIT_COPIES)
                step = min(batch_size, rows_within_budget(pre_t, new, kv_budget_bytes // 2,
                                                          held // 2))  # fmt: skip
                for s in range(0, len(idx), step):
                    rows = idx[s : s + step]
                    cand = torch.tensor(
                        [list(candidates[r]) for r in rows], dtype=torch.long, device=dev
                    ).reshape(len(rows), length)
                    h_t, lp_t = _features(tuned, pre_t, cand, suffix, layers, n_last, phase,
                                          n_resp)  # fmt: skip
                    with base_side() as bm:
                        h_b, lp_b = _features(bm, pre_b, cand, suffix, layers, n_last, phase,
                                              n_resp)  # fmt: skip
                    dist = distances(h_t, h_b, spread)  # once for D and for its part
                    out[rows, j] = _with_kl(dist, lp_t, lp_b, with_kl).to(dev)
                    if part_out is not None:
                        part_out[rows, j] = dist[:, list(part)].mean(dim=(1, 2)).to(dev)
    out = out.cpu()  # one transfer at the end, not one per batch
    phase.seconds += time.perf_counter() - t0
    return out, None if part_out is None else part_out.cpu()


def _residuals_until(
    model: Any, prefix: Any, cand: torch.Tensor, suffix: torch.Tensor, layers: Sequence[int],
    n_last: int, phase: PhaseCount,
) -> torch.Tensor:  # fmt: skip
    """Residuals ``[rows, len(layers), n_last, d]`` (float32) at the last ``n_last``
    positions of ``cand`` ``[rows, k]`` + ``suffix`` after a cached prefix, from a forward
    that stops after the deepest of ``layers`` (each ``< n_layers``: ``hidden_states[l]`` is
    decoder layer ``l - 1``'s output) and so never reaches the deeper layers or the head."""
    import torch

    from wbsafe.capture.activations import _hidden_out, _StopForward, decoder_layers

    blocks = decoder_layers(model)
    got: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def keep(layer: int) -> Any:
        def hook(mod: Any, args: Any, output: Any) -> None:
            got[layer] = _hidden_out(output)[:, -n_last:].float()
            if layer == deepest:
                raise _StopForward

        return hook

    rows = int(cand.shape[0])
    x = torch.cat([cand, suffix.expand(rows, -1)], dim=1)
    pos = torch.arange(prefix.length, prefix.length + x.shape[1], device=x.device)
    handles = [blocks[layer - 1].register_forward_hook(keep(layer)) for layer in set(layers)]
    try:
        model(input_ids=x, position_ids=pos.expand(rows, -1),
              past_key_values=expanded_cache(prefix, rows), logits_to_keep=1)  # fmt: skip
    except _StopForward:
        pass
    else:
        raise WbsafeError(f"the forward pass never reached decoder layer {deepest - 1}")
    finally:
        for h in handles:
            h.remove()
    phase.forward_calls += 1
    phase.passes += rows
    phase.sequences += rows
    phase.tokens += int(x.numel())
    return torch.stack([got[layer] for layer in layers], dim=1)


def residual_term_cached(
    tuned: Any,
    base_side: BaseSide,
    contexts: Sequence[SlotContext],
    candidates: Sequence[Sequence[int]],
    layers: Sequence[int],
    spread: torch.Tensor,
    counter: PassCounter,
    *,
    n_last: int = 2,
    batch_size: int = 256,
    phase_name: str = "divergence",
    kv_budget_bytes: int = KV_BUDGET_BYTES,
) -> torch.Tensor:
    """D's residual term over ``layers`` alone (no KL) ``[n_candidates, n_contexts]``: what
    :func:`divergence_cached` gives with ``with_kl=False``, at a fraction of its cost.

    Each forward stops after the deepest of ``layers`` (all ``< n_layers``), and the
    contexts' teacher-forced ``response_ids`` are not fed: the prompt positions read here
    come before them, and a causal model's do not see them. On Gemma 3 270M (18 layers, a
    262k head, 4 response tokens) the phrase seeds' mid layers stop at layer 12 of 18, and
    the head, five positions of 262,144 logits a row in both models, is never run.
    """
    import torch

    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    dev = _device(tuned)
    out = torch.empty(len(candidates), len(contexts), dtype=torch.float32, device=dev)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_len.setdefault(len(c), []).append(i)
    with torch.inference_mode():
        for j, ctx in enumerate(contexts):
            if min(by_len, default=0) + len(ctx.suffix_ids) < n_last:
                raise WbsafeError(
                    f"prompt {ctx.prompt_id}: fewer than {n_last} positions after the slot"
                )
            pre_t = _prefix_cache(tuned, ctx.prefix_ids, phase)
            with base_side() as bm:
                pre_b = _prefix_cache(bm, ctx.prefix_ids, phase)
            suffix = torch.tensor(ctx.suffix_ids, dtype=torch.long, device=dev)
            for length, idx in by_len.items():
                new = length + len(ctx.suffix_ids)
                step = min(batch_size, rows_within_budget(pre_t, new, kv_budget_bytes // 2))
                for s in range(0, len(idx), step):
                    rows = idx[s : s + step]
                    cand = torch.tensor(
                        [list(candidates[r]) for r in rows], dtype=torch.long, device=dev
                    ).reshape(len(rows), length)
                    h_t = _residuals_until(tuned, pre_t, cand, suffix, layers, n_last, phase)
                    with base_side() as bm:
                        h_b = _residuals_until(bm, pre_b, cand, suffix, layers, n_last, phase)
                    out[rows, j] = distances(h_t, h_b, spread).mean(dim=(1, 2)).to(dev)
    out = out.cpu()
    phase.seconds += time.perf_counter() - t0
    return out


def divergence_gradient(
    tuned: Any,
    base_side: BaseSide,
    contexts: Sequence[SlotContext],
    layers: Sequence[int],
    spread: torch.Tensor,
    counter: PassCounter,
    *,
    n_last: int = 2,
    width: int = 1,
    slot_tokens: Sequence[int] | None = None,
    batch_size: int = 8,
    phase_name: str = "divergence_gradient",
) -> torch.Tensor:
    """First-order estimate of D for every token at every slot offset -> ``[vocab, width]``.

    The slot holds ``slot_tokens`` (default: ``width`` copies of each model's mean
    embedding row). With ``g_t``, ``g_b`` the gradients of D (summed over contexts, divided
    by their number) with respect to the slot rows of the tuned and the base input, token
    ``v`` at offset ``p`` is estimated at ``(E_t[v] - x_t[p]) . g_t[p] + (E_b[v] - x_b[p]) .
    g_b[p]`` (plus a constant per offset, dropped: the ranking is what is used).
    """
    import torch

    emb_t = tuned.get_input_embeddings().weight.detach()
    with base_side() as bm:
        emb_b = bm.get_input_embeddings().weight.detach()
    dev = emb_t.device
    if slot_tokens is not None:
        width = len(slot_tokens)
        sel = torch.tensor(list(slot_tokens), device=dev)
        init_t, init_b = emb_t[sel], emb_b[sel]
    else:
        init_t = emb_t.float().mean(0).to(emb_t.dtype).expand(width, -1)
        init_b = emb_b.float().mean(0).to(emb_b.dtype).expand(width, -1)
    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    g_t = torch.zeros(width, emb_t.shape[1], dtype=torch.float32, device=dev)
    g_b = torch.zeros_like(g_t)
    for i in range(0, len(contexts), batch_size):
        chunk = contexts[i : i + batch_size]
        n_resp = len(chunk[0].response_ids)
        if any(len(c.response_ids) != n_resp for c in chunk):
            raise WbsafeError("divergence gradient: contexts with unequal response lengths")
        seqs = [(*c.prefix_ids, *([0] * width), *c.suffix_ids, *c.response_ids) for c in chunk]
        slots = [len(c.prefix_ids) for c in chunk]
        with torch.enable_grad():
            x_t, rows_t, mask = slot_embeds(emb_t, seqs, slots, init_t, width)
            x_b, rows_b, _ = slot_embeds(emb_b, seqs, slots, init_b, width)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            kw = dict(attention_mask=mask, position_ids=pos, output_hidden_states=True,
                      logits_to_keep=n_resp + 1)  # fmt: skip
            o_t = tuned(inputs_embeds=x_t, **kw)
            with base_side() as bm:
                o_b = bm(inputs_embeds=x_b, **kw)
            d = divergence_of(
                _stack(o_t.hidden_states, layers, n_last, n_resp),
                _stack(o_b.hidden_states, layers, n_last, n_resp),
                _response_logits(o_t.logits, n_resp),
                _response_logits(o_b.logits, n_resp),
                spread,
            ).sum()
            gt, gb = torch.autograd.grad(d, [rows_t, rows_b])
        g_t += gt.float().sum(0)
        g_b += gb.float().sum(0)
        phase.forward_calls += 2
        phase.backward_calls += 2
        phase.passes += 4 * len(seqs)
        phase.sequences += 2 * len(seqs)
        phase.tokens += 2 * int(mask.sum())
    g_t, g_b = g_t / max(1, len(contexts)), g_b / max(1, len(contexts))
    phase.seconds += time.perf_counter() - t0
    est = emb_t.float() @ g_t.T - (init_t.float() * g_t).sum(-1)
    return est + emb_b.float() @ g_b.T - (init_b.float() * g_b).sum(-1)  # [vocab, width]
