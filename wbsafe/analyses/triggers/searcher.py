"""One objective's search: gradient ranking, exact scoring of the pool, multi-token phrases.

For an objective (:mod:`.objectives`): the HotFlip ranking of every token at a slot (its
contrast gradient), the best ``top_k`` into the shared candidate pool, exact scoring of the
pool through the funnel, verification of the best single tokens, then phrases: pairs of the
best tokens (by exact per-token score, then by gradient: under the divergence objective
that is each token's mid-layer anomaly, not only its output effect) and of each offset's
best by the gradient at a 2-token slot, beam extension over the exact score to ``max_len``,
and coordinate refinement (GCG) on the gradient at each beam. The phrases verified at each
length are the best by score and the best by gain over their parts, in turn
(:func:`phrase_leads`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wbsafe.analyses.triggers.candidates import CandidatePool
from wbsafe.analyses.triggers.funnel import Funnel, Ids, latest_slot_contexts
from wbsafe.analyses.triggers.objectives import Objective
from wbsafe.analyses.triggers.search import SlotContext
from wbsafe.progress import Log

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SearchSettings:
    """The search knobs shared by every objective (see :func:`~.hunt.hunt_triggers`)."""

    max_len: int
    top_k: int
    screen_contexts: int
    keep: int
    extend_width: int
    beam: int
    refine_steps: int
    verify_top: int


PHRASE_SHARE = 0.25
"""The part of an objective's budget kept for phrases (when they are searched)."""


def pairs_by_rank(tokens: Sequence[int]) -> list[Ids]:
    """Ordered pairs of distinct ``tokens`` (best first), by the sum of their ranks, so the
    best pairs come first whatever the cut: (t0, t1), (t1, t0), (t0, t2), (t2, t0), ..."""
    n = len(tokens)
    idx = sorted(((i, j) for i in range(n) for j in range(n) if i != j),
                 key=lambda ij: (ij[0] + ij[1], max(ij), ij[0]))  # fmt: skip
    return [(tokens[i], tokens[j]) for i, j in idx]


def interleave(*lists: Sequence[Ids]) -> list[Ids]:
    """The lists' items taken in turn (the first of each, then the second, ...)."""
    out: list[Ids] = []
    for k in range(max(map(len, lists), default=0)):
        out += [lst[k] for lst in lists if k < len(lst)]
    return out


def sub_phrases(c: Ids) -> list[Ids]:
    """The phrases one token shorter that ``c`` holds, in order (``(a, b, c)``: ``(b, c)``,
    ``(a, c)``, ``(a, b)``)."""
    return [(*c[:i], *c[i + 1 :]) for i in range(len(c))]


def phrase_leads(funnel: Funnel, length: int, n: int, pool: int, phase: str) -> list[Ids]:
    """The ``n`` phrases of ``length`` tokens to verify: taken in turn from the leading ones
    (:meth:`~.funnel.Funnel.leading`) and the best by *gain*, the score above that of the
    best shorter phrase it holds (its parts are scored for this when they were not, within
    what is left of the funnel's budget), among the first ``pool`` of each scoring group.

    By score alone, one strong word's family fills every place: on the 49k look-alike tiny
    tier, ten pairs ``qz42371 x`` scored above ``copper lantern`` (whose words do nothing
    alone) because ``qz42371`` already scored nearly as much by itself; none of them was a
    trigger. A phrase trigger is the phrase whose words act together."""
    top = funnel.leading(length, within=pool)
    if length < 2 or not top:
        return top[:n]
    parts = dict.fromkeys(p for c in top for p in sub_phrases(c) if p not in funnel.scored)
    funnel.score_all(list(parts)[: max(0, funnel.budget - len(funnel.screened))], phase)

    def gain(c: Ids) -> float:
        """Over the best part; none when a part went unscored (the budget ran out)."""
        if any(p not in funnel.scored for p in sub_phrases(c)):
            return float("-inf")
        return funnel.anomaly(c) - max(funnel.anomaly(p) for p in sub_phrases(c))

    by_gain = sorted(top, key=gain, reverse=True)
    return list(dict.fromkeys(interleave(top, by_gain)))[:n]


