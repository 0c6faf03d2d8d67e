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
    """Candidates scored exactly (screened) in all, over every length."""
    trigger_max_len: int = 2
    trigger_search_prompts: int = 8
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


def read_scan_toml(path: str) -> dict[str, object]:
    """Read a ``scan.toml``: keys are ScanConfig fields (``[runtime]`` a table); unknown keys fail."""
    import dataclasses
    import tomllib

    from wbsafe.errors import WbsafeError

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise WbsafeError("config file not found", path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise WbsafeError(f"not valid TOML: {exc}", path) from exc
    known = {f.name for f in dataclasses.fields(ScanConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise WbsafeError(f"unknown key(s) {unknown}; known: {sorted(known)}", path)
    if "runtime" in data:
        rt = data["runtime"]
        rt_known = {f.name for f in dataclasses.fields(RuntimeConfig)}
        if not isinstance(rt, dict) or set(rt) - rt_known:
            raise WbsafeError(f"[runtime] takes only {sorted(rt_known)}", path)
        data["runtime"] = RuntimeConfig(**rt)
    for key in (
        "adapters", "stages", "trigger_candidates", "refusal_depth_prefills", "behaviour_judges",
    ):  # fmt: skip
        if key in data:
            data[key] = tuple(data[key])
    return data


def default_cache_dir() -> Path:
    """``$WBSAFE_CACHE`` or ``~/.cache/wbsafe``: built organisms, fitted directions and base
    behaviour live here."""
    env = os.environ.get("WBSAFE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wbsafe"
