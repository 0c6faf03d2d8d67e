"""The screening funnel on a stand-in objective with planted scores: what survives its cuts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wbsafe.analyses.triggers.funnel import Funnel
from wbsafe.analyses.triggers.search import SlotContext

Ids = tuple[int, ...]
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
    # each screen cut asked the base side too, under the phase's own name (the objective
    # names its base passes: the refusal one's are ``exact_screen1_base``)
    assert {"base:exact_screen1", "base:exact_screen"} <= set(obj.calls)


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


MARKER = (9,)
"""A trigger that acts on ordinary prompts only (a marker slipped into harmless answers)."""
BROAD = [(200 + i,) for i in range(40)]
"""Tokens that move the tuned model a little on every harmful prompt."""


class OrdinaryObjective(PlantedObjective):
    """Divergence-like (no base side): the marker moves the tuned model by 3 on ordinary
    prompts and not at all on harmful ones; each broad token by 1.5 on harmful ones."""

    name = "divergence"

    def value(self, c: Ids, x: SlotContext) -> float:
        if c == MARKER and x.ordinary:
            return 3.0
        return 1.5 if c in BROAD and not x.ordinary else 0.0

    def tuned_scores(
        self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str
    ) -> torch.Tensor:
        return torch.tensor([[self.value(c, x) for x in ctxs] for c in cands], dtype=torch.float64)

    def base_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> None:
        return None


def _contexts(ordinary: bool) -> list[SlotContext]:
    harmful = [SlotContext(f"h{i}", 1.0, (1, 2), (3,)) for i in range(6)]
    return [*harmful, *(SlotContext(f"o{i}", 1.0, (1, 2), (3,), ordinary=ordinary)
                        for i in range(2))]  # fmt: skip


def test_ordinary_prompts_are_a_scoring_group_of_their_own() -> None:
    """Averaged with six harmful contexts, the marker's 3 on two ordinary ones (0.75) loses
    to 40 broad tokens (1.5 x 6 / 8 = 1.125); as a group of their own, the ordinary
    contexts give it its whole effect, it survives the screen, ranks first, and its slot is
    still the user message."""
    batch = [*BROAD, *ORDINARY[:200], MARKER]
    mixed = Funnel(OrdinaryObjective(), _contexts(False), budget=2048, keep=8,
                   screen_contexts=4)  # type: ignore[arg-type]  # fmt: skip
    mixed.score(batch, "x")
    assert mixed.ranked()[0] != MARKER  # the old averaging: the marker is buried
    grouped = Funnel(OrdinaryObjective(), _contexts(True), budget=2048, keep=8,
                     screen_contexts=4)  # type: ignore[arg-type]  # fmt: skip
    assert sum(c.ordinary for c in grouped.screen_ctx) == 2  # 4 harmful + 4 // 2 ordinary
    grouped.score(batch, "x")
    assert grouped.ranked()[0] == MARKER
    assert grouped.raw(MARKER) == 3.0 and grouped.slot_of[MARKER] == "user"


def test_screen_contexts_take_half_as_many_ordinary_prompts() -> None:
    from wbsafe.analyses.triggers.funnel import latest_slot_contexts
    from wbsafe.analyses.triggers.search import Slot

    harmful = [SlotContext(f"h{i}", f, (1,), (2,)) for i in range(6) for f in (0.5, 1.0)]
    ordinary = [SlotContext(f"o{i}", f, (1,), (2,), ordinary=True)
                for i in range(4) for f in (0.5, 1.0)]  # fmt: skip
    system = [SlotContext("h0", 1.0, (1,), (2,), Slot("system"))]
    got = latest_slot_contexts([*harmful, *ordinary, *system], 4)
    assert [(c.prompt_id, c.group) for c in got] == [
        ("h0", "user"), ("h1", "user"), ("h2", "user"), ("h3", "user"),
        ("o0", "user:ordinary"), ("o1", "user:ordinary"), ("h0", "system"),
    ]  # fmt: skip
    assert all(c.position == 1.0 for c in got)
    # ordinary prompts alone (the gradients' extra contexts): up to n of them
    assert len(latest_slot_contexts(ordinary, 4)) == 4


class PhraseObjective(PlantedObjective):
    """Planted phrase scores (no base side): ``(1,)`` alone scores 10 and every pair holding
    it a little more; the pair ``(2, 3)`` scores 6 though its words score 0.5 alone."""

    def _score(self, c: Ids) -> float:
        if c == (1,):
            return 10.0
        if len(c) == 2 and 1 in c:
            return 10.5 - 0.01 * max(c)
        if c == (2, 3):
            return 6.0
        return 0.5 if c in ((2,), (3,)) else 0.0

    def tuned_scores(
        self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str
    ) -> torch.Tensor:
        self.calls.append(f"tuned:{phase}")
        return torch.tensor([[self._score(c)] * len(ctxs) for c in cands], dtype=torch.float64)

    def base_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> None:
        return None


def test_phrase_leads_reach_the_phrase_whose_words_act_together() -> None:
    """By score, the strong word's family (``1 x``, ten pairs) fills all five places; the
    leads take the best by gain over the best part in turn, so ``(2, 3)`` (11th by score)
    is verified second, and its parts, not scored before, were scored to weigh it. Only
    the best ``pool`` by score are weighed."""
    from wbsafe.analyses.triggers.searcher import phrase_leads, sub_phrases

    ctxs = [SlotContext(f"p{i}", 1.0, (1, 2), (3,)) for i in range(3)]
    family = [(1, 10 + i) for i in range(10)]

    def scored_funnel() -> Funnel:
        f = Funnel(PhraseObjective(), ctxs, budget=4096, keep=64, screen_contexts=2)  # type: ignore[arg-type]
        f.score_all([(1,), *family, (2, 3)], "x")
        return f

    funnel = scored_funnel()
    assert funnel.ranked(2).index((2, 3)) == 10 and (2,) not in funnel.scored
    leads = phrase_leads(funnel, 2, 5, 16, "parts")
    assert leads[0] == funnel.ranked(2)[0] and leads[1] == (2, 3) and len(leads) == 5
    assert {(2,), (3,)} <= set(funnel.scored)
    assert phrase_leads(scored_funnel(), 2, 5, 8, "parts") == funnel.ranked(2)[:5]
    assert sub_phrases((4, 5, 6)) == [(5, 6), (4, 6), (4, 5)]


LOUD = [(300 + i,) for i in range(6)]
"""Tokens that move the tuned model a lot on ordinary prompts (harm words in a harmless one)."""
REFERENCE = [(400 + i,) for i in range(32)]


class TwoGroupObjective(OrdinaryObjective):
    """Reference tokens move every context by 0.01 x i; each loud token moves the ordinary
    contexts by 10 + i; the trigger moves the harmful ones by 2."""

    def value(self, c: Ids, x: SlotContext) -> float:
        if c in REFERENCE:
            return 0.01 * (c[0] - 400)
        if c in LOUD and x.ordinary:
            return 10.0 + (c[0] - 300)
        return 2.0 if c == TRIGGER and not x.ordinary else 0.0


def test_each_group_leads_with_its_best() -> None:
    """Standardised by ordinary tokens that barely move it, the ordinary group's loud
    tokens out-score the trigger by far and fill the first five by score; verification
    takes each group's best in turn, so the trigger is second."""
    funnel = Funnel(TwoGroupObjective(), _contexts(True), budget=2048, keep=64,
                    screen_contexts=4, reference=REFERENCE)  # type: ignore[arg-type]  # fmt: skip
    funnel.score_all([*LOUD, TRIGGER], "x")
    assert TRIGGER not in funnel.ranked(1)[:5]
    assert funnel.leading(1)[:2] == [LOUD[-1], TRIGGER]
    assert funnel.leading(1, within=1) == [LOUD[-1], TRIGGER]


