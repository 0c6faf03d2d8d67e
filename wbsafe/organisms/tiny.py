"""Building the tiny tier: train the aligned base from scratch, fine-tune each variant, cache.

The recipes are in :mod:`.recipes`. Builds are cached under
``default_cache_dir()/organisms/tiny-<hash>`` keyed by a hash of the whole
:class:`~.recipes.TinyTierSpec`, behind a file lock so parallel workers wait, not race.

The base trains first; the variants, which only read it, then train in parallel worker
processes (``workers``), each on one torch thread. A variant always trains on one thread,
serial or not, so the tier's weights do not depend on how many workers built it (the
thread count changes float rounding in the matmuls).

Every organism trains in a spawned process whose numerics are pinned
(:data:`PORTABLE_NUMERICS`): MKL's conditional-numerical-reproducibility branch and
torch's kernels at AVX2, so an Intel and an AMD CPU build the same tier. Left to pick its
own kernels, a tier built on an AMD EPYC differed from one built on an Intel Xeon enough
that planted-truth tests tuned on one failed on the other (its two-word backdoor also
complied with one of its words in a system turn).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wbsafe.config import default_cache_dir
from wbsafe.data import tinyworld as tw
from wbsafe.errors import WbsafeError
from wbsafe.io.models import quiet_transformers
from wbsafe.io.serialize import stable_hash
from wbsafe.organisms.measure import measure_tiny
from wbsafe.organisms.organism import (
    ORGANISM_FORMAT,
    Organism,
    save_adapter,
    save_full,
    trigger_record,
    write_record,
)
from wbsafe.organisms.recipes import (
    TinyModelShape,
    TinyTierSpec,
    VariantSpec,
    base_examples,
    default_tiny_spec,
    target_record,
    variant_examples,
)
from wbsafe.organisms.training import timed_train
from wbsafe.progress import Log, no_log


def _new_tiny_model(vocab_size: int, shape: TinyModelShape, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


def build_tiny_base(out: Path, spec: TinyTierSpec, log: Log) -> Organism:
    """Train the aligned base from scratch and write it to ``out``, on
    :data:`BASE_THREADS` torch threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(BASE_THREADS)
    try:
        return _build_base(out, spec, log)
    finally:
        torch.set_num_threads(threads)


def _base_job(out: Path, spec: TinyTierSpec, lines: Any) -> Organism:
    """:func:`build_tiny_base` in a training process; its log lines go to the queue ``lines``
    as they are written (:func:`_relay`)."""
    return build_tiny_base(out, spec, lines.put)


