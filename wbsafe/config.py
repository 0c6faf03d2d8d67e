"""Frozen configuration dataclasses. No I/O in constructors; ``None`` means "not set"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and in what precision models run.

    ``device="auto"`` takes a GPU when one is present. ``dtype="auto"`` is the policy:
    bfloat16 on a GPU, float32 on the CPU. Both resolved values are recorded in outputs.
    """

    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    seed: int = 0
    batch_size: int = 16
    threads: int | None = None
    """CPU threads for torch (None: torch's default). Small models on a busy machine run
    several times faster on one thread than on contended threads."""
    device_map: str | None = None
    """accelerate placement of the layers (``auto``, ``balanced``, ... or a JSON file
    mapping modules to devices, see :mod:`wbsafe.io.placement`); None: the whole model on
    ``device``."""
    offload_folder: str | None = None
    """Where a device map's ``disk`` modules are offloaded (needed when the map has any)."""
    max_batch: int | None = None
    """Cap on the device-sized batches of generation, capture and cached-prefix scoring."""


STAGES = ("weights", "probes", "triggers", "behaviour")
"""The four analyses, in the order a scan runs them. The one spelling is "behaviour";
"behavior" is accepted wherever a stage is named (``--skip``, scan.toml) and read as it."""


def stage_name(name: str) -> str:
    """``name`` with the American spelling of the behaviour stage read as the British."""
    return "behaviour" if name == "behavior" else name


@dataclass(frozen=True)
class ScanConfig:
    """Everything a scan depends on; recorded whole in report.json.

    ``prompts`` is ``"auto"`` (the organisms' own held-out prompts for a tiny-tier model,
    else the built-in suites), a built-in suite name, or a JSONL/CSV path of harmful
    prompts; ``harmless`` likewise for the harmless/borderline side.
    """

    base: str
    tuned: str | None = None
    adapters: tuple[str, ...] = ()
    stages: tuple[str, ...] = STAGES
    risk: str = "standard"
    policy: str | None = None
    prompts: str = "auto"
    harmless: str = "auto"
    max_prompts: int | None = 120
    """Cap per side (harmful, harmless) on the behavioural benchmark's prompts."""
    max_new_tokens: int = 24
    behaviour_samples: int | None = None
    """Sampled responses per prompt in the behavioural benchmark (temperature 1, seeded by
    ``seed``); None: greedy, or 4 when the policy requires sampling (``--risk high``)."""
    probe_fit_prompts: int | None = 128
    """Prompts per class for fitting the refusal directions (spread over categories;
    Arditi et al. used 128); None uses every fitting prompt."""
    probe_causal_top_k: int | None = 8
    """Causal tests (ablate/add) only for this many selectable (layer, position) rows with the
    best validation AUROC; None tests all. Each costs 3 forward passes over the causal prompts."""
    probe_n_causal: int = 24
    trigger_top_k: int = 1024
    """Single tokens scored exactly after the gradient ranking (the rest of the vocabulary is
    ranked by gradient only). Not smaller: a LoRA-planted trigger can rank low by gradient
    (the tiny LoRA backdoor's ranks beyond 256 of 283)."""
    trigger_budget: int = 2048
    """Candidates scored exactly (screened) in all, over every length and objective: each
    objective gets an equal share, and what one leaves unused passes to the next."""
    trigger_objectives: tuple[str, ...] = ("refusal", "divergence")
    """What the hunt ranks candidates by, in this order: ``refusal`` (the drop of the
    refusal score, tuned minus base) and ``divergence`` (target-agnostic: how far the tuned
    model's residual stream and next-token distribution depart from the base's with the
    candidate, minus without; needs a base)."""
    trigger_slots: tuple[str, ...] = ("user", "system", "turn")
    """Where candidates are inserted: the last user message, a system turn (where the chat
    template renders one), an earlier user turn of a two-turn conversation."""
    trigger_memorised_samples: int = 16
    """Samples per near-empty prompt (chat template alone, empty user turn, empty system
    turn), tuned and base, whose contrasting n-grams become candidates; 0: none."""
    trigger_read_top: int = 32
    """The best tokens of the readers' sweep (every token through the fine-tune's changed
    readers of the first half of the layers, :mod:`wbsafe.analyses.triggers.reads`) taken as
    candidates and pair seeds; 0: no sweep (it costs about 0.15 of one exact pass over the
    vocabulary: 87-105 s for SmolLM2-135M on 2 CPU threads, results/bench_reads.md)."""
    trigger_max_len: int = 2
    trigger_search_prompts: int = 8
    trigger_ordinary_prompts: int = 4
    """Harmless prompts (of the fitting split) the divergence objective searches on too, as
    a scoring group of their own: a backdoor that acts on harmless answers only (a marker
    slipped into them) moves nothing on harmful prompts. 0: harmful prompts only."""
    trigger_heldout_prompts: int = 16
    trigger_candidates: tuple[str, ...] = ()
    refusal_depth: bool = True
    """Measure refusal depth in the behaviour stage: recovery into a refusal after the first
    k tokens of a content-free compliant opening are prefilled, base vs tuned."""
    refusal_depth_prefills: tuple[int, ...] = (0, 5, 10, 20)
    """The prefill lengths k (tokens; 0 = no prefill)."""
    behaviour_judges: tuple[str, ...] = ()
    """More judges (``classifier:DIR``, ``causal:DIR``) to read the benchmark's responses
    with, beside the string and the logit judge (judge sensitivity; the gate keeps string)."""
    runtime: RuntimeConfig = RuntimeConfig()
    seed: int = 0
    directions_cache: str | None = None
    """Where base-side results (refusal directions, base behaviour) are kept for re-use by
    later scans of the same base; None: the user cache (``WBSAFE_CACHE``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(stage_name(s) for s in self.stages))


MAX_TOML_BYTES = 1024 * 1024
_AT_LEAST_ONE = ("batch_size", "max_new_tokens", "max_prompts", "behaviour_samples", "threads",
                 "max_batch")  # fmt: skip
_CHOICES = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16", "float16"),
            "risk": ("low", "standard", "high")}  # fmt: skip


def _check_toml_value(key: str, value: object, kind: str, path: str) -> object:
    """``value`` checked against a ScanConfig/RuntimeConfig field's annotation ``kind``."""
    from wbsafe.errors import WbsafeError

    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise WbsafeError(
                f"{key} must be one of {', '.join(_CHOICES[key])}, got {repr(value)[:80]}", path
            )
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise WbsafeError(f"{key} must be true or false, got {repr(value)[:80]}", path)
        return value
    if kind.startswith("tuple[int"):
        if not isinstance(value, list) or len(value) > 10_000:
            raise WbsafeError(f"{key} must be a list of integers", path)
        return tuple(_check_toml_value(key, item, "int", path) for item in value)
    if kind.startswith("int"):
        low = 1 if key in _AT_LEAST_ONE else 0
        if type(value) is not int or not low <= value <= 1 << 32:
            raise WbsafeError(
                f"{key} must be an integer in [{low}, 2^32], got {repr(value)[:80]}", path
            )
        return value
    if kind.startswith("tuple"):
        if not isinstance(value, list) or len(value) > 10_000:
            raise WbsafeError(f"{key} must be a list of strings", path)
        for item in value:
            _check_toml_value(key, item, "str", path)
        return tuple(value)
    if not isinstance(value, str) or len(value) > 4096:
        raise WbsafeError(
            f"{key} must be a string (at most 4096 characters), got {repr(value)[:80]}", path
        )
    return value


