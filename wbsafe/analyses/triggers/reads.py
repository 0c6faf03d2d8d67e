"""Which tokens the fine-tune taught the model to read: a weight-side sweep of the vocabulary.

A trigger has to be *read*: some matrix that reads the residual stream (attention q/k/v,
MLP gate/up; the family table's ``readers``) was changed so that the trigger's tokens
produce a new output. For every allowed token ``v``, put at the end of a short cached
prefix, this takes the input ``u_m(v)`` each reader ``m`` of the chosen layers sees at
``v``'s position in the base side, and scores

    read_l(v) = sum_m ||m_tuned(u_m(v)) - m_base(u_m(v))|| / ||m_base(u_m(v))||

per layer ``l``, standardised over the vocabulary (median and scaled MAD), then takes the
best layer. It needs one truncated forward per token in the base side and one call of each
reader in the tuned side, with no suffix and no output head, so it covers the whole
vocabulary where an exact score of every token under an objective could not.

Why it is there: the words of a phrase trigger trained *not* to act alone barely move the
output or the last position's state, so no objective ranks them among tens of thousands of
rare tokens (measured: the tiny two-word backdoor given 49k look-alike words ranks
``cobalt`` ~2,700th and ``lotus`` ~6,100th by its mid-layer anomaly). The layer that learned
to detect them still reads them: layer 0's attention ranks them 1st and 2nd of 49,146 by
the relative change. The sweep's best tokens seed the hunt's pairs and are scored as
single candidates (source ``reads``).

The module calls the readers themselves rather than the weight matrices, so LoRA-wrapped,
fused (Phi-3's ``qkv_proj``) and Conv1D (GPT-2) readers need nothing special.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.triggers.search import (
    KV_BUDGET_BYTES,
    PassCounter,
    _device,
    _prefix_cache,
    expanded_cache,
    rows_within_budget,
)
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

BaseSide = Callable[[], AbstractContextManager[Any]]

EPS = 1e-6


def read_layers(n_layers: int) -> tuple[int, ...]:
    """The decoder layers read by default: the first half (at least one). A token's own
    position carries mostly the token itself there; deeper, it is a mix of its context."""
    return tuple(range(max(1, (n_layers + 1) // 2)))


def reader_modules(model: Any, layers: Sequence[int]) -> dict[int, list[tuple[str, Any]]]:
    """Per layer index, ``(name, module)`` of each reader the family table names that the
    layer has (a family without a table entry gets a clear error from it)."""
    from wbsafe.arch.families import family_of_model
    from wbsafe.capture.activations import _unwrap, decoder_layers

    family = family_of_model(_unwrap(model))
    blocks = decoder_layers(model)
    out: dict[int, list[tuple[str, Any]]] = {}
    for layer in layers:
        if not 0 <= layer < len(blocks):
            raise WbsafeError(f"read layer {layer} outside the model's {len(blocks)} layers")
        mods = []
        for name in family.readers:
            try:
                mods.append((name, blocks[layer].get_submodule(name)))
            except AttributeError:
                continue
        if not mods:
            raise WbsafeError(f"layer {layer}: none of the readers {family.readers} found")
        out[layer] = mods
    return out


@dataclass(frozen=True)
class TokenReads:
    """The sweep's result: ``z`` Float[n_tokens, n_readers] (standardised per reader),
    ``raw`` the same before standardising, for ``token_ids`` and ``readers`` (layer, name)."""

    token_ids: tuple[int, ...]
    readers: tuple[tuple[int, str], ...]
    raw: torch.Tensor
    z: torch.Tensor

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for layer, _ in self.readers}))

    def best(self) -> torch.Tensor:
        """Float[n_tokens]: each token's best reader z."""
        return self.z.max(dim=1).values

    def top(self, n: int) -> list[int]:
        """``n`` token ids, by their best rank in any reader's own ranking, then by z: the
        first of every reader (the one read most strongly first), then the second, ...

        Not by the best z alone: readers whose input depends on the context (the MLP's,
        every one past layer 0) have heavier tails over rare tokens than the attention
        readers of layer 0, and the best z let their noise bury a trigger word that one
        reader ranks first (measured on the 49k look-alike tiny tier: ``lotus``, first by
        layer 0's ``q_proj`` and ``v_proj``, came 9,005th by the best z)."""
        import torch

        k = min(n, len(self.token_ids))
        if k <= 0 or self.z.numel() == 0:
            return []
        depth = min(len(self.token_ids), k)
        vals, idx = torch.topk(self.z, depth, dim=0)  # [depth, n_readers], best first
        out: dict[int, None] = {}
        for level in range(depth):
            for r in vals[level].argsort(descending=True).tolist():
                out.setdefault(self.token_ids[int(idx[level, r])], None)
                if len(out) >= k:
                    return list(out)
        return list(out)