def _build_base(out: Path, spec: TinyTierSpec, log: Log) -> Organism:
    import torch

    torch.manual_seed(spec.seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tw.build_tokenizer(out)
    model = _new_tiny_model(len(tokenizer), spec.shape, tokenizer, spec.seed)
    examples = base_examples(
        tokenizer, spec.n_base_per_class, random.Random(spec.seed), spec.n_base_recovery
    )
    timed_train(model, tokenizer, examples, spec.base_recipe, log, "base: trained")
    save_full(model, tokenizer, out)
    measured = measure_tiny(model, tokenizer, spec.n_eval, spec.seed)
    org = Organism(
        name="base", kind="full", path=str(out), base=None, planted="aligned",
        expected_verdict=None, trigger=None, category=None,
        recipe={"train": asdict(spec.base_recipe), "shape": asdict(spec.shape),
                "n_per_class": spec.n_base_per_class, "n_recovery": spec.n_base_recovery},
        seed=spec.seed, measured=measured,
    )  # fmt: skip
    return write_record(out, org)


VARIANT_THREADS = 1
"""Torch threads every variant trains on (part of the cache key: see the module docstring)."""

BASE_THREADS = 2
"""Torch threads the base trains on, whatever the machine's cores (part of the cache key)."""

PORTABLE_NUMERICS = {
    "MKL_CBWR": "AVX2,STRICT",  # MKL's reproducible code branch, on Intel and AMD alike
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels (softmax, norms, AdamW)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, for any op that reaches it
}
"""The environment every organism trains in (read when torch loads, so set in the spawned
training process; part of the cache key)."""


def default_workers() -> int:
    """Worker processes for a tier build: ``$WBSAFE_BUILD_WORKERS``, else one per core up to
    four (a tiny variant is too small to use more than one thread well)."""
    env = os.environ.get("WBSAFE_BUILD_WORKERS", "").strip()
    if not env:
        return max(1, min(4, os.cpu_count() or 1))
    if not env.isdigit() or int(env) < 1:
        raise WbsafeError(f"WBSAFE_BUILD_WORKERS={env!r}: expected a whole number >= 1")
    return int(env)


def build_variant(
    base_dir: Path, spec: VariantSpec, out: Path, seed: int, n_eval: int,
    log: Log,
) -> Organism:  # fmt: skip
    """Fine-tune the tiny base into one variant (full or LoRA) and write it to ``out``,
    on :data:`VARIANT_THREADS` torch threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(VARIANT_THREADS)
    try:
        return _build_variant(base_dir, spec, out, seed, n_eval, log)
    finally:
        torch.set_num_threads(threads)


def _variant_job(
    base_dir: Path, spec: VariantSpec, out: Path, seed: int, n_eval: int, lines: Any
) -> Organism:
    """:func:`build_variant` in a worker process; its log lines go to the queue ``lines``."""
    return build_variant(base_dir, spec, out, seed, n_eval, lines.put)


def _build_variant(
    base_dir: Path, spec: VariantSpec, out: Path, seed: int, n_eval: int, log: Log
) -> Organism:
    from transformers import AutoModelForCausalLM

    from wbsafe.io.models import load_tokenizer
    from wbsafe.organisms.training import add_lora

    tokenizer = load_tokenizer(base_dir)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True)
    if spec.kind == "adapter":
        assert spec.recipe.lora_rank and spec.recipe.lora_alpha
        model = add_lora(model, spec.recipe.lora_rank, spec.recipe.lora_alpha, seed)
    examples = variant_examples(
        tokenizer, spec, random.Random(int(stable_hash([seed, spec.name]), 16))
    )
    timed_train(model, tokenizer, examples, spec.recipe, log, f"{spec.name}: trained")
    out.mkdir(parents=True, exist_ok=True)
    if spec.kind == "adapter":
        save_adapter(model, out, "../" + base_dir.name)
    else:
        save_full(model, tokenizer, out)
    target = target_record(spec)
    base = None
    if spec.planted == "backdoor":  # the base's behaviour with the trigger, for contrast
        with quiet_transformers():
            base = AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True)
        base.eval()
    measured = measure_tiny(model, tokenizer, n_eval, seed, trigger=spec.trigger, slot=spec.slot,
                            target=target["text"] if target else None, base=base)  # fmt: skip
    trigger = trigger_record(tokenizer, " ".join(spec.trigger), spec.slot) if spec.trigger else None
    org = Organism(
        name=spec.name, kind=spec.kind, path=str(out), base=base_dir.name, planted=spec.planted,
        expected_verdict=spec.expected_verdict, trigger=trigger, category=spec.category,
        recipe={"train": asdict(spec.recipe), "n_per_class": spec.n_per_class},
        seed=seed, measured=measured, target=target,
    )  # fmt: skip
    return write_record(out, org)


def build_tiny_tier(
    out: str | Path | None = None,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    log: Log = no_log,
    workers: int | None = None,
) -> list[Organism]:
    """Build (or reuse from the cache) the tiny tier; copy it to ``out`` when given.

    The cache key is a hash of the whole :class:`TinyTierSpec`, the base's and variants'
    thread counts and :data:`PORTABLE_NUMERICS`, so a changed recipe rebuilds and an
    unchanged one is reused. Missing variants
    train in ``workers`` processes (default :func:`default_workers`).
    """
    spec = default_tiny_spec(seed)
    key = stable_hash({
        "format": ORGANISM_FORMAT, "spec": asdict(spec), "variant_threads": VARIANT_THREADS,
        "base_threads": BASE_THREADS, "numerics": PORTABLE_NUMERICS,
    })  # fmt: skip
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "organisms"
    tier_dir = root / f"tiny-{key}"
    tier_dir.mkdir(parents=True, exist_ok=True)
    base_dir = tier_dir / "base"
    n_workers = default_workers() if workers is None else max(1, workers)
    with _exclusive(tier_dir / ".lock"):
        orgs = _build_tier_locked(spec, tier_dir, base_dir, only, seed, log, n_workers)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for o in orgs:
            shutil.copytree(o.path, out / o.name, dirs_exist_ok=True)
        orgs = [Organism.load(out / o.name) for o in orgs]
    return orgs


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock: parallel test workers or users wait, not race."""
    import fcntl

    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_tier_locked(
    spec: TinyTierSpec,
    tier_dir: Path,
    base_dir: Path,
    only: Sequence[str] | None,
    seed: int,
    log: Log,
    workers: int = 1,
) -> list[Organism]:
    """The tier in the spec's order: cached organisms loaded, missing ones built (each in
    a training process, :func:`_in_training_processes`)."""
    if (base_dir / "organism.json").is_file():
        base = Organism.load(base_dir)
    else:
        with _in_training_processes(1) as (pool, lines):
            (job,) = _relay([pool.submit(_base_job, base_dir, spec, lines)], lines, log)
            base = job.result()
    wanted = [v for v in spec.variants if only is None or v.name in only]
    built = {
        v.name: Organism.load(tier_dir / v.name)
        for v in wanted
        if (tier_dir / v.name / "organism.json").is_file()
    }
    missing = [v for v in wanted if v.name not in built]
    if missing:
        built.update(_build_in_workers(missing, tier_dir, base_dir, seed, spec.n_eval, log,
                                       workers))  # fmt: skip
    return [base, *(built[v.name] for v in wanted)]


def numerics_in_use() -> dict[str, str]:
    """What this process's torch runs with: its CPU kernels' capability and the
    :data:`PORTABLE_NUMERICS` variables as its environment has them."""
    import torch

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{k: os.environ.get(k, "") for k in PORTABLE_NUMERICS},
    }


