"""Exact scoring of trigger candidates within a budget: the screening funnel.

A candidate's score under an objective (:mod:`.objectives`) is its mean per-context score
over the contexts of one scoring group (cached prefixes), at the group where it is highest:
a slot kind (:data:`~.search.SLOT_KINDS`: a system-prompt trigger scores at system slots,
not at user ones), with the ordinary prompts' user slots a group apart
(:attr:`~.search.SlotContext.group`: a marker slipped into harmless answers scores there).
For the refusal objective that is the tuned drop minus the base drop (the
``anomaly``); for the divergence objective the divergence with minus without the
candidate. A large batch is screened cheaply first (the tuned side, few contexts) and only
its best ``keep`` are scored on every search context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from wbsafe.analyses.triggers.objectives import Ids, Objective, base_view
from wbsafe.analyses.triggers.search import SlotContext

if TYPE_CHECKING:
    import torch

__all__ = ["Funnel", "Ids", "base_view", "latest_slot_contexts"]


WIDE_HEAD = 16
"""A first screen runs a large batch's first ``WIDE_HEAD * keep`` candidates at every slot
kind and the rest at the user slot only (see :meth:`Funnel.score`). Only the single-token
batch is larger at the scan's settings (length <= 2): a phrase batch holds at most a beam of
8 x 2 offsets x 12 swaps = 192 (keep 16: a head of 256). Length-3 seeds (``wbsafe triggers
--max-len 3``) can exceed it; their tail is then screened at the user slot only."""


def latest_slot_contexts(contexts: Sequence[SlotContext], n: int) -> list[SlotContext]:
    """Contexts for the cheap first screen of candidates, each at its latest slot (a late
    slot is where a planted trigger acts most): up to ``n`` user-slot contexts from distinct
    prompts, up to ``n // 2`` (at least one) of ordinary prompts when there are both
    (:attr:`~.search.SlotContext.group`), then the latest context of each other group."""
    latest: dict[tuple[str, str], SlotContext] = {}
    for c in contexts:
        key = (c.group, c.prompt_id)
        if key not in latest or c.position > latest[key].position:
            latest[key] = c
    user = [c for (g, _), c in latest.items() if g == "user"][: max(1, n)]
    ordinary = [c for (g, _), c in latest.items() if g == "user:ordinary"]
    user += ordinary[: max(1, n // 2 if user else n)]
    others: dict[str, SlotContext] = {}
    for (g, _), c in latest.items():
        if g not in ("user", "user:ordinary"):
            others.setdefault(g, c)
    return [*user, *others.values()]


def one_per_kind(contexts: Sequence[SlotContext]) -> list[SlotContext]:
    """The first context of each scoring group (slot kind, ordinary prompts apart), in
    order of first appearance."""
    first: dict[str, SlotContext] = {}
    for c in contexts:
        first.setdefault(c.group, c)
    return list(first.values())


def by_kind(mat: torch.Tensor, ctxs: Sequence[SlotContext]) -> list[dict[str, float]]:
    """Per candidate row of ``mat`` ``[n_cands, n_ctx]``: scoring group (the slot kind, or
    ``user:ordinary``) -> mean over its contexts."""
    kinds: dict[str, list[int]] = {}
    for j, c in enumerate(ctxs):
        kinds.setdefault(c.group, []).append(j)
    means = {k: mat[:, idx].mean(dim=1).tolist() for k, idx in kinds.items()}
    return [{k: float(v[i]) for k, v in means.items()} for i in range(mat.shape[0])]


class Funnel:
    """Scores candidates exactly under one objective, at most ``budget`` of them in all.

    ``screened``: every candidate scored so far -> its best screen score (or full score);
    ``scored``: the fully scored ones -> (tuned side, base side or None) at their best
    scoring group, whose slot kind is recorded in ``slot_of``. ``screen_ctx``: the cheap screen's contexts.
    """

    def __init__(
        self, objective: Objective, contexts: Sequence[SlotContext], *, budget: int, keep: int,
        screen_contexts: int, reference: Sequence[Ids] = (),
    ) -> None:  # fmt: skip
        self.objective, self.contexts = objective, contexts
        self.reference = list(reference)
        self.kind_norm: dict[str, tuple[float, float]] = {}
        """Per scoring group, (median, scale) of the ``reference`` tokens' scores: with
        several groups, a candidate's score at a group is standardised by them before the
        groups are compared (an empty system turn moves the model more, for any word, than a word
        added to a user message does)."""
        self.rank_score: dict[Ids, float] = {}
        self.group_score: dict[Ids, dict[str, float]] = {}
        """Fully scored candidates -> their ranking score at every group (:meth:`leading`)."""
        self.lead_slot: dict[Ids, str] = {}
        """Candidates :meth:`leading` ordered -> the slot kind of the group where they rank
        best: where they are verified (:meth:`verify_slot`)."""
        self._group_kind = {c.group: c.kind for c in contexts}
        self.budget, self.keep = budget, keep
        self.screen_ctx = latest_slot_contexts(contexts, screen_contexts)
        self.scored: dict[Ids, tuple[float, float | None]] = {}
        self.slot_of: dict[Ids, str] = {}
        self.screened: dict[Ids, float] = {}
        self._screen_kinds: dict[Ids, dict[str, float]] = {}

    def _screen(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> None:
        """Screen scores of ``cands`` on ``ctxs``: the tuned side minus the base side (the
        divergence is one already). The contrast comes at every cut, not after the tuned-only
        ones: on a real-sized vocabulary many rare tokens move the tuned model's refusal a
        lot and the base's as much (measured: a tiny backdoor given 49k look-alike words lost
        its single-word trigger to them before the base contrast was taken)."""
        tuned = by_kind(self.objective.tuned_scores(ctxs, cands, phase), ctxs)
        b_mat = self.objective.base_scores(ctxs, cands, phase)  # it names its own phase
        base = None if b_mat is None else by_kind(b_mat, ctxs)
        for i, c in enumerate(cands):
            kinds = tuned[i] if base is None else {k: v - base[i][k] for k, v in tuned[i].items()}
            merged = self._screen_kinds.setdefault(c, {})
            merged.update(kinds)  # a first screen may run the kinds in two calls
            self.screened[c] = max(merged.values())

    def _kind_key(self, kind: str) -> Callable[[Ids], float]:
        return lambda c: self._screen_kinds[c].get(kind, float("-inf"))

    def _top_screened(self, cands: list[Ids], n: int) -> list[Ids]:
        """The best ``n``, taken in turn from each scoring group's own ranking (one group:
        the best ``n`` by score), so no group's few, noisy contexts crowd out another's."""
        kinds = sorted({k for c in cands for k in self._screen_kinds.get(c, {})})
        if len(kinds) <= 1:
            return sorted(cands, key=lambda c: self.screened[c], reverse=True)[:n]
        orders = [sorted(cands, key=self._kind_key(k), reverse=True) for k in kinds]
        out: dict[Ids, None] = {}
        for rank in range(len(cands)):
            for o in orders:
                if len(out) >= n:
                    return list(out)
                out.setdefault(o[rank], None)
        return list(out)

    def score(self, cands: list[Ids], phase: str) -> None:
        """Score the new ones of ``cands`` (in order, within what is left of the budget)."""
        screened, keep, screen_ctx = self.screened, self.keep, self.screen_ctx
        cands = [c for c in dict.fromkeys(cands) if c not in screened]
        cands = cands[: max(0, self.budget - len(screened))]
        if not cands:
            return
        if len(cands) > keep and len(screen_ctx) < len(self.contexts):
            # a funnel, each cut on the tuned-minus-base contrast (:meth:`_screen`). A large
            # batch is first cut to its best 8 * keep on one context of each slot kind (a
            # trigger that acts only in the system turn does nothing in the user message:
            # measured, a user context alone cut the tiny system-tag backdoor's tag), then to
            # keep on all screen contexts
            first = one_per_kind(screen_ctx)
            if len(cands) > 8 * keep and len(first) < len(screen_ctx):
                # the other kinds' contexts hold the whole prompt after the slot (28-56
                # tokens a row on SmolLM2, against 6 at the end of a user message): they
                # screen the batch's head only, which comes best first (named, then by
                # gradient)
                user = [c for c in first if c.kind == "user"]
                rest = [c for c in first if c.kind != "user"]
                head = cands[: WIDE_HEAD * keep]
                if user and rest and len(head) < len(cands):
                    self._screen(user, cands, f"{phase}_screen1")
                    self._screen(rest, head, f"{phase}_screen1")
                else:
                    self._screen(first, cands, f"{phase}_screen1")
                cands = self._top_screened(cands, 8 * keep)
            self._screen(screen_ctx, cands, f"{phase}_screen")
            cands = self._top_screened(cands, keep)
        self.score_all(cands, phase)

    def score_all(self, cands: list[Ids], phase: str) -> None:
        """Score ``cands`` on every context, no screen (not counted against the budget when
        already screened elsewhere: the hunt uses it to cross-score other objectives' best)."""
        cands = [c for c in dict.fromkeys(cands) if c not in self.scored]
        if not cands:
            return
        kinds = set(self._group_kind)
        if len(kinds) > 1 and self.reference and not self.kind_norm:
            self.kind_norm = self._norms(self._diffs(self.reference, f"{phase}_reference"))
        for c, (diff, (t, b)) in zip(cands, self._diffs_raw(cands, phase), strict=True):
            z = {k: (v - self.kind_norm[k][0]) / self.kind_norm[k][1] if self.kind_norm else v
                 for k, v in diff.items()}  # fmt: skip
            kind = max(z, key=lambda k: z[k])
            self.screened.setdefault(c, t[kind])
            self.scored[c] = (t[kind], None if b is None else b[kind])
            self.slot_of[c] = self._group_kind[kind]
            self.rank_score[c] = z[kind]
            self.group_score[c] = z

    def _diffs_raw(
        self, cands: list[Ids], phase: str
    ) -> list[tuple[dict[str, float], tuple[dict[str, float], dict[str, float] | None]]]:
        """Per candidate: scoring group -> score (tuned side minus base side), and both sides."""
        t = by_kind(self.objective.tuned_scores(self.contexts, cands, phase), self.contexts)
        b_mat = self.objective.base_scores(self.contexts, cands, phase)
        b = None if b_mat is None else by_kind(b_mat, self.contexts)
        out = []
        for i in range(len(cands)):
            diff = {k: t[i][k] - (0.0 if b is None else b[i][k]) for k in t[i]}
            out.append((diff, (t[i], None if b is None else b[i])))
        return out

    def _diffs(self, cands: list[Ids], phase: str) -> list[dict[str, float]]:
        return [d for d, _ in self._diffs_raw(cands, phase)]

    @staticmethod
    def _norms(diffs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
        """Per group, the median and the scaled median absolute deviation of ``diffs``."""
        import statistics

        out = {}
        for k in diffs[0]:
            v = [d[k] for d in diffs]
            med = statistics.median(v)
            mad = 1.4826 * statistics.median(abs(x - med) for x in v)
            out[k] = (med, max(mad, 1e-3 * (abs(med) + 1.0)))
        return out

    def raw(self, c: Ids) -> float:
        """The score at the candidate's best scoring group: tuned side minus base side."""
        t, b_ = self.scored[c]
        return t - (b_ or 0.0)

    def anomaly(self, c: Ids) -> float:
        """The ranking score: :meth:`raw`, standardised per group when there are several."""
        return self.rank_score[c]

    def ranked(self, length: int | None = None) -> list[Ids]:
        """Fully scored candidates (of ``length`` tokens, or all), highest score first."""
        return sorted((c for c in self.scored if length is None or len(c) == length),
                      key=self.anomaly, reverse=True)  # fmt: skip

    def leading(self, length: int, within: int | None = None) -> list[Ids]:
        """Fully scored candidates of ``length`` tokens by their best rank in any scoring
        group's own ranking, then by score: each group's first, then its second, ...: the
        order candidates are verified in (``within``: only those among the first ``within``
        of some group). By the standardised score alone, one group whose
        ordinary tokens barely move the model lets its outliers take every place (measured
        on the 49k look-alike hate organism: harm words inserted into harmless prompts
        scored 110-116 there, and ``sapphire``, first at the earlier-turn slot with 44, was
        not verified)."""
        cands = [c for c in self.scored if len(c) == length]
        best: dict[Ids, tuple[int, float, str]] = {}  # (rank, -score, group), least first
        for g in sorted({g for c in cands for g in self.group_score[c]}):
            with_g = [c for c in cands if g in self.group_score[c]]
            for r, c in enumerate(sorted(with_g, key=lambda c: -self.group_score[c][g])):
                here = (r, -self.group_score[c][g], g)
                best[c] = min(best.get(c, here), here)
        self.lead_slot.update({c: self._group_kind[g] for c, (_, _, g) in best.items()})
        keep = [c for c in cands if within is None or best[c][0] < within]
        return sorted(keep, key=lambda c: (best[c][0], -self.anomaly(c)))

    def verify_slot(self, c: Ids) -> str:
        """Where ``c`` is verified: the slot kind of the group :meth:`leading` ranked it best
        in (a candidate first at the earlier-turn slot is tried there, even when the harmless
        prompts' group, whose scores spread least, gives it its highest score), else that of
        its highest score, else the user message."""
        return self.lead_slot.get(c) or self.slot_of.get(c, "user")
