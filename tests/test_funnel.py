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


class KindObjective(PlantedObjective):
    """Records which candidates each slot kind's contexts were asked about; the trigger
    moves the tuned model at the system slot only."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: dict[str, set[tuple[int, ...]]] = {}

    def _side(self, cands: list[tuple[int, ...]], n_ctx: int, tuned: bool) -> torch.Tensor:
        return torch.zeros(len(cands), n_ctx, dtype=torch.float64)

    def tuned_scores(
        self, ctxs: Sequence[SlotContext], cands: list[tuple[int, ...]], phase: str
    ) -> torch.Tensor:
        for c in ctxs:
            self.asked.setdefault(c.kind, set()).update(cands)
        out = torch.zeros(len(cands), len(ctxs), dtype=torch.float64)
        for j, c in enumerate(ctxs):
            if c.kind == "system" and TRIGGER in cands:
                out[cands.index(TRIGGER), j] = 2.0
        return out


def test_first_screen_runs_the_other_kinds_on_the_batch_head_only() -> None:
    """A large batch is screened at the user slot in full and at the costly system slot
    (the whole conversation follows it) only in its first ``WIDE_HEAD * keep``; a
    system-only trigger in that head survives to be fully scored, at the system slot."""
    from wbsafe.analyses.triggers.funnel import WIDE_HEAD
    from wbsafe.analyses.triggers.search import Slot

    user = [SlotContext(f"p{i}", 1.0, (1, 2), (3,)) for i in range(6)]
    system = [SlotContext(f"p{i}", 1.0, (1,), (2, 3), Slot("system")) for i in range(2)]
    obj = KindObjective()
    keep = 4
    funnel = Funnel(obj, [*user, *system], budget=2048, keep=keep, screen_contexts=3)  # type: ignore[arg-type]
    batch = [TRIGGER, *ORDINARY]
    funnel.score(batch, "exact")
    head = set(batch[: WIDE_HEAD * keep])
    first_system = obj.asked["system"]  # the first screen's, then the later cuts' subsets
    assert set(batch) <= obj.asked["user"]
    assert first_system <= head and not (set(batch) - head) & first_system
    assert funnel.slot_of[TRIGGER] == "system" and funnel.ranked()[0] == TRIGGER
