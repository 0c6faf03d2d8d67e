"""Benchmark residual-stream capture against TransformerBridge.run_with_cache (no filter) and a
plain HF forward with output_hidden_states=True. Writes results/bench_activations.{json,md}.

Capture itself runs through bridge hooks (names filter, early stop); it and the
run_with_cache baseline each build their bridge around the loaded model per call (boot time
counted in both), and the HF baseline runs on the unwrapped model (its own attention).

    python scripts/bench_activations.py [--model DIR] [--prompts 256] [--batch 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path
from typing import Any

import torch

from wbsafe.capture.activations import bridged, capture, encode, prompt_texts, site_name
from wbsafe.config import RuntimeConfig, default_cache_dir
from wbsafe.data import tinyworld as tw
from wbsafe.io.models import load_model
from wbsafe.io.serialize import run_manifest, write_json_atomic


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any, device: str) -> tuple[float, float]:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb()
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = sorted(glob.glob(str(default_cache_dir() / "organisms" / "tiny-*" / "base")))
    parser.add_argument("--model", default=default[-1] if default else None)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench_activations")
    args = parser.parse_args()
    loaded = load_model(args.model, runtime=RuntimeConfig(device=args.device))
    prompts = tw.prompt_set("test", n_per_category=max(1, args.prompts // 12))[: args.prompts]
    texts = prompt_texts(loaded, prompts)
    n_tokens = sum(len(loaded.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    L = loaded.n_layers
    half = [site_name(layer) for layer in range(max(1, L // 2))]
    full = [site_name(layer) for layer in range(L)]

    def run_bridge() -> None:
        with torch.no_grad(), bridged(loaded.model) as bridge:
            for i in range(0, len(texts), args.batch):
                batch = encode(loaded, texts[i : i + args.batch])
                bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)

    def run_hf() -> None:
        with torch.no_grad():
            for i in range(0, len(texts), args.batch):
                batch = encode(loaded, texts[i : i + args.batch])
                loaded.model(**batch.kwargs(), output_hidden_states=True, use_cache=False)

    cases = {
        "wbsafe capture, all layers": lambda: capture(loaded, prompts, full, batch_size=args.batch),
        "wbsafe capture, first half": lambda: capture(loaded, prompts, half, batch_size=args.batch),
        "HF output_hidden_states": run_hf,
        "bridge run_with_cache (no filter)": run_bridge,
    }
    # warm-up, in this order; on the CPU the peak is the process's running maximum RSS, so
    # a case's figure is its own only where it is higher than the cases before it
    peaks = {name: _timed(fn, loaded.device)[1] for name, fn in cases.items()}
    # interleaved rounds; the fastest round of each case counts (other jobs only slow us)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(_timed(fn, loaded.device)[0])
    rows = [
        {
            "case": name,
            "seconds": min(ts),
            "all_seconds": ts,
            "tokens_per_s": n_tokens / min(ts),
            "peak_mb": peaks[name],
        }
        for name, ts in times.items()
    ]
    by = {r["case"]: r for r in rows}
    speedups = {
        "all layers vs bridge": by["wbsafe capture, all layers"]["tokens_per_s"]
        / by["bridge run_with_cache (no filter)"]["tokens_per_s"],
        "first half vs HF hidden states": by["wbsafe capture, first half"]["tokens_per_s"]
        / by["HF output_hidden_states"]["tokens_per_s"],
    }
    result = {
        "model": loaded.describe(),
        "n_prompts": len(prompts),
        "n_tokens": n_tokens,
        "batch_size": args.batch,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "speedups": speedups,
        "targets": {"all layers vs bridge": 1.3, "first half vs HF hidden states": 1.6},
        "manifest": run_manifest(),
    }
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), result)
    lines = ["| case | tokens/s | peak MB |", "| --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} |" for r in rows]
    lines += ["", *(f"- {k}: {v:.2f}x" for k, v in speedups.items())]
    lines += [
        "",
        f"{len(prompts)} prompts, {n_tokens} tokens, batch {args.batch}; fastest of "
        f"{args.repeats} interleaved rounds. Capture and the run_with_cache baseline build their "
        "bridge per call (counted); the HF baseline runs on the unwrapped model. On the CPU, "
        "peak MB is the process's running maximum RSS in row order.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