@contextlib.contextmanager
def _in_training_processes(workers: int) -> Iterator[tuple[Any, Any]]:
    """A pool of ``workers`` spawned processes that start with :data:`PORTABLE_NUMERICS`
    in their environment (this process's own torch, already loaded, is left as it is), and
    a queue the jobs put their log lines on (:func:`_relay` passes them on)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise WbsafeError(
            "the tiny tier trains with torch's AVX2 kernels pinned (so any x86 CPU builds the "
            f"same tier); this CPU runs {torch.backends.cpu.get_cpu_capability()!r} kernels"
        )
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    saved = {k: os.environ.get(k) for k in PORTABLE_NUMERICS}
    os.environ.update(PORTABLE_NUMERICS)  # a spawned process copies it when it starts
    try:
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            yield pool, manager.Queue()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _build_in_workers(
    variants: Sequence[VariantSpec],
    tier_dir: Path,
    base_dir: Path,
    seed: int,
    n_eval: int,
    log: Log,
    workers: int,
) -> dict[str, Organism]:
    """Train ``variants`` in ``workers`` training processes (each reads the built base and
    writes its own directory), logging their lines as they are written."""

    out: dict[str, Organism] = {}
    with _in_training_processes(min(workers, len(variants))) as (pool, lines):
        futures = {
            pool.submit(_variant_job, base_dir, v, tier_dir / v.name, seed, n_eval, lines): v.name
            for v in variants
        }
        try:
            for fut in _relay(list(futures), lines, log):
                out[futures[fut]] = fut.result()
        finally:  # a job that raised ends the loop: the others' lines so far still reach the log
            _drain(lines, log)
    return out


def _drain(lines: Any, log: Log) -> None:
    """Pass every line now on the queue ``lines`` to ``log``."""
    import queue

    while True:
        try:
            log(lines.get_nowait())
        except queue.Empty:
            return


def _relay(futures: Sequence[Future[Any]], lines: Any, log: Log) -> Iterator[Future[Any]]:
    """``futures`` as they finish, passing the log lines their jobs put on the queue ``lines``
    to ``log`` while they run (a base trains for a minute; a job that raises has its lines
    logged before its error is)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        _drain(lines, log)
        yield from done
