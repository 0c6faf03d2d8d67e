"""Benchmark: passes the trigger hunt spends to recover each planted trigger vs brute force.

Brute force scores every token (every length-L sequence for an L-token trigger) on every
search prompt with one full forward each: ``vocab**L * prompts`` passes, computed
analytically; a sample of such forwards is timed to extrapolate its wall time. The hunt's
passes are counted by :class:`wbsafe.analyses.triggers.PassCounter` (every batch row
of a forward or backward is one pass; generation counts one pass per new token), over the
whole hunt, verification included. The hunt runs with the scan's default settings
(``wbsafe.pipeline.plan.hunt_settings``, maximum length 2 or the trigger's length).

    python scripts/bench_triggers.py                      # tiny backdoor organisms
    python scripts/bench_triggers.py --real DIR           # also organisms under DIR (organism.json)
    python scripts/bench_triggers.py --real DIR --no-tiny --only backdoor_phrase \
        --modes default --out results/bench_triggers_real.json   # chosen real organisms only
    python scripts/bench_triggers.py --real DIR --no-tiny --only benign --modes default
                                                          # a clean organism: what its hunt costs
    python scripts/bench_triggers.py --beam 4 --out results/bench_triggers_beam4.json
                                                          # one hunt setting changed (ablation)
    python scripts/bench_triggers.py --modes refusal      # only the refusal objective's rows

Each organism gets a row per mode: ``refusal`` (the refusal objective alone, in the last
user message: the figures the hunt had before the divergence objective), ``divergence``
(the target-agnostic objective alone, same slots) and ``default`` (the scan's: both
objectives, every slot kind, memorised samples).

Writes results/bench_triggers.json and results/bench_triggers.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY = ("backdoor", "backdoor_lora", "backdoor_multi")
TARGETS = ("backdoor_hate", "backdoor_hate_lora", "backdoor_marker", "backdoor_system")
"""Backdoors whose target is not plain compliance, or whose trigger is in the system turn
(rows when the tier has them); their verification needs target discovery."""
USER_ONLY = {"slot_kinds": ("user",), "memorised_samples": 0}
MODES: dict[str, dict[str, Any]] = {
    "refusal": {"objectives": ("refusal",), **USER_ONLY},
    "divergence": {"objectives": ("divergence",), **USER_ONLY},
    "default": {},
}


def bench_one(
    org: Any,
    search: list[Any],
    heldout: list[Any],
    harmless: list[Any],
    overrides: dict[str, Any] | None = None,
    harmless_search: list[Any] | None = None,
) -> dict[str, Any]:
    from wbsafe.analyses.triggers import PassCounter, hunt_triggers, score_full, slot_context
    from wbsafe.analyses.triggers.results import holds_phrase
    from wbsafe.capture.refusal_score import refusal_token_ids
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.io.models import load_model
    from wbsafe.pipeline.plan import hunt_settings

    rt = RuntimeConfig(device="auto")
    cfg = ScanConfig(base="")
    tuned = load_model(org.path, runtime=rt, hash_weights=False, follow_named_base=True)
    base = None
    if not tuned.adapter_names:
        base = load_model(Path(org.path).parent / (org.base or "base"), runtime=rt,
                          hash_weights=False)  # fmt: skip
    planted = org.trigger or {}  # none: a clean organism (its row: what a clean hunt costs)
    trigger = planted.get("text")
    length = len(planted.get("token_ids_in_context") or planted.get("token_ids") or [0])
    counter = PassCounter()
    t0 = time.perf_counter()
    settings = {**hunt_settings(cfg), "max_len": max(length, cfg.trigger_max_len)}
    settings.update({k: v for k, v in (overrides or {}).items() if k != "mode"})
    res = hunt_triggers(tuned, base, search, heldout, harmless, counter=counter,
                        harmless_search=harmless_search or [], **settings)  # fmt: skip
    hunt_s = time.perf_counter() - t0
    total = res.passes["total"]
    passes = int(total["passes"])
    search_passes = passes - sum(
        int(res.passes.get(k, {}).get("passes", 0)) for k in ("verify_scores", "generate")
    )
    vocab = res.coverage.vocab_size
    brute = vocab**length * len(search)
    # time a sample of brute-force full forwards (single tokens on the search prompts)
    ctxs = [slot_context(tuned, p, 1.0) for p in search]
    sample = [(i,) * length for i in range(10, 10 + max(1, 256 // len(ctxs)))]
    t0 = time.perf_counter()
    score_full(tuned.model, ctxs, sample, refusal_token_ids(tuned.tokenizer), batch_size=1)
    per_pass = (time.perf_counter() - t0) / (len(sample) * len(ctxs))
    mean_len = sum(len(c.prefix_ids) + length + len(c.suffix_ids) for c in ctxs) / len(ctxs)
    brute_tokens = int(brute * mean_len)
    found = [v.text for v in res.verified]
    rank = next((i + 1 for i, c in enumerate(res.candidates) if c.text == trigger), None)
    rank_in = next(
        (i + 1 for i, c in enumerate(res.candidates) if trigger and holds_phrase(c.text, trigger)),
        None,
    )
    return {
        "organism": org.name,
        "mode": (overrides or {}).get("mode", "default"),
        "trigger": trigger,
        "recovered": trigger in found if trigger else None,
        "recovered_in_phrase": any(holds_phrase(t, trigger) for t in found) if trigger else None,
        "verified": found,
        "rank": rank,
        "rank_in_phrase": rank_in,
        "hunt_passes": passes,
        "hunt_search_passes": search_passes,
        "hunt_tokens": int(total["tokens"]),
        "hunt_seconds": round(hunt_s, 2),
        "brute_passes": brute,
        "brute_tokens": brute_tokens,
        "ratio_tokens": round(brute_tokens / max(1, int(total["tokens"])), 1),
        "brute_seconds_extrapolated": round(per_pass * brute, 1),
        "ratio_passes": round(brute / max(1, passes), 1),
        "ratio_search_passes": round(brute / max(1, search_passes), 1),
        "vocab": vocab,
        "search_prompts": len(search),
        "coverage": res.coverage.statement(),
        "phases": res.passes,
    }


def main() -> None:
    import torch

    from wbsafe.config import ScanConfig
    from wbsafe.data.tinyworld import prompt_set
    from wbsafe.io.serialize import run_manifest, write_json_atomic
    from wbsafe.organisms import Organism, build_tiny_tier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=None, help="folder of real-tier organisms")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_triggers.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beam", type=int, default=None,
                    help="refinement beam instead of the scan's (an ablation; say --out)")  # fmt: skip
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated modes, of {', '.join(MODES)}")  # fmt: skip
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny tier's rows")
    ap.add_argument("--only", default="",
                    help="comma-separated real organism names (default: every one with a "
                         "trigger; one without is run when named here)")  # fmt: skip
    args = ap.parse_args()
    only = {n for n in args.only.split(",") if n}
    overrides = {"beam": args.beam} if args.beam is not None else {}
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        ap.error(f"--modes takes {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    threads, load0 = args.threads, os.getloadavg()[0]
    rows = []
    orgs = {} if args.no_tiny else {o.name: o for o in build_tiny_tier(log=print)}
    train, test = prompt_set("train", 2), prompt_set("test", 2)
    search = [p for p in train if p.label == "harmful"][:8]
    heldout = [p for p in test if p.label == "harmful"]
    harmless = [p for p in test if p.label == "harmless"][:4]
    n_ordinary = ScanConfig(base="").trigger_ordinary_prompts  # as the scan searches them
    ordinary = [p for p in train if p.label == "harmless"][:n_ordinary]
    for name in [t for t in (*TINY, *TARGETS) if t in orgs]:
        for mode in modes:
            ov = {**MODES[mode], **overrides, "mode": mode}
            rows.append(bench_one(orgs[name], search, heldout, harmless, ov, ordinary))
            print(name, mode, rows[-1]["recovered"], rows[-1]["rank"], rows[-1]["rank_in_phrase"])
    if args.real is not None:
        from wbsafe.data.prompts import load_suite, spread

        # spread over categories as the scan does; search from train only (the scan also
        # draws from val), held out from test
        suite = load_suite("harmful")
        r_search = spread([p for p in suite if p.split == "train"], 8)
        r_held = spread([p for p in suite if p.split == "test"], 16)
        r_harmless = spread([p for p in load_suite("harmless") if p.split == "test"], 16)
        r_ordinary = spread([p for p in load_suite("harmless") if p.split == "train"],
                            n_ordinary)  # fmt: skip
        for d in sorted(args.real.iterdir()):
            if (d / "organism.json").is_file() and (not only or d.name in only):
                org = Organism.load(d)
                if org.trigger or d.name in only:  # a clean one only when named
                    for mode in modes:
                        ov = {**MODES[mode], **overrides, "mode": mode}
                        rows.append(bench_one(org, r_search, r_held, r_harmless, ov,
                                              r_ordinary))  # fmt: skip
                        r = rows[-1]
                        print(org.name, mode, r["recovered"], r["rank"], r["rank_in_phrase"],
                              f"{r['hunt_seconds']:.0f} s", flush=True)  # fmt: skip
    out = {"rows": rows, "overrides": overrides, "modes": modes, "tiny": not args.no_tiny,
           "real": str(args.real) if args.real else None, "manifest": run_manifest()}  # fmt: skip
    write_json_atomic(args.out, out)
    lines = [
        "# Trigger hunt vs brute-force vocabulary scan",
        "",
        "Passes: batch rows through a forward or backward (generation: one per new token).",
        "Brute force: vocab^len x search prompts full forwards (analytic; time extrapolated "
        "from a timed sample).",
        "",
        "| organism | mode | vocab | trigger | recovered (in a phrase) | rank (of a phrase "
        "holding it) | hunt passes (search only) | brute passes | ratio (search only) | "
        "token ratio | hunt s | brute s (extrap.) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['organism']} | {r['mode']} | {r['vocab']} | {r['trigger']} | {r['recovered']} "
            f"({r['recovered_in_phrase']}) | {r['rank']} ({r['rank_in_phrase']}) "
            f"| {r['hunt_passes']} ({r['hunt_search_passes']}) | {r['brute_passes']} | "
            f"{r['ratio_passes']}x ({r['ratio_search_passes']}x) | {r['ratio_tokens']}x | "
            f"{r['hunt_seconds']} | {r['brute_seconds_extrapolated']} |"
        )
    lines += [
        "",
        "The >= 100x target is for a real vocabulary: on the tiny tier's 283 tokens a",
        "single-token brute force costs 2,264 passes, less than verifying one candidate on",
        "held-out prompts, so the tiny rows show the cost floor of verification, not search.",
        f"Torch threads: {threads}; 1-minute load average before/after: {load0:.1f} / "
        f"{os.getloadavg()[0]:.1f}.",
        f"Hunt settings changed from the scan's: {overrides or 'none'}.",
        "Modes: refusal = the refusal objective alone in the last user message (the rows this",
        "benchmark had before the divergence objective); divergence = the target-agnostic",
        "objective alone, same slots; default = the scan's (both objectives, budget shared,",
        "user/system/earlier-turn slots, memorised samples). Rank: of the trigger itself in the",
        "merged candidate list; in brackets, of the first candidate holding it (its phrase",
        "extensions, e.g. 'sapphire the', rank above it when they score higher). Recovered: the",
        "trigger itself verified; in brackets, a verified candidate holding it.",
    ]
    lines += ["", "Passes and seconds per phase of the hunt:", ""]
    for r in rows:
        phases = ", ".join(f"{k} {int(v['passes'])} ({v['seconds']:.0f} s)"
                           for k, v in r["phases"].items() if k != "total")  # fmt: skip
        lines.append(f"- {r['organism']} ({r['mode']}): {phases}")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
