"""Benchmark: how each scan stage's time and peak memory grow with model size and vocabulary.

Random-initialised Llama-shaped pairs are built from a config only (nothing downloaded):
the weights are drawn tensor by tensor from a seed derived from the tensor's name, so the
tuned side is the base with one planted edit (a down-projection of the middle layer moved),
and are written as sharded bf16 safetensors with a byte-level BPE tokenizer trained here on
local text to the size's vocabulary (vocabulary size drives the trigger hunt's cost). A
random model's verdict means nothing; its costs do.

Each stage runs alone in a child process (``wbsafe scan`` with the other stages switched
off, default settings, a fresh directions cache), so its peak RSS is its own (VmHWM polled)
and a stage that passes ``--stage-cap`` seconds is stopped and recorded as capped with its
elapsed time. A line is fitted per stage: seconds against non-embedding parameters and
vocabulary size (through the measured, uncapped points), and extrapolated to 8B.

``--diff-pair 8b`` instead builds two bf16 8B-shaped checkpoints (~16 GB a side), times a
read-only pass over both and the streamed weight diff in the same run (peak RSS of each,
GB/s), checks that the diff's top tensor is the planted one, and deletes the pair.

    nice -n 10 python scripts/bench_scale.py --sizes 0.1b,0.1b-v128k,1b --stage-cap 420
    nice -n 10 python scripts/bench_scale.py --diff-pair 8b

Writes results/bench_scale.{md,json} (``--diff-pair``: results/bench_scale_diff.{md,json}).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".wbsafe-cache" / "scale"
STAGES = ("weights", "probes", "triggers", "behaviour")
GIB = 1024**3
GPU_TARGETS_S = {"1b": 180, "8b": 900}
NO_GPU = "not measured: no GPU was lent to this task"


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped model: sizes of its config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    def params(self, vocab: int | None = None) -> int:
        """Parameter count (embedding counted once when tied)."""
        v = self.vocab if vocab is None else vocab
        d, hd = self.hidden, self.hidden // self.heads
        attn = 2 * d * d + 2 * d * self.kv_heads * hd
        layer = attn + 3 * d * self.intermediate + 2 * d
        return self.layers * layer + d + v * d * (1 if self.tied else 2)

    def body_params(self) -> int:
        """Parameters outside the embedding and unembedding."""
        return self.params(0)


SHAPES = {
    # ~0.1B (SmolLM-like body, Llama-2 vocabulary)
    "0.1b": Shape(768, 12, 12, 4, 2048, 32000, True),
    # the same body with the Llama-3 vocabulary: separates vocabulary from body size
    "0.1b-v128k": Shape(768, 12, 12, 4, 2048, 128256, True),
    # Llama-3.2-1B
    "1b": Shape(2048, 16, 32, 8, 8192, 128256, True),
    # Llama-3-8B
    "8b": Shape(4096, 32, 32, 8, 14336, 128256, False),
}

SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


# --- building ---------------------------------------------------------------------------


def _corpus_files(limit_bytes: int = 60_000_000) -> list[str]:
    """Local text to train the tokenizer on: the project, the stdlib, installed packages."""
    import sysconfig

    roots = [ROOT / "wbsafe", ROOT / "probes", Path(sysconfig.get_paths()["stdlib"]),
             Path(sysconfig.get_paths()["purelib"])]  # fmt: skip
    out, total = [], 0
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.suffix in {".py", ".md", ".txt", ".rst", ".jsonl"} and p.is_file():
                out.append(str(p))
                total += p.stat().st_size
                if total >= limit_bytes:
                    return out
    return out


def build_tokenizer(vocab: int, where: Path) -> int:
    """Train a byte-level BPE of ``vocab`` entries (specials included) into ``where``;
    returns the size reached (smaller only if the local text runs out of merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    texts = (Path(f).read_text(encoding="utf-8", errors="ignore") for f in _corpus_files())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(where))
    return len(fast)


def _tensor_shapes(config: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a model's state dict, from the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    sd = skeleton.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return [(k, tuple(v.shape)) for k, v in sd.items() if not (tied and k == "lm_head.weight")]


def _draw(name: str, shape: tuple[int, ...], seed: int, planted: bool) -> Any:
    """One tensor: N(0, 0.02) for matrices, ones for norms; the planted one moved by 1e-2."""
    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
    t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g).mul_(0.02)
    if planted:
        t.add_(torch.randn(shape, generator=g).mul_(0.01))
    return t.to(torch.bfloat16)


