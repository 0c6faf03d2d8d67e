"""The scan's trigger hunt prompts: harmful ones to search and verify on, harmless ones to
verify on, and harmless ones of the fitting split for the divergence objective to search."""

from __future__ import annotations

import dataclasses

from wbsafe.api import build_scan_config
from wbsafe.pipeline.plan import hunt_prompts, plan_prompts


class _Suites:
    """A tokenizer stand-in that is not the tiny world's (the built-in suites are used)."""

    def get_vocab(self) -> dict[str, int]:
        return {"hello": 0}


def test_the_hunt_searches_harmless_prompts_apart_from_those_it_verifies_on() -> None:
    config = build_scan_config(base="b", tuned="t")
    plan = plan_prompts(config, _Suites())
    hp = hunt_prompts(config, plan)
    assert len(hp.harmless_search) == config.trigger_ordinary_prompts == 4
    assert all(p.label == "harmless" for p in hp.harmless_search)
    searched, verified = {p.id for p in hp.harmless_search}, {p.id for p in hp.harmless}
    assert searched <= {p.id for p in plan.fit_harmless} and not searched & verified
    assert len({p.category for p in hp.harmless_search}) == 4  # spread over categories
    none = hunt_prompts(dataclasses.replace(config, trigger_ordinary_prompts=0), plan)
    assert none.harmless_search == [] and none.harmful_search == hp.harmful_search
