"""The screening funnel on a stand-in objective with planted scores: what survives its cuts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wbsafe.analyses.triggers.funnel import Funnel
from wbsafe.analyses.triggers.search import SlotContext

TRIGGER = (7,)
UNSTABLE = [(100 + i,) for i in range(300)]
"""Rare tokens that move both models a lot (as on a real vocabulary's tail)."""
ORDINARY = [(1000 + i,) for i in range(300)]


class PlantedObjective:
    """Per candidate and context: the tuned side's score and the base side's. The trigger
    moves only the tuned model (by 2); each unstable token moves both by 5-8, the tuned one
    slightly less; ordinary tokens move neither."""

    name = "refusal"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _side(self, cands: list[tuple[int, ...]], n_ctx: int, tuned: bool) -> torch.Tensor:
        rows = []
        for c in cands:
            if c == TRIGGER:
                v = 2.0 if tuned else 0.0
            elif c in UNSTABLE:
                v = 5.0 + 3.0 * (c[0] - 100) / 300 - (0.5 if tuned else 0.0)
            else:
                v = 0.0
            rows.append([v] * n_ctx)
        return torch.tensor(rows, dtype=torch.float64)

    def tuned_scores(
        self, ctxs: Sequence[SlotContext], cands: list[tuple[int, ...]], phase: str
    ) -> torch.Tensor:
        self.calls.append(f"tuned:{phase}")
        return self._side(cands, len(ctxs), True)

    def base_scores(
        self, ctxs: Sequence[SlotContext], cands: list[tuple[int, ...]], phase: str
    ) -> torch.Tensor:
        self.calls.append(f"base:{phase}")
        return self._side(cands, len(ctxs), False)


def test_a_trigger_survives_cuts_crowded_by_tokens_that_move_both_models() -> None:
    """300 unstable tokens out-score the trigger on the tuned side alone; every cut takes the
    tuned-minus-base contrast, so the trigger is kept, fully scored and ranked first (a cut
    on the tuned side first lost it: 8 x keep = 128 places, all taken by unstable tokens)."""
    ctxs = [SlotContext(f"p{i}", 1.0, (1, 2), (3,)) for i in range(6)]
    obj = PlantedObjective()
    funnel = Funnel(obj, ctxs, budget=2048, keep=16, screen_contexts=4)  # type: ignore[arg-type]
    funnel.score([*UNSTABLE, *ORDINARY, TRIGGER], "exact")
    assert TRIGGER in funnel.scored
    assert funnel.ranked()[0] == TRIGGER
    assert funnel.raw(TRIGGER) == 2.0
    assert all(funnel.raw(c) < 0 for c in UNSTABLE if c in funnel.scored)
    # each screen cut asked the base side too
    assert {"base:exact_screen1_base", "base:exact_screen_base"} <= set(obj.calls)