def planted_name(shape: Shape) -> str:
    return f"model.layers.{shape.layers // 2}.mlp.down_proj.weight"


def write_checkpoint(
    shape: Shape, vocab: int, out: Path, tokenizer_dir: Path, *, tuned: bool, seed: int = 0,
    shard_gb: float = 2.0,
) -> None:  # fmt: skip
    """A sharded bf16 safetensors checkpoint, written one shard at a time (memory: one
    shard); ``tuned`` moves :func:`planted_name`'s tensor."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied,
        max_position_embeddings=4096, bos_token_id=0, eos_token_id=4, pad_token_id=1,
        rope_theta=500000.0, dtype="bfloat16",
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    names = _tensor_shapes(config)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shp in names:
        n = 2 * _numel(shp)
        if groups[-1] and size + n > shard_gb * 1e9:
            groups.append([])
            size = 0
        groups[-1].append((name, shp))
        size += n
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: _draw(n, s, seed, tuned and n == planted_name(shape)) for n, s in group}
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
        weight_map.update({n: fname for n, _ in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(out))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def build_pair(size: str, work: Path, seed: int) -> tuple[Path, Path, int]:
    """Base and tuned directories of ``size`` (reused when already built); the vocabulary."""
    shape = SHAPES[size]
    tok_dir = work / f"tokenizer-{shape.vocab}"
    if not (tok_dir / "tokenizer.json").is_file():
        build_tokenizer(shape.vocab, tok_dir)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tok_dir)))
    base, tuned = work / size / "base", work / size / "tuned"
    for d, is_tuned in ((base, False), (tuned, True)):
        if not (d / "model.safetensors.index.json").is_file():
            write_checkpoint(shape, vocab, d, tok_dir, tuned=is_tuned, seed=seed)
    return base, tuned, vocab


# --- measuring --------------------------------------------------------------------------


@dataclass
class Run:
    """One child process: wall seconds, peak RSS, whether it hit the cap, what it wrote."""

    wall_s: float
    peak_rss_gib: float
    capped: bool
    returncode: int | None
    result: dict[str, Any]


def run_child(cmd: list[str], out: Path, cap_s: float, threads: int) -> Run:
    """Run ``cmd`` (which writes ``out/child.json``), polling VmHWM, stopped at ``cap_s``."""
    from wbsafe.io.serialize import peak_rss_kib

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    capped = False
    with open(out / "child.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        hwm = 0
        while proc.poll() is None:
            hwm = max(hwm, (peak_rss_kib(proc.pid) or 0))
            if time.perf_counter() - t0 > cap_s:
                capped = True
                proc.kill()
                proc.wait()
                break
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    res_file = out / "child.json"
    result = json.loads(res_file.read_text()) if res_file.is_file() and not capped else {}
    return Run(round(wall, 1), round(hwm / 1024**2, 2), capped, proc.returncode, result)


def child_stage(args: argparse.Namespace) -> int:
    """One stage of a default scan (others off); writes its timings to ``child.json``."""
    import torch

    from wbsafe.api import build_scan_config, run_scan

    out = Path(args.out)
    skip = tuple(s for s in STAGES if s != args.stage)
    cfg = build_scan_config(
        base=args.base, tuned=args.tuned, skip=skip, directions_cache=str(out / "directions"),
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report = run_scan(cfg, out / "scan")
    wall = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    doc = {
        "stage_s": report["timings"].get(args.stage),
        "scan_s": round(wall, 2),
        "gpu_max_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)
        if cuda
        else None,
        "device": (report.get("models") or {}).get("tuned", {}).get("device"),
    }
    (out / "child.json").write_text(json.dumps(doc))
    return 0


def needs_gib(shape: Shape, vocab: int, device: str) -> float:
    """Memory the two models of a scan take (fp32 on the CPU, bf16 on a GPU), with 20% over."""
    per = 4 if device == "cpu" else 2
    return round(2 * shape.params(vocab) * per * 1.2 / GIB, 1)


def machine() -> dict[str, Any]:
    import torch

    from wbsafe.io.serialize import git_commit, package_versions

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "git_commit": git_commit(ROOT), "cpu": cpu, "cores": os.cpu_count(),
        "memory_gib": round(mem, 1), "gpu": gpu, "platform": platform.platform(),
        "python": platform.python_version(), "versions": package_versions(),
        "load_avg_start": os.getloadavg(),
    }  # fmt: skip


def fit(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least squares ``seconds = a + b * body_params + c * vocab`` through the measured
    points (fewer unknowns when there are fewer points); None with fewer than two."""
    import numpy as np

    if len(points) < 2:
        return None
    cols = ["body_params", "vocab"] if len(points) >= 3 else ["params"]
    x = np.array([[1.0, *[float(p[c]) for c in cols]] for p in points])
    y = np.array([float(p["seconds"]) for p in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = float(np.abs(x @ coef - y).max())
    return {"terms": ["intercept", *cols], "coef": [float(c) for c in coef],
            "points": len(points), "max_abs_residual_s": round(resid, 2),
            "exact": len(points) == len(coef)}  # fmt: skip


def predict(f: dict[str, Any], shape: Shape) -> float:
    vals = {"intercept": 1.0, "body_params": shape.body_params(), "vocab": shape.vocab,
            "params": shape.params()}  # fmt: skip
    return float(sum(c * vals[t] for t, c in zip(f["terms"], f["coef"], strict=True)))


def bench_sizes(args: argparse.Namespace) -> int:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    if device == "cuda":
        mem_gib = torch.cuda.mem_get_info()[1] / GIB
    info = machine()
    rows: list[dict[str, Any]] = []
    for size in args.sizes.split(","):
        shape = SHAPES[size]
        need = needs_gib(shape, shape.vocab, device)
        row: dict[str, Any] = {"size": size, "shape": asdict(shape), "params": shape.params(),
                               "body_params": shape.body_params(), "device": device}  # fmt: skip
        if need > 0.8 * mem_gib:
            row["skipped"] = f"skipped: needs ~{need} GiB for the pair, {mem_gib:.0f} GiB here"
            rows.append(row)
            print(size, row["skipped"], flush=True)
            continue
        t0 = time.perf_counter()
        base, tuned, vocab = build_pair(size, Path(args.work), args.seed)
        row.update(
            vocab=vocab, params=shape.params(vocab), build_s=round(time.perf_counter() - t0, 1)
        )
        row["stages"] = {}
        for stage in STAGES:
            out = Path(args.work) / "runs" / size / stage
            if out.exists():
                shutil.rmtree(out)
            cmd = [sys.executable, __file__, "--child", stage, "--base", str(base), "--tuned",
                   str(tuned), "--out", str(out), "--threads", str(args.threads)]  # fmt: skip
            run = run_child(cmd, out, args.stage_cap, args.threads)
            rec: dict[str, Any] = {"wall_s": run.wall_s, "peak_rss_gib": run.peak_rss_gib,
                                   "capped": run.capped, **run.result}  # fmt: skip
            if not run.capped and run.returncode != 0:
                rec["failed"] = f"exit {run.returncode}; see {out / 'child.log'}"
            row["stages"][stage] = rec
            print(size, stage, rec, flush=True)
        rows.append(row)
    doc = summarise(rows, info, args, device)
    write(doc, Path(args.results), args.name)
    return 0


def summarise(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace,
              device: str) -> dict[str, Any]:  # fmt: skip
    fits: dict[str, Any] = {}
    for stage in STAGES:
        pts = [{"seconds": r["stages"][stage]["stage_s"], "body_params": r["body_params"],
                "vocab": r["vocab"], "params": r["params"]}
               for r in rows if "stages" in r and r["stages"][stage].get("stage_s") is not None
               and not r["stages"][stage]["capped"]]  # fmt: skip
        f = fit(pts)
        fits[stage] = f and {**f, "predicted_8b_s": round(predict(f, SHAPES["8b"]), 1),
                             "predicted_1b_s": round(predict(f, SHAPES["1b"]), 1)}  # fmt: skip
    info["load_avg_end"] = os.getloadavg()
    return {
        "manifest": {
            **info,
            "device": device,
            "weights_dtype_on_disk": "bfloat16",
            "compute_dtype": "float32" if device == "cpu" else "bfloat16",
            "threads": args.threads,
            "stage_cap_s": args.stage_cap,
            "seed": args.seed,
            "settings": "wbsafe scan defaults; one stage per process",
        },
        "rows": rows,
        "fits": fits,
        **dominance(rows, fits),
        "gpu": None if device == "cuda" else NO_GPU,
        "gpu_targets_s": GPU_TARGETS_S,
    }


def dominance(rows: list[dict[str, Any]], fits: dict[str, Any]) -> dict[str, Any]:
    """Which stage is expected to dominate at 8B. A stage without a fit (capped) counts by
    its lower bound: the longest time it ran before the cap, at any size (a stage's cost
    does not fall as the model grows). Only when every stage has a fit, or one stage's
    bound beats every other's figure, is a single stage named."""
    fitted = {k: v["predicted_8b_s"] for k, v in fits.items() if v}
    bounds = {
        stage: max(r["stages"][stage]["wall_s"] for r in rows if "stages" in r)
        for stage in STAGES
        if stage not in fitted and any("stages" in r for r in rows)
    }
    if not bounds:
        best = max(fitted, key=fitted.__getitem__) if fitted else None
        return {"dominant_at_8b": best, "dominance_note": "from the fits"}
    above = [k for k, b in bounds.items() if all(b > v for v in fitted.values())]
    note = (
        f"no fit for {', '.join(bounds)} (capped; their longest process wall, model loading "
        "included: "
        + ", ".join(f"{k} {b} s" for k, b in bounds.items())
        + "); the fitted stages predict "
        + (", ".join(f"{k} {v} s" for k, v in fitted.items()) or "nothing")
        + " at 8B"
    )
    if len(above) == 1 and len(bounds) == 1:
        return {"dominant_at_8b": above[0], "dominance_note": note}
    name = " or ".join(above) if above else None
    return {"dominant_at_8b": f"one of {name}" if name else None, "dominance_note": note}


def resummarise(path: Path, results: Path) -> int:
    """Fits and verdict made again from the rows a run measured (its manifest kept, the
    commit of this summary added): a change to the summary needs no rerun of the stages."""
    from wbsafe.io.serialize import git_commit

    old = json.loads(path.read_text())
    m = old["manifest"]
    args = argparse.Namespace(threads=m["threads"], stage_cap=m["stage_cap_s"], seed=m["seed"])
    info = {k: v for k, v in m.items() if k not in ("device", "compute_dtype")}
    doc = summarise(old["rows"], info, args, m["device"])
    doc["manifest"]["load_avg_end"] = m["load_avg_end"]  # the run's, not this summary's
    doc["manifest"]["summary_commit"] = git_commit(ROOT)
    write(doc, results, "bench_scale")
    return 0


def write(doc: dict[str, Any], results: Path, name: str) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = diff_markdown(doc) if "runs" in doc else markdown(doc)
    (results / f"{name}.md").write_text(md)
    print(md)


def _cell(rec: dict[str, Any]) -> str:
    if rec.get("capped"):
        return f"capped at {rec['wall_s']} s"
    if rec.get("failed"):
        return f"failed ({rec['failed']})"
    return f"{rec.get('stage_s')} s ({rec['wall_s']} s wall)"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["manifest"]
    lines = [
        "# bench_scale: scan stages vs model size (random-initialised Llama shapes)",
        "",
        f"Commit `{m['git_commit']}`; device **{m['device']}** ({m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}); load average {m['load_avg_start']} "
        f"at start, {m['load_avg_end']} at end. Weights bf16 on disk, compute "
        f"{m['compute_dtype']}; {m['threads']} torch threads; stage cap {m['stage_cap_s']} s; "
        f"torch {m['versions'].get('torch')}, transformers {m['versions'].get('transformers')}. "
        "Each stage runs alone in its own process at the scan's default settings; the stage "
        "time is the scan's own figure (model loading excluded), wall includes start-up and "
        "loading both models.",
        "",
        "| size | params | vocab | " + " | ".join(STAGES) + " | peak RSS GiB (max) |",
        "| --- | ---: | ---: | " + " | ".join("---" for _ in STAGES) + " | ---: |",
    ]
    for r in doc["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['size']} | {r['params'] / 1e9:.2f}B | {r['shape']['vocab']} | "
                         + " | ".join(r["skipped"] for _ in STAGES) + " | - |")  # fmt: skip
            continue
        peak = max(s["peak_rss_gib"] for s in r["stages"].values())
        lines.append(f"| {r['size']} | {r['params'] / 1e9:.2f}B | {r['vocab']} | "
                     + " | ".join(_cell(r["stages"][s]) for s in STAGES) + f" | {peak} |")  # fmt: skip
    lines += ["", "Peak RSS per stage (GiB): " + "; ".join(
        f"{r['size']}: " + ", ".join(f"{s} {v['peak_rss_gib']}" for s, v in r["stages"].items())
        for r in doc["rows"] if "stages" in r)]  # fmt: skip
    lines += ["", "## Fits (CPU seconds per stage)", ""]
    for stage, f in doc["fits"].items():
        if not f:
            lines.append(f"- {stage}: no fit (fewer than two measured, uncapped points)")
            continue
        terms = " + ".join(f"{c:.3g}·{t}" for t, c in zip(f["terms"], f["coef"], strict=True))
        lines.append(f"- {stage}: s = {terms} ({f['points']} points"
                     f"{', exact: as many points as terms' if f['exact'] else ''}; max residual "
                     f"{f['max_abs_residual_s']} s); extrapolated 1B {f['predicted_1b_s']} s, "
                     f"8B {f['predicted_8b_s']} s")  # fmt: skip
    lines += ["", f"Stage expected to dominate at 8B: **{doc['dominant_at_8b'] or 'unknown'}** "
              f"({doc.get('dominance_note', 'from the fits')}).", "",
              "## GPU", "", f"GPU rows: {doc['gpu'] or 'see the table above'}. Targets: 1B "
              f"within {GPU_TARGETS_S['1b']} s, 8B within {GPU_TARGETS_S['8b']} s (bf16, one "
              "80 GB-class GPU).", ""]  # fmt: skip
    return "\n".join(lines)


# --- the weight diff at scale -----------------------------------------------------------


def child_read(args: argparse.Namespace) -> int:
    """Read-only pass: every byte of every shard of both sides, 64 MiB at a time into one
    reused buffer (the I/O floor of any diff of these files; nothing is computed)."""
    from wbsafe.io.checkpoints import weight_files

    buf = bytearray(64 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    for d in (args.base, args.tuned):
        for f in weight_files(d):
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
    wall = time.perf_counter() - t0
    Path(args.out, "child.json").write_text(json.dumps({"bytes": total, "seconds": wall}))
    return 0


def child_diff(args: argparse.Namespace) -> int:
    """The streamed diff (default settings); top tensor by relative change."""
    import torch

    from wbsafe.analyses.weights import diff

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = diff(args.base, args.tuned)
    wall = time.perf_counter() - t0
    top = max(res.rows, key=lambda t: t.rel_diff or 0.0)
    doc = {"seconds": wall, "top_tensor": top.name, "top_rel": top.rel_diff,
           "n_tensors": len(res.rows), "engine": res.dense_engine}  # fmt: skip
    Path(args.out, "child.json").write_text(json.dumps(doc, default=str))
    return 0


def bench_diff_pair(args: argparse.Namespace) -> int:
    import torch

    size = args.diff_pair
    shape = SHAPES[size]
    info = machine()
    work = Path(args.work) / f"diff-{size}"
    need = 2.2 * 2 * shape.params() / 1e9
    free = shutil.disk_usage(Path(args.work).parent).free / 1e9
    if free < need:
        raise SystemExit(f"the {size} pair needs ~{need:.0f} GB of disk; {free:.0f} GB free")
    tok_dir = Path(args.work) / f"tokenizer-{shape.vocab}"
    if not (tok_dir / "tokenizer.json").is_file():
        build_tokenizer(shape.vocab, tok_dir)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tok_dir)))
    t0 = time.perf_counter()
    base, tuned = work / "base", work / "tuned"
    for d, is_tuned in ((base, False), (tuned, True)):
        write_checkpoint(shape, vocab, d, tok_dir, tuned=is_tuned, seed=args.seed)
    build_s = time.perf_counter() - t0
    size_bytes = sum(f.stat().st_size for d in (base, tuned) for f in d.glob("*.safetensors"))
    runs: dict[str, Any] = {}
    try:
        for mode in ("read", "diff"):
            evict(base, tuned)  # both passes start cold: neither gains the other's page cache
            out = work / f"run-{mode}"
            cmd = [sys.executable, __file__, f"--child-{mode}", "--base", str(base), "--tuned",
                   str(tuned), "--out", str(out), "--threads", str(args.threads)]  # fmt: skip
            run = run_child(cmd, out, args.stage_cap, args.threads)
            secs = run.result.get("seconds")
            runs[mode] = {**asdict(run), "gb_per_s": round(size_bytes / 1e9 / secs, 3)
                          if secs else None}  # fmt: skip
            print(mode, runs[mode], flush=True)
    finally:
        shutil.rmtree(work)
    top = runs["diff"]["result"].get("top_tensor")
    doc = {
        "manifest": {
            **info,
            "device": "cpu",
            "weights_dtype_on_disk": "bfloat16",
            "threads": args.threads,
            "cap_s": args.stage_cap,
            "seed": args.seed,
            "load_avg_end": os.getloadavg(),
        },
        "size": size,
        "shape": asdict(shape),
        "vocab": vocab,
        "params": shape.params(vocab),
        "bytes_both_sides": size_bytes,
        "build_s": round(build_s, 1),
        "runs": runs,
        "planted": planted_name(shape),
        "top_is_planted": top == planted_name(shape),
        "gpu": None
        if torch.cuda.is_available()
        else "not measured: no GPU was lent to this task (the diff's reductions run on the CPU here)",
        "pair_deleted": not work.exists(),
    }
    write(doc, Path(args.results), "bench_scale_diff")
    return 0


