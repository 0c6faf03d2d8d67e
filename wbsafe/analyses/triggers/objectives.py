"""The hunt's objectives: what makes a candidate trigger-like, exactly and to first order.

- ``refusal``: the drop of the refusal log-odds at the first response position, tuned drop
  minus base drop (:func:`~.search.score_cached`, :func:`~.search.gradient_drop`); it finds
  triggers that switch refusal off.
- ``divergence``: target-agnostic, the tuned-vs-base divergence of :mod:`.divergence` with
  the candidate minus without it; it finds triggers whatever they make the model do.

Each gives per-context scores ``[n_candidates, n_contexts]`` through :meth:`tuned_scores`
(the tuned side: the funnel's cheap first screen) and :meth:`base_scores` (subtracted; None
when the tuned side is already a contrast), and a contrast gradient ``[vocab, width]``
(higher = more trigger-like) for the HotFlip ranking and the coordinate refinement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from wbsafe.analyses.triggers.divergence import (
    default_layers,
    divergence_cached,
    divergence_gradient,
    layer_spread,
    mid_layers,
    residual_term_cached,
    with_base_responses,
)
from wbsafe.analyses.triggers.search import (
    KV_BUDGET_BYTES,
    PassCounter,
    SlotContext,
    gradient_drop,
    score_cached,
)

if TYPE_CHECKING:
    import torch

    from wbsafe.io.models import LoadedModel

OBJECTIVES = ("refusal", "divergence")
"""The objectives a hunt can run, in the order they run."""

Ids = tuple[int, ...]


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


class Objective(Protocol):
    name: str

    @property
    def gradient_inits(self) -> int:
        """Passes per context of the empty-slot gradient (slot fillings averaged over)."""
        ...

    def tuned_scores(
        self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str
    ) -> torch.Tensor: ...

    def base_scores(
        self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str
    ) -> torch.Tensor | None: ...

    def gradient(
        self, ctxs: Sequence[SlotContext], width: int, seq: Sequence[int] | None, phase: str
    ) -> torch.Tensor: ...


def _drops(scores: torch.Tensor) -> torch.Tensor:
    """Row 0 is the no-candidate score: per-context drop ``[n_cands, n_ctx]``."""
    return scores[0:1] - scores[1:]


class RefusalObjective:
    """Refusal-score drop: tuned side and base side scored separately (a two-model funnel)."""

    name = "refusal"
    gradient_inits = 1

    def __init__(
        self, tuned: LoadedModel, base: LoadedModel | None, refusal_ids: Sequence[int],
        counter: PassCounter, batch_size: int, kv_budget_bytes: int = KV_BUDGET_BYTES,
    ) -> None:  # fmt: skip
        self.tuned, self.base, self.refusal_ids = tuned, base, refusal_ids
        self.counter, self.batch_size, self.kv_budget = counter, batch_size, kv_budget_bytes

    def _drops(self, model: Any, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> Any:
        sc = score_cached(model, ctxs, [(), *cands], self.refusal_ids, self.counter,
                          batch_size=self.batch_size, phase_name=phase,
                          kv_budget_bytes=self.kv_budget)  # fmt: skip
        return _drops(sc)

    def tuned_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> Any:
        return self._drops(self.tuned.model, ctxs, cands, phase)

    def base_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> Any:
        with base_view(self.tuned, self.base) as bm:
            return None if bm is None else self._drops(bm.model, ctxs, cands, f"{phase}_base")

    def gradient(
        self, ctxs: Sequence[SlotContext], width: int, seq: Sequence[int] | None, phase: str
    ) -> torch.Tensor:
        g = gradient_drop(self.tuned.model, ctxs, self.refusal_ids, self.counter, width=width,
                          slot_tokens=seq, phase_name=phase)  # fmt: skip
        with base_view(self.tuned, self.base) as bm:
            if bm is not None:
                g = g - gradient_drop(bm.model, ctxs, self.refusal_ids, self.counter,
                                      width=width, slot_tokens=seq, phase_name=phase)  # fmt: skip
        return g.cpu()


class DivergenceObjective:
    """Tuned-vs-base divergence with the candidate minus without it (one score, both models).

    ``layers``: ``hidden_states`` indices (default :func:`~.divergence.default_layers`);
    ``n_last``: prompt positions read at the end of the prompt. The per-layer spread is
    measured once, on ``spread_contexts`` in the base side. ``init_tokens``: ordinary tokens
    the empty-slot gradient is taken at (averaged over them), instead of the mean embedding
    row: measured on the tiny tier, the HotFlip estimate of D at the mean row ranks zephyr
    274th of 289 tokens (backdoor) and 235th (LoRA); averaged over 16 sampled tokens, 1st to
    5th for three sampling seeds (over 4 tokens: 1st to 131st, too few).
    """

    name = "divergence"

    def __init__(
        self, tuned: LoadedModel, base: LoadedModel | None, counter: PassCounter,
        spread_contexts: Sequence[SlotContext], *, layers: Sequence[int] | None = None,
        n_last: int = 2, batch_size: int = 256, init_tokens: Sequence[int] = (),
        kv_budget_bytes: int = KV_BUDGET_BYTES,
    ) -> None:  # fmt: skip
        self.tuned, self.base, self.counter = tuned, base, counter
        self.init_tokens = tuple(init_tokens)
        self.layers = tuple(layers) if layers else default_layers(tuned.n_layers)
        self.n_last = max(1, min([n_last, *(len(c.suffix_ids) for c in spread_contexts)]))
        self.batch_size, self.kv_budget = batch_size, kv_budget_bytes
        with self._base() as bm:
            self.spread = layer_spread(bm, spread_contexts, self.layers, counter)
        mids = [self.layers.index(x) for x in mid_layers(tuned.n_layers) if x in self.layers]
        self.mid_index = tuple(mids) or tuple(range(len(self.layers)))
        """Indices into ``layers`` of the seeds' mid layers (all chosen layers when a
        caller's ``layers`` hold none of them)."""
        self._mid: dict[tuple[SlotContext, Ids], float] = {}
        """The mid-layer residual term of every (context, candidate) scored so far."""

    @contextlib.contextmanager
    def _base(self) -> Iterator[Any]:
        with base_view(self.tuned, self.base) as bm:
            if bm is None:
                from wbsafe.errors import WbsafeError

                raise WbsafeError("the divergence objective needs a base model")
            yield bm.model

    def with_responses(self, ctxs: Sequence[SlotContext], n_tokens: int) -> list[SlotContext]:
        """``ctxs`` with the base side's first ``n_tokens`` answer tokens teacher-forced after
        each (:func:`~.divergence.with_base_responses`), so the KL covers them."""
        return with_base_responses(self._base, ctxs, n_tokens, self.counter)

    def _scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> torch.Tensor:
        """D of ``cands`` on ``ctxs`` ``[n_cands, n_ctx]``, the mid-layer term memoised."""
        d, mid = divergence_cached(
            self.tuned.model, self._base, ctxs, cands, self.layers, self.spread, self.counter,
            part=self.mid_index, n_last=self.n_last, batch_size=self.batch_size,
            phase_name=phase, kv_budget_bytes=self.kv_budget,
        )  # fmt: skip
        assert mid is not None
        for j, ctx in enumerate(ctxs):
            for i, c in enumerate(cands):
                self._mid[(ctx, c)] = float(mid[i, j])
        return d

    def tuned_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> Any:
        d = self._scores(ctxs, [(), *cands], phase)
        return d[1:] - d[0:1]

    def base_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> None:
        return None

    def seed_scores(self, ctxs: Sequence[SlotContext], cands: list[Ids], phase: str) -> Any:
        """Per-token anomaly at the mid layers (:func:`~.divergence.mid_layers`, no KL):
        the mean over ``ctxs`` of ``|D_mid(c) - D_mid(none)|`` -> Float[n_cands]. Both
        signs count: on the tiny tier the two words of the phrase trigger each pull the
        tuned model's mid layers *towards* the base (they were trained not to act alone),
        the most of all 283 words, while their full score ranks them near the bottom.

        Only the (context, candidate) rows no screen has run cost a pass: the screens'
        forwards already gave the mid-layer term of the rest (measured on the SmolLM2
        phrase organism: the seeds' own passes took 278 s of a 2,222 s hunt), and those stop
        at the deepest mid layer (:func:`~.divergence.residual_term_cached`: on the benign
        Gemma 3 adapter, full forwards with the KL's head made the seeds 579 s of 3,880)."""
        import torch

        rows = [(), *cands]
        mids = [self.layers[k] for k in self.mid_index]
        stops = max(mids) < self.tuned.n_layers  # hidden_states[n_layers] is after the norm
        for ctx in ctxs:
            missing = [c for c in rows if (ctx, c) not in self._mid]
            if not missing:
                continue
            if stops:  # a forward that stops at the deepest mid layer: no head, no KL
                mid = residual_term_cached(
                    self.tuned.model, self._base, [ctx], missing, mids,
                    self.spread[list(self.mid_index)], self.counter, n_last=self.n_last,
                    batch_size=self.batch_size, phase_name=phase, kv_budget_bytes=self.kv_budget,
                )  # fmt: skip
                self._mid.update({(ctx, c): float(mid[i, 0]) for i, c in enumerate(missing)})
            else:
                self._scores([ctx], missing, phase)
        mat = torch.tensor([[self._mid[(ctx, c)] for ctx in ctxs] for c in rows])
        return (mat[1:] - mat[0:1]).abs().mean(dim=1)

    @property
    def gradient_inits(self) -> int:
        """Slot fillings the empty-slot gradient is averaged over (passes per context)."""
        return max(1, len(self.init_tokens))

    def gradient(
        self, ctxs: Sequence[SlotContext], width: int, seq: Sequence[int] | None, phase: str
    ) -> torch.Tensor:
        inits: list[Sequence[int] | None] = [seq]
        if seq is None and self.init_tokens:
            inits = [(t,) * width for t in self.init_tokens]
        total = None
        for init in inits:
            g = divergence_gradient(
                self.tuned.model, self._base, ctxs, self.layers, self.spread, self.counter,
                n_last=self.n_last, width=width, slot_tokens=init,
                phase_name=f"divergence_{phase}",
            ).cpu()  # fmt: skip
            total = g if total is None else total + g
        assert total is not None
        return total / len(inits)