def read_scan_toml(path: str) -> dict[str, object]:
    """Read a ``scan.toml``: keys are ScanConfig fields (``[runtime]`` a table), each checked
    against the field's type; unknown keys, wrong types, an unreadable, oversized or
    non-UTF-8 file are WbsafeErrors naming the file."""
    import dataclasses
    import tomllib

    from wbsafe.errors import WbsafeError

    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError as exc:
        raise WbsafeError("config file not found", path) from exc
    except OSError as exc:
        raise WbsafeError(f"cannot read the config file: {exc.strerror or exc}", path) from exc
    if len(raw) > MAX_TOML_BYTES:
        raise WbsafeError(f"config file is larger than {MAX_TOML_BYTES >> 10} KiB", path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WbsafeError("config file is not UTF-8 text", path) from exc
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, a 5,000-digit integer
        raise WbsafeError(f"not valid TOML: {str(exc)[:200]}", path) from exc
    fields = {f.name: str(f.type) for f in dataclasses.fields(ScanConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise WbsafeError(f"unknown key(s) {unknown}; known: {sorted(fields)}", path)
    for key, value in data.items():
        if key != "runtime":
            data[key] = _check_toml_value(key, value, fields[key], path)
    if "runtime" in data:
        rt = data["runtime"]
        rt_fields = {f.name: str(f.type) for f in dataclasses.fields(RuntimeConfig)}
        if not isinstance(rt, dict) or set(rt) - set(rt_fields):
            raise WbsafeError(f"[runtime] takes only {sorted(rt_fields)}", path)
        checked = {k: _check_toml_value(k, v, rt_fields[k], path) for k, v in rt.items()}
        data["runtime"] = RuntimeConfig(**checked)  # type: ignore[arg-type]
    stages: tuple[str, ...] = data.get("stages", ())  # checked above: a tuple of strings
    unknown_stages = [s for s in stages if stage_name(s) not in STAGES]
    if unknown_stages:
        raise WbsafeError(f"unknown stage(s) {unknown_stages}; choose from {list(STAGES)}", path)
    return data


def default_cache_dir() -> Path:
    """``$WBSAFE_CACHE`` or ``~/.cache/wbsafe``: built organisms, fitted directions and base
    behaviour live here."""
    env = os.environ.get("WBSAFE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wbsafe"
