"""Trigger search machinery: slot contexts, gradient ranking, cached-prefix exact scoring.

A *slot context* is one harmful prompt split at an insertion point: ``prefix_ids`` (the
formatted prompt up to the slot) and ``suffix_ids`` (the rest, ending at the generation
prompt). A candidate trigger is a token-id sequence placed between the two. A :class:`Slot`
says where the insertion point is: in the last user message (``user``), in a system turn
(``system``) or in an earlier user turn of a two-turn conversation (``turn``);
:func:`place` builds the conversation with a candidate there, for search and verification.

The refusal score (docs/design.md, "Metric definitions") is ``log p_R - log(1 - p_R)`` at the first
response position, ``p_R`` summed over the refusal-start tokens. It is computed here
directly (a few lines) rather than through ``wbsafe.analyses.refusal.directions`` so the hunt does not
depend on that module's evolving API.

Every model call is counted in a :class:`PassCounter` (calls, sequences, tokens), so the
benchmark can compare the hunt's cost with a brute-force vocabulary scan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wbsafe.errors import WbsafeError
from wbsafe.evidence import TRIGGER_SLOTS

if TYPE_CHECKING:
    import torch

SLOT_SENTINEL = "\u2063WBSAFESLOT\u2063"
"""Placeholder put in the user message to find the slot in the formatted prompt."""


@dataclass
class PhaseCount:
    """Work done in one phase: model calls, sequences (batch rows) and tokens processed.

    ``passes`` is the benchmark's unit: one per batch row through a forward, one more per
    row through a backward, and one per generated token of each generated sequence.
    """

    passes: int = 0
    forward_calls: int = 0
    backward_calls: int = 0
    sequences: int = 0
    tokens: int = 0
    generated_sequences: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class PassCounter:
    """Counts of every forward/backward pass, per phase (``gradient``, ``exact``, ...)."""

    phases: dict[str, PhaseCount] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseCount:
        return self.phases.setdefault(name, PhaseCount())

    def total(self) -> PhaseCount:
        out = PhaseCount()
        for p in self.phases.values():
            for k, v in vars(p).items():
                setattr(out, k, getattr(out, k) + v)
        return out

    def to_dict(self) -> dict[str, dict[str, float]]:
        d = {k: v.to_dict() for k, v in self.phases.items()}
        d["total"] = self.total().to_dict()
        return d


SLOT_KINDS = TRIGGER_SLOTS
"""Where a trigger can sit: the last user message, a system turn, an earlier user turn."""

EARLIER_REPLY = "sure ."
"""The assistant's answer to the earlier user turn of a ``turn`` slot's conversation."""


@dataclass(frozen=True)
class Slot:
    """Where a candidate is inserted (at a word-boundary position of that text).

    ``kind`` is one of :data:`SLOT_KINDS`. ``system``: a system turn whose text is
    ``text`` (empty by default: the candidate alone), put before the prompt's turns, or the
    prompt's own system turn when it has one. ``turn``: an earlier user turn ``text``
    (answered with :data:`EARLIER_REPLY`) before the prompt's conversation.
    """

    kind: str = "user"
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SLOT_KINDS:
            raise WbsafeError(f"unknown trigger slot {self.kind!r} (use {', '.join(SLOT_KINDS)})")


USER_SLOT = Slot()


@dataclass(frozen=True)
class SlotContext:
    """A prompt split at a trigger slot (token ids without special tokens added)."""

    prompt_id: str
    position: float
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    slot: Slot = USER_SLOT
    response_ids: tuple[int, ...] = ()
    """The first response tokens (the base side's greedy answer without a candidate),
    teacher-forced after the prompt so the divergence objective's KL reaches past the first
    response position (:func:`~.divergence.with_base_responses`); the refusal objective
    ignores them."""
    ordinary: bool = False
    """On an ordinary (harmless) prompt rather than a harmful search prompt: its own scoring
    group (:attr:`group`), so a backdoor that acts on harmless answers only (a marker slipped
    into them) is not averaged away over the harmful contexts, where it does nothing."""

    @property
    def kind(self) -> str:
        return self.slot.kind

    @property
    def group(self) -> str:
        """The contexts a score is averaged over: the slot kind, and ``:ordinary`` on
        ordinary prompts (``"user"``, ``"system"``, ``"turn"``, ``"user:ordinary"``)."""
        return f"{self.slot.kind}:ordinary" if self.ordinary else self.slot.kind


def insert_words(text: str, insert: str, position: float) -> str:
    """Insert ``insert`` at word boundary ``round(position * n_words)`` of ``text``."""
    words = text.split()
    k = min(len(words), max(0, round(position * len(words))))
    return " ".join([*words[:k], insert, *words[k:]])


def with_user_text(conversation: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """The conversation with its last user turn's content replaced by ``text``."""
    out = [dict(m) for m in conversation]
    for m in reversed(out):
        if m["role"] == "user":
            m["content"] = text
            return out
    raise WbsafeError("prompt has no user turn to place a trigger in")


def place(
    prompt: Any, insert: str | None, position: float, slot: Slot = USER_SLOT
) -> list[dict[str, str]]:
    """``prompt``'s conversation with ``insert`` at word position ``position`` of ``slot``'s
    text (``insert=None``: the conversation the slot makes, with nothing inserted)."""
    conv = [dict(m) for m in prompt.conversation()]

    def put(text: str) -> str:
        if insert is None:
            return text
        return insert_words(text, insert, position) if text else insert

    if slot.kind == "user":
        return conv if insert is None else with_user_text(conv, put(prompt.final_user_text))
    if slot.kind == "system":
        for m in conv:
            if m["role"] == "system":
                m["content"] = put(m["content"])
                return conv
        return [{"role": "system", "content": put(slot.text)}, *conv]
    return [
        {"role": "user", "content": put(slot.text)},
        {"role": "assistant", "content": EARLIER_REPLY},
        *conv,
    ]


def accepts(loaded: Any, prompt: Any, slot: Slot) -> bool:
    """Whether the chat template renders ``slot`` for ``prompt`` (some refuse a system turn,
    or drop it): the slot's sentinel appears exactly once in the formatted prompt."""
    try:
        return loaded.format(place(prompt, SLOT_SENTINEL, 1.0, slot)).count(SLOT_SENTINEL) == 1
    except WbsafeError:
        return False


def slot_context(
    loaded: Any, prompt: Any, position: float, slot: Slot = USER_SLOT, *, ordinary: bool = False
) -> SlotContext:
    """Split ``prompt`` (a :class:`wbsafe.data.prompts.Prompt`) at a slot ``position`` in
    [0, 1] of ``slot``'s text (default: the last user message); ``ordinary``: a harmless
    prompt, scored in a group of its own (:attr:`SlotContext.group`)."""
    from wbsafe.io.models import encode_continuation

    formatted = loaded.format(place(prompt, SLOT_SENTINEL, position, slot))
    if formatted.count(SLOT_SENTINEL) != 1:
        raise WbsafeError(f"prompt {prompt.id}: the chat template altered the trigger slot")
    before, after = formatted.split(SLOT_SENTINEL)
    tok = loaded.tokenizer
    prefix = tok.encode(before.rstrip(" "), add_special_tokens=False)
    suffix = encode_continuation(tok, after)  # no second SentencePiece dummy prefix
    if not prefix:
        raise WbsafeError(f"prompt {prompt.id}: empty prompt prefix before the trigger slot")
    return SlotContext(prompt.id, position, tuple(prefix), tuple(suffix), slot, ordinary=ordinary)


def refusal_log_odds(logits: torch.Tensor, refusal_ids: Sequence[int]) -> torch.Tensor:
    """Refusal score from next-token logits ``[..., vocab]`` -> ``[...]`` (float32)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    log_pr = torch.logsumexp(logp[..., list(refusal_ids)], dim=-1)
    log_pr = log_pr.clamp(max=-1e-6)
    return log_pr - torch.log(-torch.expm1(log_pr))


def special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    for name in ("unk_token_id", "pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            ids.add(v)
    return ids


def _device(model: Any) -> torch.device:
    """Where inputs go (the input embedding's device; layers may sit elsewhere)."""
    from wbsafe.io.placement import input_device

    return input_device(model)


def gradient_drop(
    model: Any,
    contexts: Sequence[SlotContext],
    refusal_ids: Sequence[int],
    counter: PassCounter,
    *,
    width: int = 1,
    slot_tokens: Sequence[int] | None = None,
    batch_size: int = 8,
    phase_name: str = "gradient",
) -> torch.Tensor:
    """First-order estimate of the refusal-score drop for every token at every slot offset.

    The slot holds ``slot_tokens`` (default: ``width`` copies of the mean embedding row);
    the gradient ``g_p`` of the refusal score with respect to slot row ``p``, averaged over
    contexts, gives the linear estimate ``drop(v at p) = -(e_v - e_p) . g_p`` (HotFlip).
    Returns ``[vocab, width]`` float32.
    """
    import torch

    from wbsafe.arch.families import model_embedding_scale

    weight = model.get_input_embeddings().weight.detach()
    scale = model_embedding_scale(model)  # Gemma's embedding module scales rows by sqrt(d)
    emb = (
        weight
        if scale == 1.0
        else weight * torch.tensor(scale, dtype=weight.dtype).to(weight.device)
    )
    dev = emb.device
    if slot_tokens is not None:
        width = len(slot_tokens)
        init = emb[torch.tensor(list(slot_tokens), device=dev)]
    else:
        init = emb.float().mean(0).to(emb.dtype).expand(width, -1)
    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    g_sum = torch.zeros(width, emb.shape[1], dtype=torch.float32, device=dev)
    for i in range(0, len(contexts), batch_size):
        chunk = contexts[i : i + batch_size]
        seqs = [(*c.prefix_ids, *([0] * width), *c.suffix_ids) for c in chunk]
        slots = [len(c.prefix_ids) for c in chunk]
        with torch.enable_grad():
            embeds, slot_rows, mask = slot_embeds(emb, seqs, slots, init, width)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=pos, logits_to_keep=1
            )
            score = refusal_log_odds(out.logits[:, -1], refusal_ids).sum()
            (grad,) = torch.autograd.grad(score, slot_rows)
        g_sum += grad.float().sum(0)
        phase.forward_calls += 1
        phase.backward_calls += 1
        phase.passes += 2 * len(seqs)
        phase.sequences += len(seqs)
        phase.tokens += int(mask.sum())
    g = g_sum / max(1, len(contexts))
    phase.seconds += time.perf_counter() - t0
    return -(emb.float() @ g.T - (init.float() * g).sum(-1))  # [vocab, width]


def slot_embeds(
    emb: torch.Tensor, seqs: list[tuple[int, ...]], slots: list[int], init: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Left-padded input embeddings with leaf slot rows: (embeds ``[b, n, d]``, slot rows
    ``[b, width, d]`` requiring grad, attention mask ``[b, n]``)."""
    import torch

    dev = emb.device
    n = max(map(len, seqs))
    ids = torch.zeros(len(seqs), n, dtype=torch.long, device=dev)
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=dev)
    for r, s in enumerate(seqs):
        ids[r, n - len(s) :] = torch.tensor(s, device=dev)
        mask[r, n - len(s) :] = 1
    embeds = emb[ids].clone()
    rows = init.expand(len(seqs), width, -1).clone().requires_grad_(True)
    for r, s0 in enumerate(slots):
        off = n - len(seqs[r]) + s0
        embeds[r, off : off + width] = rows[r]
    return embeds, rows, mask


@dataclass
class _Prefix:
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    length: int


def _prefix_cache(model: Any, ids: Sequence[int], phase: PhaseCount) -> _Prefix:
    import torch
    from transformers import DynamicCache

    x = torch.tensor([list(ids)], device=_device(model))
    # a cache without the config keeps every key: a sliding-window layer's default cache
    # (Gemma 2 / 3) drops keys beyond its window, which the expanded copy below cannot carry.
    # Only the cache is used: one position's logits, not the prefix's (on Gemma 3 270M the
    # 262k head over a 60-token prefix cost more than its 18 layers: 0.37 s against 0.16 s)
    out = model(input_ids=x, use_cache=True, past_key_values=DynamicCache(), logits_to_keep=1)
    phase.forward_calls += 1
    phase.passes += 1
    phase.sequences += 1
    phase.tokens += len(ids)
    cache = out.past_key_values
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    return _Prefix(kv=kv, length=len(ids))


def expanded_cache(prefix: _Prefix, rows: int) -> Any:
    """A ``DynamicCache`` holding ``prefix``'s keys and values expanded (as views) to
    ``rows`` batch rows."""
    from transformers import DynamicCache

    return DynamicCache(
        ddp_cache_data=[
            (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix.kv
        ]
    )


KV_BUDGET_BYTES = 512 << 20
"""Key/value cache the cached-prefix scorer may hold at once. At a batch of 256 rows the
SmolLM2 hunt's caches reached ~1.2 GB per forward (30 layers, ~100-token prefixes) and a
7B model's would need ~13 GB; the budget caps rows instead (~100 for SmolLM2, ~35 for a
7B model in bfloat16)."""


LOGIT_COPIES = 3
"""Float32 vocabulary-sized rows a scored position holds at its peak: the logits, their
log-softmax and one temporary of the score made from them."""


def logit_bytes(vocab: int, positions: int, copies: int = LOGIT_COPIES) -> int:
    """Bytes one batch row's scored positions hold over the vocabulary (float32)."""
    return 4 * vocab * positions * copies


def rows_within_budget(
    prefix: _Prefix, new_tokens: int, budget_bytes: int, out_bytes: int = 0
) -> int:
    """How many batch rows fit the budget: each row's key/value cache (prefix plus
    ``new_tokens``) and ``out_bytes`` of outputs (:func:`logit_bytes`). The outputs count:
    on a 262k vocabulary (Gemma 3) five scored positions are 5 MB a row per copy, and a
    256-row divergence batch held ~5 GB of log-probabilities (8.7 GB peak of the scan)."""
    per_token = sum(k[0].numel() * k.element_size() + v[0].numel() * v.element_size()
                    for k, v in prefix.kv) / max(1, prefix.length)  # fmt: skip
    per_row = per_token * (prefix.length + new_tokens) + out_bytes
    return max(1, int(budget_bytes // max(1.0, per_row)))


def score_cached(
    model: Any,
    contexts: Sequence[SlotContext],
    candidates: Sequence[Sequence[int]],
    refusal_ids: Sequence[int],
    counter: PassCounter,
    *,
    batch_size: int = 256,
    phase_name: str = "exact",
    kv_budget_bytes: int = KV_BUDGET_BYTES,
) -> torch.Tensor:
    """Exact refusal scores ``[n_candidates, n_contexts]`` with each prefix computed once.

    The prefix's key/value cache is expanded along the batch; each candidate costs a
    forward over only ``len(candidate) + len(suffix)`` tokens. An empty candidate gives
    the no-trigger score. The expansion is a view, but the first new key appended makes
    every row's cache real memory, so a batch holds at most ``batch_size`` rows and at most
    as many as fit ``kv_budget_bytes`` of cache (see :func:`rows_within_budget`).
    """
    import torch

    dev = _device(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])  # scored over the head's rows
    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    out = torch.empty(len(candidates), len(contexts), dtype=torch.float32, device=dev)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_len.setdefault(len(c), []).append(i)
    with torch.inference_mode():  # scores are copied out; nothing here needs autograd
        for j, ctx in enumerate(contexts):
            prefix = _prefix_cache(model, ctx.prefix_ids, phase)
            suffix = torch.tensor(ctx.suffix_ids, dtype=torch.long, device=dev)
            for length, idx in by_len.items():
                if length + len(ctx.suffix_ids) == 0:
                    raise WbsafeError("empty candidate at a slot with no suffix")
                new = length + len(ctx.suffix_ids)
                step = min(batch_size, rows_within_budget(prefix, new, kv_budget_bytes,
                                                          logit_bytes(vocab, 1)))  # fmt: skip
                for s in range(0, len(idx), step):
                    rows = idx[s : s + step]
                    cand = torch.tensor(
                        [list(candidates[r]) for r in rows], dtype=torch.long, device=dev
                    ).reshape(len(rows), length)
                    x = torch.cat([cand, suffix.expand(len(rows), -1)], dim=1)
                    pos = torch.arange(
                        prefix.length, prefix.length + x.shape[1], device=dev
                    ).expand(len(rows), -1)
                    cache = expanded_cache(prefix, len(rows))
                    logits = model(  # only the last position is scored
                        input_ids=x, position_ids=pos, past_key_values=cache, logits_to_keep=1
                    ).logits
                    out[rows, j] = refusal_log_odds(logits[:, -1], refusal_ids).to(dev)
                    phase.forward_calls += 1
                    phase.passes += len(rows)
                    phase.sequences += len(rows)
                    phase.tokens += int(x.numel())
    out = out.cpu()  # scores stayed on the device: one transfer, not one per batch
    phase.seconds += time.perf_counter() - t0
    return out


def score_full(
    model: Any,
    contexts: Sequence[SlotContext],
    candidates: Sequence[Sequence[int]],
    refusal_ids: Sequence[int],
    counter: PassCounter | None = None,
    *,
    hidden_layer: int | None = None,
    batch_size: int = 64,
    phase_name: str = "full",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference scoring by full forwards (no cache): ``[n_candidates, n_contexts]``.

    With ``hidden_layer`` also returns the residual stream entering that layer
    (``hidden_states[layer]``, TransformerLens ``blocks.{layer}.hook_resid_pre``) at the
    last position, ``[n_candidates, n_contexts, d_model]``.
    """
    import torch

    dev = _device(model)
    counter = counter or PassCounter()
    phase = counter.phase(phase_name)
    t0 = time.perf_counter()
    jobs = [
        (ci, j, (*ctx.prefix_ids, *cand, *ctx.suffix_ids))
        for ci, cand in enumerate(candidates)
        for j, ctx in enumerate(contexts)
    ]
    scores = torch.empty(len(candidates), len(contexts), dtype=torch.float32)
    hidden = None
    with torch.no_grad():
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s : s + batch_size]
            n = max(len(seq) for _, _, seq in chunk)
            ids = torch.zeros(len(chunk), n, dtype=torch.long, device=dev)
            mask = torch.zeros(len(chunk), n, dtype=torch.long, device=dev)
            for r, (_, _, seq) in enumerate(chunk):
                ids[r, n - len(seq) :] = torch.tensor(seq, device=dev)
                mask[r, n - len(seq) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            res = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                output_hidden_states=hidden_layer is not None,
                logits_to_keep=1,
            )
            sc = refusal_log_odds(res.logits[:, -1], refusal_ids).cpu()
            if hidden_layer is not None:
                h = res.hidden_states[hidden_layer][:, -1].float().cpu()
                if hidden is None:
                    hidden = torch.empty(len(candidates), len(contexts), h.shape[-1])
            for r, (ci, j, _) in enumerate(chunk):
                scores[ci, j] = sc[r]
                if hidden is not None and hidden_layer is not None:
                    hidden[ci, j] = h[r]
            phase.forward_calls += 1
            phase.passes += len(chunk)
            phase.sequences += len(chunk)
            phase.tokens += int(mask.sum())
    phase.seconds += time.perf_counter() - t0
    return scores, hidden