def evict(*dirs: Path) -> None:
    """Drop these checkpoints' pages from the page cache (only their files)."""
    for d in dirs:
        for f in d.glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def diff_markdown(doc: dict[str, Any]) -> str:
    m, r = doc["manifest"], doc["runs"]

    def cell(x: dict[str, Any]) -> str:
        if x["capped"]:
            return f"capped at {x['wall_s']} s | {x['peak_rss_gib']} | -"
        return f"{x['result'].get('seconds', 0):.1f} | {x['peak_rss_gib']} | {x['gb_per_s']}"

    return "\n".join([
        f"# bench_scale --diff-pair {doc['size']}: streamed weight diff of a bf16 pair",
        "",
        f"Commit `{m['git_commit']}`; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; "
        f"load average {m['load_avg_start']} at start, {m['load_avg_end']} at end; "
        f"{m['threads']} threads; torch {m['versions'].get('torch')}. Pair: two random-"
        f"initialised {doc['params'] / 1e9:.2f}B Llama-shaped checkpoints ({doc['shape']}), "
        f"{doc['bytes_both_sides'] / 1e9:.1f} GB on disk together (bf16, sharded), built in "
        f"{doc['build_s']} s. The pair's pages are dropped from the page cache before each "
        "pass (posix_fadvise DONTNEED), so both start from disk; the read pass runs first.",
        "",
        "| pass | seconds | peak RSS GiB | GB/s (both sides) |",
        "| --- | ---: | ---: | ---: |",
        f"| read-only (every byte of both sides' shards) | {cell(r['read'])} |",
        f"| wbsafe streamed diff (defaults, spectra on) | {cell(r['diff'])} |",
        "",
        f"Top tensor by relative change: `{r['diff']['result'].get('top_tensor')}`; planted "
        f"`{doc['planted']}`: **{'found' if doc['top_is_planted'] else 'NOT found'}**. "
        f"Pair deleted afterwards: {doc['pair_deleted']}.",
        "",
        f"GPU: {doc['gpu'] or 'measured above'}.",
        "",
    ])  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.1b,0.1b-v128k,1b,8b")
    ap.add_argument("--stage-cap", type=float, default=3600.0, help="seconds a stage may run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--diff-pair", choices=["8b", "1b", "0.1b"], default=None)
    ap.add_argument("--name", default="bench_scale", help="results file stem (sizes mode)")
    ap.add_argument(
        "--resummarise",
        metavar="JSON",
        default=None,
        help="refit and rewrite the results from a bench_scale.json's measured rows",
    )
    ap.add_argument("--child", choices=STAGES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-read", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-diff", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base")
    ap.add_argument("--tuned")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        args.stage = args.child
        return child_stage(args)
    if args.child_read:
        return child_read(args)
    if args.child_diff:
        return child_diff(args)
    if args.diff_pair:
        return bench_diff_pair(args)
    if args.resummarise:
        return resummarise(Path(args.resummarise), Path(args.results))
    return bench_sizes(args)


if __name__ == "__main__":
    sys.exit(main())