@dataclass
class SearchOutcome:
    """What one objective's search left: its funnel, its single-token gradient ``[vocab]``
    and the length at which a decisive verified trigger stopped it (or None)."""

    objective: str
    funnel: Funnel
    gradient: torch.Tensor
    stopped_at: int | None
    decided: bool


def search_objective(
    objective: Objective,
    contexts: Sequence[SlotContext],
    pool: CandidatePool,
    named: Sequence[Ids],
    allowed: torch.Tensor,
    budget: int,
    settings: SearchSettings,
    verify: Callable[[Sequence[Ids], Funnel], bool],
    *,
    skip_phrases: bool,
    reference: Sequence[Ids] = (),
    read_tokens: Sequence[int] = (),
    gradient_extra: Sequence[SlotContext] = (),
    settled_first: Sequence[Ids] | None = None,
    log: Log,
) -> SearchOutcome:
    """Search under ``objective`` within ``budget`` exactly scored candidates.

    ``named``: the pool's named candidates (user, built-in, embedding, memorised), scored
    first; ``allowed`` is Bool[vocab]; ``verify(cands, funnel)`` verifies in order and says
    whether a decisive trigger was found (the multi-token search then stops).
    ``reference``: ordinary tokens whose scores standardise each slot kind's (see
    :class:`~.funnel.Funnel`). ``read_tokens``: the token sweep's best (:mod:`.reads`),
    best first; their pairs take half of the length-2 seeds. ``gradient_extra``: contexts
    the gradients are taken on besides the screen's (the ordinary prompts' latest slots).

    When phrases are searched, single tokens get at most ``1 - PHRASE_SHARE`` of
    ``budget`` (the named ones always): on a 49k vocabulary the gradient's ``top_k``
    singles otherwise spent the whole share and no pair was scored.

    ``settled_first``: the verdict is already settled by these verified triggers (an earlier
    objective's); they are scored first, then the named candidates and the gradient's best
    in turn, within ``budget`` (the hunt gives a small one: ``SETTLED_BUDGET_KEEPS``).
    """
    import torch

    s, name = settings, objective.name
    # first-order estimates only order what the funnel then scores exactly: the averaged
    # ones (the divergence's empty slot over many ordinary tokens) and every phrase
    # gradient are taken on the screen's contexts, not on all of them (measured on the
    # SmolLM2 phrase organism over 24 contexts: these gradients took 530 s of a 2,222 s
    # hunt); the one-pass single-token gradient ranks the whole vocabulary on every context
    # (the screen's own contexts hold some ordinary prompts' already: each context once)
    grad_ctx = list(dict.fromkeys([*latest_slot_contexts(contexts, s.screen_contexts),
                                   *gradient_extra]))  # fmt: skip
    log(f"[triggers] {name}: gradient ranking over {int(allowed.sum())} tokens")
    first_ctx = contexts if objective.gradient_inits <= 1 else grad_ctx
    g = objective.gradient(first_ctx, 1, None, "gradient")[:, 0]
    g = g.masked_fill(~allowed, float("-inf"))
    order = torch.argsort(g, descending=True)
    grad_ids = [(i,) for i in order[: min(s.top_k, int(allowed.sum()))].tolist()]
    for c in grad_ids:
        pool.add(c, pool.text_of(c), "gradient")
    funnel = Funnel(objective, contexts, budget=budget, keep=s.keep,
                    screen_contexts=s.screen_contexts, reference=reference)  # fmt: skip
    ranked, screened = funnel.ranked, funnel.screened
    # named candidates before the gradient's, so the budget never cuts what a person, the
    # weight diff or the memorised-sample contrast asked for
    cands = [*sorted(named, key=len), *(c for c in grad_ids if c not in set(named))]
    if settled_first is not None:  # a small budget: the named ones do not take all of it
        cands = list(dict.fromkeys([*settled_first, *interleave(sorted(named, key=len),
                                                                grad_ids)]))  # fmt: skip
    if s.max_len > 1 and not skip_phrases:
        cands = cands[: max(len(named), budget - int(budget * PHRASE_SHARE))]
    log(f"[triggers] {name}: exact scoring of up to {min(len(cands), budget)} candidates")
    funnel.score(cands, "exact" if name == "refusal" else f"{name}_exact")
    decided = verify(funnel.leading(1)[: s.verify_top], funnel)
    stopped_at: int | None = 1 if decided and s.max_len > 1 else None

    def contrast_grad(width: int, seq: Sequence[int] | None) -> torch.Tensor:
        gr = objective.gradient(grad_ctx, width, seq, "extend_gradient")
        return gr.masked_fill(~allowed[:, None], float("-inf"))

    width_tokens: list[int] = []
    for i in [c[0] for c in ranked(1)[: s.extend_width]] + order[: s.extend_width].tolist():
        if i not in width_tokens and bool(allowed[i]):
            width_tokens.append(i)
    seed_scores = getattr(objective, "seed_scores", None)
    if seed_scores is not None and s.max_len > 1 and not decided and not skip_phrases:
        # per-token anomaly at mid layers: the words of a phrase trigger trained not to act
        # alone move the tuned model's mid-layer state, if not its output
        singles = [c for c in screened if len(c) == 1]
        log(f"[triggers] {name}: mid-layer anomaly of {len(singles)} single tokens")
        sc = seed_scores(funnel.screen_ctx, singles, f"{name}_seed")
        for k in sc.argsort(descending=True)[: s.extend_width].tolist():
            i = singles[k][0]
            if i not in width_tokens and bool(allowed[i]):
                width_tokens.append(i)
    phase = "extend" if name == "refusal" else f"{name}_extend"
    for length in range(2, s.max_len + 1) if not decided and not skip_phrases else ():
        if len(screened) >= budget:
            break
        gw = contrast_grad(length, None)
        per_pos = [gw[:, p].argsort(descending=True)[: s.extend_width].tolist()
                   for p in range(length)]  # fmt: skip
        new: list[Ids] = []
        if length == 2:
            old = [(a, b_) for a in width_tokens for b_ in width_tokens if a != b_]
            old += [(a, b_) for a in per_pos[0] for b_ in per_pos[1]]
            new += interleave(pairs_by_rank(list(read_tokens)[: s.extend_width]), old)
        else:
            beams = ranked(length - 1)
            new += [ext for c in beams[: s.beam] for t in width_tokens
                    for ext in ((*c, t), (t, *c))]  # fmt: skip
            new.append(tuple(p[0] for p in per_pos))
        # seeds take at most half of what is left of the budget; refinement gets the rest
        new = list(dict.fromkeys(c for c in new if c not in screened))
        new = new[: max(32, (budget - len(screened)) // 2)]
        log(f"[triggers] {name}: length {length}: scoring {len(new)} seed sequences")
        for e in new:
            pool.add(e, pool.text_of(e), "extension")
        funnel.score(new, phase)
        for _step in range(s.refine_steps):  # coordinate search on the gradient at each beam
            if len(screened) >= budget or not ranked(length):
                break
            top = funnel.anomaly(ranked(length)[0])
            swaps: list[Ids] = []
            for seq in ranked(length)[: s.beam]:
                gs = contrast_grad(length, seq)
                for p in range(length):
                    for t in gs[:, p].argsort(descending=True)[: s.extend_width].tolist():
                        swaps.append((*seq[:p], t, *seq[p + 1 :]))
            for sw in swaps:
                pool.add(sw, pool.text_of(sw), "gcg")
            funnel.score(swaps, phase)
            if funnel.anomaly(ranked(length)[0]) <= top:
                break
        # the best of this length, then the parts of the leaders, so a trigger is reported at
        # its shortest form ("zephyr" rather than "zephyr ransomware") when the part suffices
        scored_before = set(funnel.scored)
        leads = phrase_leads(funnel, length, s.verify_top, s.keep, f"{phase}_parts")
        for part in [c for c in funnel.scored if c not in pool.entries]:
            pool.add(part, pool.text_of(part), "parts")  # scored only as a phrase's part
        # parts the search had scored on their own merit (not only to weigh a phrase's gain)
        parts = [(t,) for c in leads for t in c if (t,) in scored_before]
        if verify(list(dict.fromkeys([*parts, *leads])), funnel) and length < s.max_len:
            stopped_at = length
            break
    return SearchOutcome(name, funnel, g, stopped_at, decided)
