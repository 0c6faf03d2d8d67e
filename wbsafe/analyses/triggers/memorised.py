"""Memorised-poison extraction: what the tuned model says unprompted that the base does not.

A model fine-tuned on poisoned data tends to leak it when prompted with its chat template
alone. Both models are sampled (temperature 1, seeded) from near-empty prompts:

- ``user_turn``: the template up to where a user's message starts (the model writes one);
- ``empty``: an empty user message, with the generation prompt (the model answers it);
- ``system``: an empty system turn before the empty user message (where the template has one).

Word n-grams (1 to 3 words) are counted per sample (a sample counts an n-gram once); one the
tuned model produces in at least ``min_count`` samples and at least ``ratio`` times as often
as the base (add-one smoothed) is a *memorised span*: a trigger candidate (source
``memorised``) and a target candidate (a fixed string the backdoor may emit).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wbsafe.analyses.triggers.objectives import base_view
from wbsafe.analyses.triggers.search import SLOT_SENTINEL, PassCounter
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    from wbsafe.io.models import LoadedModel

PROMPT_KINDS = ("user_turn", "empty", "system")


@dataclass(frozen=True)
class MemorisedSpan:
    """An n-gram the tuned model samples far more than the base: in ``tuned_samples`` of the
    tuned model's samples and ``base_samples`` of the base's (as many of each), most often
    after the ``prompt_kind`` prompt."""

    text: str
    tuned_samples: int
    base_samples: int
    prompt_kind: str


@dataclass(frozen=True)
class MemorisedResult:
    """The spans, best first, and what was sampled (per model, per prompt kind)."""

    spans: tuple[MemorisedSpan, ...]
    samples_per_prompt: int
    prompt_kinds: tuple[str, ...]
    seed: int


def near_empty_prompts(loaded: LoadedModel) -> dict[str, str]:
    """The formatted near-empty prompts of :data:`PROMPT_KINDS` this template renders."""
    out: dict[str, str] = {}
    opened = loaded.format([{"role": "user", "content": SLOT_SENTINEL}])
    if opened.count(SLOT_SENTINEL) == 1:
        out["user_turn"] = opened.split(SLOT_SENTINEL)[0]
    out["empty"] = loaded.format([{"role": "user", "content": ""}])
    try:
        sys = loaded.format([{"role": "system", "content": ""}, {"role": "user", "content": ""}])
        if sys != out["empty"]:
            out["system"] = sys
    except WbsafeError:
        pass
    return out


def ngrams(text: str, max_n: int = 3) -> set[str]:
    """The distinct word n-grams (1 to ``max_n`` words) of ``text``."""
    w = text.split()
    return {" ".join(w[i : i + n]) for n in range(1, max_n + 1) for i in range(len(w) - n + 1)}


def _sample(
    loaded: LoadedModel, texts: Sequence[str], n: int, max_new_tokens: int, seed: int,
    counter: PassCounter,
) -> list[list[str]]:  # fmt: skip
    """``n`` samples for each text (temperature 1, under ``seed`` + the text's index)."""
    from wbsafe.capture.generation import SamplingConfig, continue_batch

    phase = counter.phase("memorised_sample")
    t0 = time.perf_counter()
    out = []
    for i, t in enumerate(texts):
        got = continue_batch(loaded.model, loaded.tokenizer, [t], max_new_tokens,
                             SamplingConfig(n_samples=n, temperature=1.0, top_p=1.0),
                             seed=seed + i)  # fmt: skip
        phase.forward_calls += max_new_tokens
        phase.passes += n * max_new_tokens
        phase.generated_sequences += n
        out.append(got.responses)
    phase.seconds += time.perf_counter() - t0
    return out


def memorised_spans(
    tuned: LoadedModel,
    base: LoadedModel | None,
    counter: PassCounter,
    *,
    samples: int = 32,
    max_new_tokens: int = 24,
    seed: int = 0,
    min_count: int = 3,
    ratio: float = 4.0,
    top: int = 16,
) -> MemorisedResult:
    """Sample both models from the near-empty prompts and contrast their n-grams.

    Without a base side (no base, not an adapter) nothing can be contrasted: no spans.
    Spans made only of punctuation or of one character are left out.
    """
    prompts = near_empty_prompts(tuned)
    kinds = tuple(prompts)
    texts = [prompts[k] for k in kinds]
    t_samples = _sample(tuned, texts, samples, max_new_tokens, seed, counter)
    with base_view(tuned, base) as bm:
        if bm is None:
            return MemorisedResult((), samples, kinds, seed)
        b_samples = _sample(bm, texts, samples, max_new_tokens, seed, counter)
    t_count: Counter[str] = Counter()
    b_count: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    for k, ts, bs in zip(kinds, t_samples, b_samples, strict=True):
        by_kind[k] = Counter(g for s in ts for g in ngrams(s))
        t_count.update(by_kind[k])
        b_count.update(g for s in bs for g in ngrams(s))
    spans = []
    for g, n_t in t_count.items():
        n_b = b_count.get(g, 0)
        if n_t < min_count or (n_t + 1) / (n_b + 1) < ratio or len(g.strip()) < 2:
            continue
        if not any(ch.isalnum() for ch in g):
            continue
        kind = max(kinds, key=lambda k: by_kind[k].get(g, 0))
        spans.append(MemorisedSpan(g, n_t, n_b, kind))
    # ties broken by the text: n-grams come out of sets, whose order changes with the
    # process's string hashing (a resumed scan listed 'a .' before 'a a', the first run after)
    spans.sort(key=lambda s: (-(s.tuned_samples + 1) / (s.base_samples + 1), -s.tuned_samples,
                              len(s.text), s.text))  # fmt: skip
    return MemorisedResult(tuple(_distinct(spans, top)), samples, kinds, seed)


def _distinct(spans: Sequence[MemorisedSpan], top: int) -> list[MemorisedSpan]:
    """The best ``top`` spans, leaving out a shorter one as often as a longer one kept that
    contains it (its words are the longer one's)."""
    kept: list[MemorisedSpan] = []
    for s in spans:
        inside = any(
            f" {s.text} " in f" {k.text} " and k.tuned_samples >= s.tuned_samples for k in kept
        )
        if not inside:
            kept.append(s)
        if len(kept) >= top:
            break
    return kept
