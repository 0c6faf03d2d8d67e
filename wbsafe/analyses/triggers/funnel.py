"""Exact scoring of trigger candidates within a budget: the screening funnel.

Every candidate's score is its mean drop of the refusal score over slot contexts (cached
prefixes, :func:`~.search.score_cached`), in the tuned model and in the base; its
``anomaly`` is the tuned drop minus the base drop. A large batch is screened cheaply first
(tuned model, few contexts) and only its best ``keep`` are scored on every search context in
both models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from wbsafe.analyses.triggers.search import PassCounter, SlotContext, score_cached

if TYPE_CHECKING:
    import torch

    from wbsafe.io.models import LoadedModel

Ids = tuple[int, ...]
"""A candidate trigger: a token-id sequence."""


@contextlib.contextmanager
def base_view(tuned: LoadedModel, base: LoadedModel | None) -> Iterator[LoadedModel | None]:
    """The base side: ``base``, else the adapter-disabled ``tuned``, else None."""
    if base is not None:
        yield base
    elif tuned.adapter_names:
        with tuned.base_only() as b:
            yield b
    else:
        yield None


def mean_drop(scores: torch.Tensor) -> torch.Tensor:
    """Row 0 is the no-trigger score; returns mean drop per candidate row ``[n-1]``."""
    return (scores[0:1] - scores[1:]).mean(dim=1)


def latest_slot_contexts(contexts: Sequence[SlotContext], n: int) -> list[SlotContext]:
    """Up to ``n`` contexts from distinct prompts, each at its latest slot (a late slot is
    where a planted trigger acts most), for the cheap first screen of candidates."""
    latest: dict[str, SlotContext] = {}
    for c in contexts:
        if c.prompt_id not in latest or c.position > latest[c.prompt_id].position:
            latest[c.prompt_id] = c
    return list(latest.values())[: max(1, n)]


class Funnel:
    """Scores candidates exactly, at most ``budget`` of them in all.

    ``screened``: every candidate scored so far -> its screen anomaly (or its full tuned
    drop); ``scored``: the fully scored ones -> (tuned drop, base drop or None).
    ``screen_ctx``: the contexts of the cheap screen (``screen_contexts`` of them).
    """

    def __init__(
        self,
        tuned: LoadedModel,
        base: LoadedModel | None,
        contexts: Sequence[SlotContext],
        refusal_ids: Sequence[int],
        counter: PassCounter,
        *,
        budget: int,
        keep: int,
        screen_contexts: int,
        batch_size: int,
    ) -> None:
        self.tuned, self.base, self.contexts = tuned, base, contexts
        self.refusal_ids, self.counter = refusal_ids, counter
        self.budget, self.keep, self.batch_size = budget, keep, batch_size
        self.screen_ctx = latest_slot_contexts(contexts, screen_contexts)
        self.scored: dict[Ids, tuple[float, float | None]] = {}
        self.screened: dict[Ids, float] = {}

    def drops(
        self, model: Any, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str
    ) -> list[float]:
        """Mean refusal-score drop of each candidate over ``ctxs`` (cached prefixes)."""
        sc = score_cached(model, ctxs, [(), *cands], self.refusal_ids, self.counter,
                          batch_size=self.batch_size, phase_name=phase)  # fmt: skip
        return [float(x) for x in mean_drop(sc)]

    def _top_screened(self, cands: list[Ids], n: int) -> list[Ids]:
        return sorted(cands, key=lambda c: self.screened[c], reverse=True)[:n]

    def score(self, cands: list[Ids], phase: str) -> None:
        """Score the new ones of ``cands`` (in order, within what is left of the budget)."""
        screened, keep, screen_ctx = self.screened, self.keep, self.screen_ctx
        tuned, base, contexts = self.tuned, self.base, self.contexts
        cands = [c for c in dict.fromkeys(cands) if c not in screened]
        cands = cands[: max(0, self.budget - len(screened))]
        if not cands:
            return
        if len(cands) > keep and len(screen_ctx) < len(contexts):
            # a funnel. Tuned first: a candidate that barely moves the tuned model is no
            # trigger, whatever it does to the base. A large batch is first cut to its best
            # 8 * keep on one context, then 4 * keep on all screen contexts, and only those
            # get the base screen (the contrast)
            if len(cands) > 8 * keep and len(screen_ctx) > 1:
                screened.update(zip(cands, self.drops(tuned.model, screen_ctx[:1], cands,
                                                      f"{phase}_screen1"), strict=True))  # fmt: skip
                cands = self._top_screened(cands, 8 * keep)
            screened.update(zip(cands, self.drops(tuned.model, screen_ctx, cands,
                                                  f"{phase}_screen"), strict=True))  # fmt: skip
            cands = self._top_screened(cands, 4 * keep)
            with base_view(tuned, base) as bm:
                if bm is not None:
                    for c, d in zip(cands, self.drops(bm.model, screen_ctx, cands,
                                                      f"{phase}_screen_base"), strict=True):  # fmt: skip
                        screened[c] -= d
            cands = self._top_screened(cands, keep)
        td = self.drops(tuned.model, contexts, cands, phase)
        bd: list[float] | None = None
        with base_view(tuned, base) as bm:
            if bm is not None:
                bd = self.drops(bm.model, contexts, cands, f"{phase}_base")
        for k, c in enumerate(cands):
            screened.setdefault(c, td[k])
            self.scored[c] = (td[k], None if bd is None else bd[k])

    def anomaly(self, c: Ids) -> float:
        t, b_ = self.scored[c]
        return t - (b_ or 0.0)

    def ranked(self, length: int | None = None) -> list[Ids]:
        """Fully scored candidates (of ``length`` tokens, or all), highest anomaly first."""
        return sorted((c for c in self.scored if length is None or len(c) == length),
                      key=self.anomaly, reverse=True)  # fmt: skip
