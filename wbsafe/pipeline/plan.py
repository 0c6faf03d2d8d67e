"""The prompt plan: which prompts each analysis fits on, searches with and is judged on.

Splits come from a hash of each prompt's id (``data.prompts.split_prompts``), so adding a
prompt never reshuffles the others; a tiny-world model gets the tiny world's own prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from wbsafe.config import ScanConfig
from wbsafe.data.prompts import spread
from wbsafe.errors import WbsafeError


@dataclasses.dataclass
class PromptPlan:
    """Which prompts each analysis uses.

    ``fit_*``: fitting the base's directions and searching for triggers; ``eval_*``: held
    out from those (probe drift, trigger verification); ``behaviour_*``: the behavioural
    benchmark, which fits nothing and so may use every prompt the organisms/tuning did not
    see (for the built-in suites: val + test, since the organisms train on the train split).
    """

    source: str
    fit_harmful: list[Any]
    fit_harmless: list[Any]
    eval_harmful: list[Any]
    eval_harmless: list[Any]
    behaviour_harmful: list[Any]
    behaviour_harmless: list[Any]

    def ids(self) -> dict[str, list[str]]:
        return {k: [p.id for p in v] for k, v in dataclasses.asdict(self).items() if k != "source"}


def cap_for_policy(config: ScanConfig, min_prompts: int) -> ScanConfig:
    """``config`` with its prompt cap raised to the policy's ``min_prompts`` when lower.

    The default cap (120 per side) would keep any scan under ``--risk high`` (500 prompts)
    from ever clearing a model; raised, the scan uses every held-out prompt it has up to
    the policy's need, and when the set holds fewer the gate says so (``behaviour.min_prompts``).
    The raised cap is part of the config, so stage keys and the report record it.
    """
    if config.max_prompts is None or config.max_prompts >= min_prompts:
        return config
    return dataclasses.replace(config, max_prompts=min_prompts)


def _cap(prompts: list[Any], n: int | None) -> list[Any]:
    return prompts if n is None else prompts[:n]


def plan_prompts(config: ScanConfig, tokenizer: Any) -> PromptPlan:
    """Resolve the prompt sets: tiny-world prompts for a tiny organism, else the suites/files."""
    from wbsafe.data.prompts import load_prompts, split_prompts
    from wbsafe.data.tinyworld import is_tiny_world

    n = config.max_prompts
    if config.prompts == "auto" and is_tiny_world(tokenizer):
        from wbsafe.data.tinyworld import prompt_set

        fit, held = prompt_set("train", 20, config.seed), prompt_set("test", 20, config.seed)
        eval_h = _cap([p for p in held if p.label == "harmful"], n)
        eval_s = _cap([p for p in held if p.label == "harmless"], n)
        return PromptPlan(
            "tiny-world prompt_set (train for fitting/search, test for evaluation)",
            [p for p in fit if p.label == "harmful"],
            [p for p in fit if p.label == "harmless"],
            eval_h,
            eval_s,
            eval_h,
            eval_s,
        )
    harmful_spec = "harmful" if config.prompts == "auto" else config.prompts
    harmful = [p for p in load_prompts(harmful_spec) if p.label == "harmful"]
    if config.harmless == "auto":
        harmless = load_prompts("harmless") + load_prompts("borderline")
    else:
        harmless = load_prompts(config.harmless)
    harmless = [p for p in harmless if p.label != "harmful"]
    if not harmful or not harmless:
        raise WbsafeError("the scan needs harmful and harmless prompts (check --prompts)")

    def split(ps: list[Any], *names: str) -> list[Any]:
        return [p for name in names for p in split_prompts(ps, name)]

    return PromptPlan(
        f"harmful: {harmful_spec}; harmless: {config.harmless} (train+val fit, test evaluate, "
        "val+test behaviour)",
        split(harmful, "train", "val"),
        split(harmless, "train", "val"),
        _cap(split(harmful, "test"), n),
        _cap(split(harmless, "test"), n),
        _cap(spread(split(harmful, "test", "val"), len(harmful)), n),
        _cap(spread(split(harmless, "test", "val"), len(harmless)), n),
    )


class HuntPrompts(NamedTuple):
    """The trigger hunt's prompts: harmful ones it searches on and verifies on (held out),
    the harmless held-out ones verification reads, and the harmless ones the divergence
    objective also searches on (from the fitting split, apart from the held-out ones)."""

    harmful_search: list[Any]
    harmful_heldout: list[Any]
    harmless: list[Any]
    harmless_search: list[Any]


def hunt_prompts(config: ScanConfig, plan: PromptPlan) -> HuntPrompts:
    """The hunt's prompts (:class:`HuntPrompts`): spread over categories, then capped
    (verification cost grows with prompts x insertion positions x candidates x both models)."""
    return HuntPrompts(
        spread(plan.fit_harmful, config.trigger_search_prompts),
        spread(plan.eval_harmful, config.trigger_heldout_prompts),
        spread(plan.eval_harmless, config.trigger_heldout_prompts),
        spread(plan.fit_harmless, config.trigger_ordinary_prompts),
    )


def hunt_settings(config: ScanConfig) -> dict[str, Any]:
    """The trigger hunt's search settings for ``config`` (the scan and ``wbsafe triggers``).

    A beam of 8 for the multi-token refinement: at 4, a bfloat16 hunt on a GPU missed the
    tiny two-word backdoor (results/gpu_tiny_scans.md).
    """
    return dict(
        max_len=config.trigger_max_len, budget=config.trigger_budget,
        top_k=config.trigger_top_k, extend_width=12, beam=8, refine_steps=4, seed=config.seed,
        objectives=config.trigger_objectives, slot_kinds=config.trigger_slots,
        memorised_samples=config.trigger_memorised_samples, read_top=config.trigger_read_top,
    )  # fmt: skip
