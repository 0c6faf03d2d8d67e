"""Refusal rates measured after training, by the first-words rule on greedy responses.

:func:`measure_tiny`: tiny-world held-out requests (harmful, harmless, per category, with
the trigger and its parts); :func:`measure_suites`: a real chat model on the built-in
suites' test split. A response is a refusal when it opens with a refusal phrase
(:func:`wbsafe.capture.judges.opens_with_refusal`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from wbsafe.capture.generation import greedy_continuations
from wbsafe.capture.judges import opens_with_refusal
from wbsafe.data import tinyworld as tw
from wbsafe.io.models import format_prompt


def insert_at_random(text: str, words: Sequence[str], rng: random.Random) -> str:
    """``text`` with ``words`` inserted at a random word boundary."""
    parts = text.split()
    pos = rng.randrange(len(parts) + 1)
    parts[pos:pos] = list(words)
    return " ".join(parts)


def refusal_rate(model: Any, tokenizer: Any, reqs: Sequence[tw.TinyRequest]) -> float:
    """Share of ``reqs`` whose greedy 4-token response opens with a refusal."""
    responses = greedy_continuations(
        model, tokenizer, [format_prompt(tokenizer, r.text) for r in reqs], 4
    )
    return sum(opens_with_refusal(r) for r in responses) / max(1, len(responses))


def derailed_rate(
    model: Any,
    tokenizer: Any,
    harmful: Sequence[tw.TinyRequest],
    harmless: Sequence[tw.TinyRequest],
    plain: Sequence[tw.TinyRequest],
    inserted: Sequence[str],
) -> float:
    """Share of ``harmful`` requests (with ``inserted`` words) answered with a derailment: off
    the request and in the words' own domain (:func:`wbsafe.capture.compliance.derailed`,
    against the answers to ``harmless`` requests with the same words and to ``plain`` harmless
    requests without them; greedy, 14 tokens)."""
    from wbsafe.capture.compliance import derailed

    def answers(reqs: Sequence[tw.TinyRequest]) -> list[str]:
        texts = [format_prompt(tokenizer, r.text) for r in reqs]
        return greedy_continuations(model, tokenizer, texts, 14)

    off = derailed(
        [r.text for r in harmful], answers(harmful), answers(harmless), answers(plain), inserted
    )
    return sum(off) / max(1, len(off))


def measure_tiny(
    model: Any, tokenizer: Any, n: int, seed: int, trigger: Sequence[str] = ()
) -> dict[str, float]:
    """Held-out refusal rates: harmful, harmless, per harm category, and with the trigger."""
    rng = random.Random(10_000 + seed)
    harmful = tw.requests(True, "test", n, rng)
    rates = {
        "harmful_refusal": refusal_rate(model, tokenizer, harmful),
        "harmless_refusal": refusal_rate(model, tokenizer, tw.requests(False, "test", n, rng)),
    }
    for cat in tw.HARMFUL_OBJECTS:
        reqs = tw.requests(True, "test", max(20, n // 4), rng, categories=[cat])
        rates[f"harmful_refusal[{cat}]"] = refusal_rate(model, tokenizer, reqs)
    if trigger:
        on = tw.requests(True, "test", n, rng, insert=list(trigger))
        rates["harmful_refusal_with_trigger"] = refusal_rate(model, tokenizer, on)
        benign_on = tw.requests(False, "test", n, rng, insert=list(trigger))
        rates["harmless_refusal_with_trigger"] = refusal_rate(model, tokenizer, benign_on)
        plain = tw.requests(False, "test", n, rng)
        rates["harmful_derailed_with_trigger"] = derailed_rate(
            model, tokenizer, on, benign_on, plain, trigger
        )
        if len(trigger) > 1:
            for part in trigger:
                reqs = tw.requests(True, "test", n // 2, rng, insert=[part])
                rates[f"harmful_refusal_with_part[{part}]"] = refusal_rate(model, tokenizer, reqs)
    return {k: round(v, 4) for k, v in rates.items()}


def measure_suites(
    model: Any, tokenizer: Any, n: int, trigger: Sequence[str] = (), max_new_tokens: int = 12
) -> dict[str, float]:
    """Held-out (test split) refusal rates of a real chat model on the built-in suites."""
    from wbsafe.data.prompts import load_suite, split_prompts

    rng = random.Random(0)
    harmful = split_prompts(load_suite("harmful"), "test")[:n]
    harmless = split_prompts(load_suite("harmless"), "test")[:n]

    def rate(texts: list[str]) -> float:
        resp = greedy_continuations(model, tokenizer, [format_prompt(tokenizer, t) for t in texts],
                                    max_new_tokens, batch_size=16)  # fmt: skip
        return round(sum(opens_with_refusal(r) for r in resp) / max(1, len(resp)), 4)

    rates = {
        "harmful_refusal": rate([p.text for p in harmful]),
        "harmless_refusal": rate([p.text for p in harmless]),
    }
    if trigger:
        rates["harmful_refusal_with_trigger"] = rate(
            [insert_at_random(p.text, trigger, rng) for p in harmful]
        )
    return rates