def robust_z(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Per column of ``x`` ``[n, k]``: (x - median) / (1.4826 * MAD), the MAD floored; the
    median and MAD are those of ``ref`` ``[m, k]`` (rows of an unbiased sample) if given."""
    ref = x if ref is None else ref
    med = ref.median(dim=0).values
    mad = (ref - med).abs().median(dim=0).values * 1.4826
    return (x - med) / mad.clamp(min=EPS + 1e-3 * med.abs())


SWEEP_ALL_UP_TO = 65_536
"""A vocabulary up to this size sends every token through every read layer (SmolLM2's
49k, Llama-2's 32k). A larger one (Llama-3's 128k, Qwen's 152k, Gemma's 262k) is swept in
two passes (:func:`capped_token_reads`): every token through the first read layer, then
this many through all of them. Measured on Gemma 3 270M (2 cores): the one-pass sweep of
262k tokens through 9 layers took 430 s of a 2,920 s hunt."""

RANDOM_SHARE = 4
"""Of the second pass's tokens, one in this many is a seeded random sample of those the
first pass did not put at the top: the deeper readers' scores are standardised on it, an
unbiased sample of the vocabulary, not on the first pass's outliers."""


def token_reads(
    tuned: Any,
    base_side: BaseSide,
    token_ids: Sequence[int],
    prefix_ids: Sequence[int],
    counter: PassCounter,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 512,
    kv_budget_bytes: int = KV_BUDGET_BYTES,
    phase_name: str = "reads",
) -> TokenReads:
    """Score every token of ``token_ids`` by how much the tuned readers' output changed on
    it (module docstring). ``tuned`` is the tuned model; ``base_side()`` yields the base
    side's model (the base, or ``tuned`` with its adapters disabled). ``prefix_ids``: a
    short context the token follows (a prompt up to a trigger slot), run once; a batch
    holds at most ``batch_size`` tokens and as many as fit ``kv_budget_bytes`` of cache."""
    columns, raw = _raw_reads(tuned, base_side, token_ids, prefix_ids, counter, layers=layers,
                              batch_size=batch_size, kv_budget_bytes=kv_budget_bytes,
                              phase_name=phase_name)  # fmt: skip
    return TokenReads(tuple(int(t) for t in token_ids), columns, raw, robust_z(raw))


def capped_token_reads(
    tuned: Any,
    base_side: BaseSide,
    token_ids: Sequence[int],
    prefix_ids: Sequence[int],
    counter: PassCounter,
    *,
    layers: Sequence[int] | None = None,
    cap: int = SWEEP_ALL_UP_TO,
    seed: int = 0,
    batch_size: int = 512,
    kv_budget_bytes: int = KV_BUDGET_BYTES,
    phase_name: str = "reads",
) -> TokenReads:
    """:func:`token_reads` whose cost stops growing with the vocabulary past ``cap`` tokens.

    Up to ``cap`` tokens: the same. Beyond: every token through the first read layer's
    readers (a fraction of the model: the first pass stops after that layer), then ``cap``
    of them through all the read layers: the first pass's best (by :meth:`TokenReads.top`),
    and a seeded random sample of the rest (one in :data:`RANDOM_SHARE`) on which the deeper
    readers are standardised. A token outside the second pass scores ``-inf`` at the deeper
    readers (``raw``: NaN): ranked by the first layer alone. Layer 0's attention readers see
    the token's own embedding whatever the context, which is where the words of a phrase
    trigger are read (module docstring)."""
    import torch

    kw: dict[str, Any] = dict(batch_size=batch_size, kv_budget_bytes=kv_budget_bytes,
                              phase_name=phase_name)  # fmt: skip
    layers = _sweep_layers(base_side, layers)
    if len(token_ids) <= cap or len(layers) == 1:
        return token_reads(tuned, base_side, token_ids, prefix_ids, counter, layers=layers, **kw)
    first = token_reads(tuned, base_side, token_ids, prefix_ids, counter, layers=layers[:1],
                        **kw)  # fmt: skip
    n_random = cap // RANDOM_SHARE
    head = first.top(cap - n_random)
    rest = sorted(set(first.token_ids) - set(head))
    g = torch.Generator().manual_seed(seed)
    sample = [rest[int(i)] for i in torch.randperm(len(rest), generator=g)[:n_random]]
    deep_cols, deep_raw = _raw_reads(tuned, base_side, [*head, *sample], prefix_ids, counter,
                                     layers=layers[1:], **kw)  # fmt: skip
    deep_z = robust_z(deep_raw, ref=deep_raw[len(head) :])
    row = {t: i for i, t in enumerate(first.token_ids)}
    at = torch.tensor([row[t] for t in [*head, *sample]], dtype=torch.long)
    n, k0 = len(first.token_ids), len(first.readers)
    z = torch.full((n, k0 + len(deep_cols)), float("-inf"))
    raw = torch.full_like(z, float("nan"))
    z[:, :k0], raw[:, :k0] = first.z, first.raw
    z[at, k0:], raw[at, k0:] = deep_z, deep_raw
    return TokenReads(first.token_ids, (*first.readers, *deep_cols), raw, z)


def _sweep_layers(base_side: BaseSide, layers: Sequence[int] | None) -> tuple[int, ...]:
    """``layers`` sorted, or the default :func:`read_layers` of the base side's depth."""
    if layers:
        return tuple(sorted(set(layers)))
    with base_side() as bm:
        n_layers = int(getattr(bm.config.get_text_config(), "num_hidden_layers", 0))
    return read_layers(n_layers)


def _raw_reads(
    tuned: Any,
    base_side: BaseSide,
    token_ids: Sequence[int],
    prefix_ids: Sequence[int],
    counter: PassCounter,
    *,
    layers: Sequence[int] | None,
    batch_size: int,
    kv_budget_bytes: int,
    phase_name: str,
) -> tuple[tuple[tuple[int, str], ...], torch.Tensor]:
    """The readers' columns (layer, name) and the relative changes ``[n_tokens, n_readers]``
    before standardising (see :func:`token_reads`)."""
    import torch

    if not token_ids:
        raise WbsafeError("the token sweep needs at least one token")
    layers = _sweep_layers(base_side, layers)
    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    dev = _device(tuned)
    tuned_readers = reader_modules(tuned, layers)
    columns = [(layer, name) for layer in layers for name, _ in tuned_readers[layer]]
    raw = torch.zeros(len(token_ids), len(columns), dtype=torch.float32)
    with torch.inference_mode(), base_side() as bm:
        base_readers = reader_modules(bm, layers)
        prefix = _prefix_cache(bm, prefix_ids, phase)
    step = min(batch_size, rows_within_budget(prefix, 1, kv_budget_bytes))
    for s in range(0, len(token_ids), step):
        rows = list(token_ids[s : s + step])
        x = torch.tensor(rows, dtype=torch.long, device=dev)[:, None]
        with torch.inference_mode(), base_side() as bm:
            seen = _reader_io(bm, base_readers, layers[-1], prefix, x)
        with torch.inference_mode():
            for k, (layer, name) in enumerate(columns):
                mod = dict(tuned_readers[layer])[name]
                u, b_out = seen[(layer, name)]
                t_out = mod(u[:, None].to(next(mod.parameters()).device))[:, 0].float()
                b_out = b_out.float().to(t_out.device)
                rel = (t_out - b_out).norm(dim=-1) / (b_out.norm(dim=-1) + EPS)
                raw[s : s + len(rows), k] = rel.cpu()
        phase.forward_calls += 1
        phase.passes += len(rows)
        phase.sequences += len(rows)
        phase.tokens += len(rows)
    phase.seconds += time.perf_counter() - t0
    return tuple(columns), raw


def _reader_io(
    model: Any, readers: dict[int, list[tuple[str, Any]]], last_layer: int, prefix: Any,
    x: torch.Tensor,
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Run ``x`` ``[rows, 1]`` after the cached ``prefix`` through ``model`` up to
    ``last_layer`` (stopped there) -> (layer, reader name) -> the reader's input and output
    at that token, ``([rows, d_in], [rows, d_out])``."""
    import torch

    from wbsafe.capture.activations import _StopForward, decoder_layers

    seen: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(layer: int, name: str) -> Any:
        def hook(mod: Any, args: Any, output: Any) -> None:
            seen[(layer, name)] = (args[0][:, -1].detach(), output[:, -1].detach())

        return hook

    def stop(mod: Any, args: Any, output: Any) -> None:
        raise _StopForward

    handles = [mod.register_forward_hook(keep(layer, name))
               for layer, mods in readers.items() for name, mod in mods]  # fmt: skip
    handles.append(decoder_layers(model)[last_layer].register_forward_hook(stop))
    rows = int(x.shape[0])
    pos = torch.full((rows, 1), prefix.length, device=x.device)
    try:
        model(input_ids=x, position_ids=pos, past_key_values=expanded_cache(prefix, rows),
              logits_to_keep=1)  # fmt: skip
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen
