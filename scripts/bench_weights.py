"""Benchmark the streaming weight diff against a naive full load and the read-only limit.

Each method runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

1. naive: ``safetensors.torch.load_file`` every shard of both checkpoints, then subtract;
1b. naive_hf: the issue's baseline: ``from_pretrained`` both models, subtract the state dicts
   and compute the same per-tensor figures (norms, cosine, max) without spectra;
2. limit: one pass that only reads every tensor of both checkpoints and sums squares;
3. wbsafe without spectra; 4. wbsafe with spectra (``diff_checkpoints``); 3b. wbsafe without
   spectra on its torch path (``WBSAFE_NATIVE=0``), which measures the fused kernel's share.

Files are read once before the timed runs so that every method sees a warm page cache, and
each method's modules are imported before its clock starts.

    python scripts/bench_weights.py --size-gb 0.5             # synthetic sharded bf16 pair
    python scripts/bench_weights.py --base B --tuned T --label smollm2   # any given pair
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHODS = (
    "naive",
    "naive_hf",
    "limit",
    "wbsafe_nospectra",
    "wbsafe_nospectra_torch",
    "wbsafe_spectra",
)


def _files(d: Path) -> list[Path]:
    from wbsafe.io.checkpoints import weight_files

    return weight_files(d, "model")


def make_pair(workdir: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic Llama-shaped bf16 pair of about ``size_gb`` each, sharded at ~512 MB."""
    import torch
    from safetensors.torch import save_file

    d, ff, vocab = 2048, 5632, 32000
    per_layer = 2 * (4 * d * d + 3 * d * ff)  # bytes in bf16
    n_layers = max(1, round((size_gb * 1e9 - 2 * 2 * vocab * d) / per_layer))
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [(p + f"self_attn.{m}_proj.weight", (d, d)) for m in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (ff, d)), (p + "mlp.up_proj.weight", (ff, d))]
        shapes += [(p + "mlp.down_proj.weight", (d, ff))]
        shapes += [
            (p + "input_layernorm.weight", (d,)),
            (p + "post_attention_layernorm.weight", (d,)),
        ]
    shapes += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    config = {
        "model_type": "llama",
        "hidden_size": d,
        "num_hidden_layers": n_layers,
        "intermediate_size": ff,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    base_dir, tuned_dir = workdir / "base", workdir / "tuned"
    g = torch.Generator().manual_seed(seed)
    shard_bytes = 512 * 1024 * 1024
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * math.prod(shape)
        if size + nbytes > shard_bytes and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    for out in (base_dir, tuned_dir):
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config))
    weight_map: dict[str, str] = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        base_sd, tuned_sd = {}, {}
        for name, shape in group:
            w = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
            dw = 1e-2 * w.abs().mean() * torch.randn(shape, generator=g)
            if name == "model.layers.0.self_attn.o_proj.weight":  # a planted rank-1 edit
                dw += 0.05 * torch.outer(torch.randn(d, generator=g), torch.randn(d, generator=g))
            base_sd[name] = w.to(torch.bfloat16)
            tuned_sd[name] = (w + dw).to(torch.bfloat16)
            weight_map[name] = fname
        save_file(base_sd, str(base_dir / fname))
        save_file(tuned_sd, str(tuned_dir / fname))
        del base_sd, tuned_sd
    for out in (base_dir, tuned_dir):
        total = sum(f.stat().st_size for f in out.glob("model-*.safetensors"))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return base_dir, tuned_dir


def run_method(method: str, base: Path, tuned: Path) -> dict[str, Any]:
    """Body of one subprocess: run ``method`` and return its timing and figures.

    Each method's modules are imported before the clock starts (transformers for naive_hf,
    safetensors for naive and limit, wbsafe for the diff): the clock times the work on the
    files, not the interpreter loading code, for every method alike.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    if method == "naive_hf":
        from transformers import AutoModelForCausalLM
    from wbsafe.analyses.weights import diff_checkpoints
    from wbsafe.analyses.weights.diff_kernel import kernel

    kernel()  # load (or build, once per machine) the fused kernel before the clock
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "naive":
        sb: dict[str, torch.Tensor] = {}
        st: dict[str, torch.Tensor] = {}
        for f in _files(base):
            sb.update(load_file(str(f)))
        for f in _files(tuned):
            st.update(load_file(str(f)))
        total = 0.0
        for k, w in sb.items():
            dw = st[k].float() - w.float()
            total += float(dw.square().sum())
        extra["fro_diff_total"] = math.sqrt(total)
    elif method == "naive_hf":
        mb = AutoModelForCausalLM.from_pretrained(str(base))
        mt = AutoModelForCausalLM.from_pretrained(str(tuned))
        sd_t = mt.state_dict()
        total = 0.0
        for k, w in mb.state_dict().items():
            w32, dw = w.float(), sd_t[k].float() - w.float()
            total += float(dw.square().sum())
            float(dw.abs().max())
            float(
                (w32.flatten() @ sd_t[k].float().flatten()) / (w32.norm() * sd_t[k].float().norm())
            )
        extra["fro_diff_total"] = math.sqrt(total)
    elif method == "limit":
        total = 0.0
        for f in [*_files(base), *_files(tuned)]:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    t = fh.get_tensor(k).float().reshape(-1)
                    total += float(t.dot(t))
        extra["sum_squares"] = total
    else:
        res = diff_checkpoints(base, tuned, spectra=method == "wbsafe_spectra")
        total = sum((r.fro_diff or 0.0) ** 2 for r in res.rows)
        extra["fro_diff_total"] = math.sqrt(total)
        extra["top_cell"] = [res.ranking[0].layer, res.ranking[0].module]
        extra["dense_engine"] = res.dense_engine
        extra["n_tensors"] = len(res.rows)
    wall = time.perf_counter() - t0
    return {"method": method, "wall_s": wall, "peak_rss_mb": peak_rss_mb(), **extra}


def peak_rss_mb() -> float:
    """Peak resident set of this process: VmHWM (reset by exec, unlike ru_maxrss, which a
    child inherits from its parent), ru_maxrss where /proc is absent."""
    from wbsafe.io.serialize import peak_rss_kib

    kib = peak_rss_kib()
    return kib / 1024 if kib else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - t0


def bench(base: Path, tuned: Path, label: str, repeats: int) -> dict[str, Any]:
    files = [*_files(base), *_files(tuned)]
    load_before = os.getloadavg()[0]
    nbytes = sum(f.stat().st_size for f in files)
    warm_s = warm(files)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(repeats):
        for m in METHODS:
            cmd = [
                sys.executable,
                __file__,
                "--_method",
                m,
                "--base",
                str(base),
                "--tuned",
                str(tuned),
            ]
            env = dict(os.environ)
            if m.endswith("_torch"):
                env["WBSAFE_NATIVE"] = "0"
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env
            )
            runs[m].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(m, runs[m][-1], flush=True)
    best = {m: min(runs[m], key=lambda r: r["wall_s"]) for m in METHODS}
    nv, lim = best["naive"], best["limit"]
    hf = best["naive_hf"]
    ns, sp = best["wbsafe_nospectra"], best["wbsafe_spectra"]
    nt = best["wbsafe_nospectra_torch"]
    return {
        "label": label,
        "base": str(base),
        "tuned": str(tuned),
        "bytes_both": nbytes,
        "warm_read_s": warm_s,
        "repeats": repeats,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "best": best,
        "walls": {m: [r["wall_s"] for r in runs[m]] for m in METHODS},
        "dense_engine": ns.get("dense_engine"),
        "ratios": {
            "speedup_vs_naive_hf_nospectra": hf["wall_s"] / ns["wall_s"],
            "speedup_vs_naive_hf_spectra": hf["wall_s"] / sp["wall_s"],
            "rss_share_of_naive_hf_nospectra": ns["peak_rss_mb"] / hf["peak_rss_mb"],
            "rss_share_of_naive_hf_spectra": sp["peak_rss_mb"] / hf["peak_rss_mb"],
            "speedup_vs_naive_nospectra": nv["wall_s"] / ns["wall_s"],
            "speedup_vs_naive_spectra": nv["wall_s"] / sp["wall_s"],
            "rss_share_of_naive_nospectra": ns["peak_rss_mb"] / nv["peak_rss_mb"],
            "rss_share_of_naive_spectra": sp["peak_rss_mb"] / nv["peak_rss_mb"],
            "nospectra_over_limit": ns["wall_s"] / lim["wall_s"],
            "spectra_over_limit": sp["wall_s"] / lim["wall_s"],
            "torch_path_nospectra_over_limit": nt["wall_s"] / lim["wall_s"],
            "kernel_speedup_nospectra": nt["wall_s"] / ns["wall_s"],
            "nospectra_over_limit_median": statistics.median(
                r["wall_s"] for r in runs["wbsafe_nospectra"]
            )
            / statistics.median(r["wall_s"] for r in runs["limit"]),
        },
        "targets": {
            "speedup_vs_naive": ">= 3",
            "rss_share_of_naive": "<= 0.2",
            "nospectra_over_limit": "<= 2",
        },
    }


def write_md(path: Path, runs: list[dict[str, Any]]) -> None:
    lines = [
        "# Weight-diff benchmark",
        "",
        "Made by `scripts/bench_weights.py`; each method in its own subprocess, warm page "
        "cache, best of the repeats. RSS is the subprocess's peak (`VmHWM`). The targets "
        "(issue #3) are for the diff without spectra, the work every baseline also does; "
        "spectra (randomised SVDs no baseline computes) are reported apart.",
        "",
    ]
    for r in runs:
        gb = r["bytes_both"] / 1e9
        lines += [
            f"## {r['label']} ({gb:.2f} GB both checkpoints)",
            "",
            "| method | wall s | peak RSS MB |",
            "| --- | ---: | ---: |",
        ]
        for m in [m for m in METHODS if m in r["best"]]:  # older runs lack naive_hf
            b = r["best"][m]
            lines.append(f"| {m} | {b['wall_s']:.2f} | {b['peak_rss_mb']:.0f} |")
        if r.get("note"):
            lines += ["", r["note"]]
        if r.get("dense_engine"):
            lines += ["", f"Dense engine of `wbsafe_nospectra`: {r['dense_engine']}."]
        if r.get("load_average_1min"):
            lo, hi = r["load_average_1min"]
            lines += ["", f"1-minute load average before/after: {lo:.1f} / {hi:.1f}."]
        lines += ["", "| ratio | value | target |", "| --- | ---: | --- |"]
        q = r["ratios"]
        hf_lines = (
            [
                f"| naive_hf (from_pretrained) / wbsafe wall (no spectra) | {q['speedup_vs_naive_hf_nospectra']:.2f}x | >= 3x |",
                f"| naive_hf / wbsafe wall (spectra) | {q['speedup_vs_naive_hf_spectra']:.2f}x | — (apart) |",
                f"| wbsafe / naive_hf peak RSS (no spectra) | {q['rss_share_of_naive_hf_nospectra']:.3f} | <= 0.2 |",
                f"| wbsafe / naive_hf peak RSS (spectra) | {q['rss_share_of_naive_hf_spectra']:.3f} | — (apart) |",
            ]
            if "speedup_vs_naive_hf_nospectra" in q
            else []
        )
        lines += hf_lines
        lines += [
            f"| naive (load_file) / wbsafe wall (no spectra) | {q['speedup_vs_naive_nospectra']:.2f}x | context |",
            f"| naive (load_file) / wbsafe wall (spectra) | {q['speedup_vs_naive_spectra']:.2f}x | context |",
            f"| wbsafe / naive (load_file) peak RSS (no spectra) | {q['rss_share_of_naive_nospectra']:.3f} | context |",
            f"| wbsafe / naive (load_file) peak RSS (spectra) | {q['rss_share_of_naive_spectra']:.3f} | context |",
            f"| wbsafe (no spectra) / read-only limit | {q['nospectra_over_limit']:.2f}x | <= 2x |",
            *(
                [
                    f"| the same, median of the repeats over median | {q['nospectra_over_limit_median']:.2f}x | context |"
                ]
                if "nospectra_over_limit_median" in q
                else []
            ),
            f"| wbsafe (spectra) / read-only limit | {q['spectra_over_limit']:.2f}x | — (apart) |",
            *(
                [
                    f"| wbsafe torch path (no spectra) / read-only limit | {q['torch_path_nospectra_over_limit']:.2f}x | context |",
                    f"| torch path / fused kernel wall (no spectra) | {q['kernel_speedup_nospectra']:.2f}x | context |",
                ]
                if "kernel_speedup_nospectra" in q
                else []
            ),
            "",
        ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0, help="synthetic size of each checkpoint")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/wbsafe_bench_weights"))
    ap.add_argument("--base", type=Path, help="diff this pair instead of a synthetic one")
    ap.add_argument("--tuned", type=Path)
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--note", default="", help="free text stored with this run")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_weights.json")
    ap.add_argument("--md", type=Path, default=ROOT / "results" / "bench_weights.md")
    ap.add_argument("--_method", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._method:
        print(json.dumps(run_method(args._method, args.base, args.tuned)))
        return
    if args.base is not None and args.tuned is not None:
        base, tuned = args.base, args.tuned
        label = args.label or f"{base.name} vs {tuned.name}"
    else:
        work = args.workdir / f"{args.size_gb:g}gb"
        if not (work / "tuned" / "model.safetensors.index.json").is_file():
            t0 = time.perf_counter()
            make_pair(work, args.size_gb)
            print(f"made synthetic pair in {time.perf_counter() - t0:.1f}s", flush=True)
        base, tuned = work / "base", work / "tuned"
        label = args.label or f"synthetic {args.size_gb:g} GB bf16 (sharded)"
    result = bench(base, tuned, label, args.repeats)
    if args.note:
        result["note"] = args.note
    prior = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    runs = [r for r in prior.get("runs", []) if r.get("label") != label] + [result]
    import torch

    payload = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    write_md(args.md, runs)
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    main()
