"""Benchmark the behavioural refusal benchmark: batched vs one-at-a-time generation, and how
the refusal-rate interval narrows with the number of prompts.

Writes results/bench_behavior.json and results/bench_behavior.md. Uses only the public API.

    python scripts/bench_behavior.py                # tiny base organism (built/cached)
    python scripts/bench_behavior.py --model DIR    # any local chat model directory
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

from wbsafe import stats
from wbsafe.analyses.behaviour import interval_width_curve
from wbsafe.capture.generation import generate
from wbsafe.capture.judges import StringMatchJudge
from wbsafe.config import RuntimeConfig
from wbsafe.data.prompts import load_suite, split_prompts
from wbsafe.data.tinyworld import is_tiny_world, prompt_set
from wbsafe.io.models import load_model
from wbsafe.io.serialize import run_manifest, write_json_atomic

SIZES = (10, 25, 50, 100, 200, 400, 800, 1600)


def _default_model() -> Path:
    from wbsafe.organisms import build_tiny_tier

    orgs = {o.name: o for o in build_tiny_tier(log=print)}
    return Path(orgs["base"].path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: tiny base)")
    ap.add_argument("--n-prompts", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("results/bench_behavior"))
    args = ap.parse_args()

    model_dir = args.model or _default_model()
    loaded = load_model(model_dir, runtime=RuntimeConfig(device=args.device))
    # the model's own kind of prompts: tiny-world ones for a tiny organism, else the
    # built-in suites' held-out split (English prompts are mostly <unk> to the tiny tokenizer)
    if is_tiny_world(loaded.tokenizer):
        prompts = prompt_set(n_per_category=max(1, args.n_prompts // 12))
    else:
        prompts = [p for s in ("harmful", "harmless") for p in split_prompts(load_suite(s), "test")]
    random.Random(0).shuffle(prompts)
    prompts = prompts[: args.n_prompts]
    kw = {"max_new_tokens": args.max_new_tokens}

    generate(loaded, prompts[:4], batch_size=4, **kw)  # warm-up
    t0 = time.perf_counter()
    batched = generate(loaded, prompts, batch_size=args.batch_size, **kw)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = generate(loaded, prompts, batch_size=1, **kw)
    t_single = time.perf_counter() - t0
    same = sum(a.response == b.response for a, b in zip(batched, single, strict=True))
    tokens = sum(g.n_tokens for g in batched)

    judged = StringMatchJudge().judge(prompts, [g.response for g in batched])
    harmful = [j.refused for j, p in zip(judged, prompts, strict=True) if p.label == "harmful"]
    k, n = sum(map(bool, harmful)), len(harmful)
    rate = k / n if n else 0.0
    # the analytic curve at the observed rate and at the worst case (rate 0.5)
    curve = [
        {"n": m, "width_observed_rate": w, "width_rate_0.5": w5}
        for (m, w), (_, w5) in zip(
            interval_width_curve(rate, SIZES), interval_width_curve(0.5, SIZES), strict=True
        )
    ]
    observed = stats.wilson_interval(k, n) if n else (0.0, 1.0)

    result = {
        "model": str(model_dir),
        "device": loaded.device,
        "dtype": loaded.dtype,
        "machine": platform.platform(),
        "n_prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "batched_seconds": t_batched,
        "single_seconds": t_single,
        "speedup": t_single / t_batched if t_batched > 0 else None,
        "batched_prompts_per_s": len(prompts) / t_batched,
        "single_prompts_per_s": len(prompts) / t_single,
        "new_tokens": tokens,
        "identical_responses": same,
        "observed_harmful_refusal": {"k": k, "n": n, "rate": rate, "wilson": observed},
        "interval_width": curve,
        "manifest": run_manifest(),
    }
    json_path = args.out.with_suffix(".json")
    write_json_atomic(json_path, result)
    lines = [
        "# Behavioural benchmark: generation throughput and interval width",
        "",
        f"Model `{model_dir}` on {loaded.device} ({loaded.dtype}), {len(prompts)} prompts, "
        f"max_new_tokens {args.max_new_tokens}.",
        "",
        "| mode | seconds | prompts/s |",
        "| --- | ---: | ---: |",
        f"| batched (batch {args.batch_size}) | {t_batched:.2f} | {len(prompts) / t_batched:.1f} |",
        f"| one prompt at a time | {t_single:.2f} | {len(prompts) / t_single:.1f} |",
        "",
        f"Speed-up: **{t_single / t_batched:.1f}x**; greedy responses identical in "
        f"{same}/{len(prompts)} prompts (left padding may change float rounding).",
        "",
        f"Observed harmful refusal {k}/{n} = {rate:.1%}, Wilson 95% "
        f"[{observed[0]:.1%}, {observed[1]:.1%}].",
        "",
        "| prompts | CI width at observed rate | CI width at rate 0.5 |",
        "| ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c['n']} | {c['width_observed_rate']:.3f} | {c['width_rate_0.5']:.3f} |" for c in curve
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
