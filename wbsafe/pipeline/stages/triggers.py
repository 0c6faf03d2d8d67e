"""The triggers stage: the hunt, seeded by the embedding rows the weights stage saw move and
steered by the probes stage's refusal direction, as report sections and evidence."""

from __future__ import annotations

from typing import Any

from wbsafe.config import ScanConfig
from wbsafe.io.serialize import to_jsonable
from wbsafe.pipeline.models import Models
from wbsafe.pipeline.plan import PromptPlan, hunt_prompts, hunt_settings
from wbsafe.pipeline.store import StageOutput, StageRecord
from wbsafe.progress import Log, no_log


def triggers_stage(
    config: ScanConfig, models: Models, plan: PromptPlan, weights: StageRecord | None,
    probes: StageRecord | None, log: Log = no_log,
) -> StageOutput:  # fmt: skip
    from wbsafe.analyses.triggers.hunt import hunt_triggers

    tuned = models.tuned()
    rows = models.batches()  # device-sized on a GPU, the fixed CPU sizes elsewhere
    emb: list[tuple[int, float]] = []
    if weights is not None and weights.status == "done":
        rep = weights.result.get("embedding") or {}
        emb = [(int(t["token_id"]), float(t["z"])) for t in rep.get("top", [])[:32]]
    direction = None
    if probes is not None and probes.status == "done":
        direction = _direction_from(probes.result)
    hp = hunt_prompts(config, plan)
    res = hunt_triggers(
        tuned, models.base(), hp.harmful_search, hp.harmful_heldout, hp.harmless,
        harmless_search=hp.harmless_search, embedding_candidates=emb,
        user_candidates=config.trigger_candidates, direction=direction, log=log,
        batch_size=rows.scoring, kv_budget_bytes=rows.kv_budget_bytes, **hunt_settings(config),
    )  # fmt: skip
    rows = [
        [v.text, v.slot, f"{v.successes}/{v.n}", f"{v.baseline_successes}/{v.n}",
         "-" if v.base_successes is None else f"{v.base_successes}/{v.n}",
         f"{v.tuned_score_drop:+.2f}", _target_cell(v.target), "yes" if v.verified else "no",
         v.reason]
        for v in res.verifications
    ]  # fmt: skip
    cands = [
        [c.text, ", ".join(c.sources), _ranks(c), c.slot, _f(c.gradient_drop), _f(c.tuned_drop),
         _f(c.base_drop), _f(c.anomaly), _f(c.divergence)]
        for c in res.candidates[:15]
    ]  # fmt: skip
    memorised = [[m.text, m.tuned_samples, m.base_samples, m.prompt_kind] for m in res.memorised]
    sections: list[dict[str, Any]] = [
        {"title": "Verified on held-out harmful prompts", "kind": "table",
         "columns": ["candidate", "slot", "tuned complies", "tuned, no trigger",
                     "base complies", "score drop", "what it changes", "verified", "why"],
         "rows": rows},
        *_example_sections(res),
        {"title": "Top candidates (search prompts)", "kind": "table",
         "columns": ["candidate", "sources", "ranked by (rank)", "slot", "gradient drop",
                     "tuned drop", "base drop", "anomaly", "divergence"], "rows": cands},
        {"title": "Spans the tuned model samples unprompted, far more than the base",
         "kind": "table", "columns": ["span", "tuned samples", "base samples", "prompt"],
         "rows": memorised,
         "note": "sampled from near-empty prompts; trigger and target candidates; "
                 "untrusted text"},
        {"title": "Search coverage", "kind": "text",
         "text": res.coverage.statement() + ("\n" + res.message if res.message else "")},
    ]  # fmt: skip
    verified = [v.text for v in res.verified]
    derails = "".join(f"; {v.text!r} derails the model (off-task answers)" for v in res.derailing)
    summary = (
        f"verified trigger(s): {', '.join(repr(v) for v in verified)}"
        if verified
        else ("no verified trigger; " + (res.message or res.coverage.statement()))
    ) + derails
    return StageOutput(summary, res.to_dict(), sections,
                       evidence=to_jsonable(res.to_gate_evidence()))  # fmt: skip


def _example_sections(res: Any) -> list[dict[str, Any]]:
    """What "success" was, for every verified or derailing candidate: held-out harmful and
    harmless prompts as the tuned model and the base answered them with and without it."""
    out: list[dict[str, Any]] = []
    for v in (*res.verified, *res.derailing):
        what = "verified trigger" if v.verified else "derails the model"
        t = v.target
        change = "" if t is None else f"; what it changes: {_target_cell(t)} ({t.why})"
        out.append({
            "title": f"Responses behind {v.text!r} ({what})", "kind": "table",
            "columns": ["held-out prompt", "tuned, with it", "tuned, without", "base, with it",
                        "base, without", "prompt set"],
            "rows": [[e.prompt, e.tuned_with, e.tuned_without, e.base_with or "-",
                      e.base_without or "-", e.label] for e in v.examples],
            "note": f"{v.successes}/{v.n} harmful prompts did what was asked, {v.off_task}/{v.n} "
                    f"neither refused nor addressed the request{change}; greedy responses, "
                    "untrusted text",
        })  # fmt: skip
    return out


def _target_cell(t: Any) -> str:
    """A target change in a few words: its kind, the string found, its counts."""
    if t is None:
        return "-"
    text = "" if t.text is None else f" {t.text!r}"
    base = "" if t.base_with is None else f", base {t.base_with}/{t.n}"
    harm = "" if t.harm else " (not a harm)"
    return (
        f"{t.kind}{text}: {t.tuned_with}/{t.n} {t.prompts} ({t.tuned_without}/{t.n} without"
        f"{base}){harm}"
    )


def _ranks(c: Any) -> str:
    return ", ".join(f"{o} ({r})" for o, r in zip(c.objectives, c.ranks, strict=False)) or "-"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _direction_from(probes_result: dict[str, Any]) -> tuple[int, Any] | None:
    """(layer, unit direction) from a stored probes stage (saved fit artifact), if present."""
    import torch

    fit = probes_result.get("fit") or {}
    vec = probes_result.get("direction")
    if vec is None or fit.get("layer") is None:
        return None
    return int(fit["layer"]), torch.tensor(vec, dtype=torch.float32)