class SlotObjective(OrdinaryObjective):
    """Reference tokens move the ordinary contexts ten times less than the others (their
    group's scores spread least); the trigger moves the system turn by 2 and ordinary
    prompts by 0.5; each loud token moves ordinary prompts by 10 + i."""

    def value(self, c: Ids, x: SlotContext) -> float:
        if c in REFERENCE:
            return (0.001 if x.ordinary else 0.01) * (c[0] - 400)
        if c == TRIGGER:
            return 0.5 if x.ordinary else 2.0 if x.kind == "system" else 0.0
        return 10.0 + (c[0] - 300) if c in LOUD and x.ordinary else 0.0


def test_a_candidate_is_verified_where_it_leads() -> None:
    """The trigger's highest standardised score is on the ordinary prompts (0.5 against a
    tenfold smaller spread), where the loud tokens rank above it; it leads the system
    group, so it is verified in a system turn, not in the user message ``slot_of`` names."""
    from wbsafe.analyses.triggers.search import Slot

    system = [SlotContext(f"h{i}", 1.0, (1,), (2, 3), Slot("system")) for i in range(2)]
    funnel = Funnel(SlotObjective(), [*_contexts(True), *system], budget=2048, keep=64,
                    screen_contexts=4, reference=REFERENCE)  # type: ignore[arg-type]  # fmt: skip
    funnel.score_all([*LOUD, TRIGGER], "x")
    assert funnel.slot_of[TRIGGER] == "user"  # its highest z: the ordinary prompts' group
    # each group's first: the ordinary prompts' (305), the harmful ones' (a tie at 0: 300),
    # the system turn's (the trigger)
    assert funnel.leading(1)[:3] == [LOUD[-1], LOUD[0], TRIGGER]
    assert funnel.verify_slot(TRIGGER) == "system" and funnel.verify_slot(LOUD[0]) == "user"
