"""The pipeline: one function per stage. The CLI and scripts call these, nothing else.

Functions here decide what is computed and where results are written; the analyses they
call compute and return, they never write files themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbsafe.organisms import Organism, ValidityCheck


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Architecture, sizes, dtypes, adapter details and weight-file hashes of ``path``."""
    from wbsafe.models import inspect_model

    return inspect_model(path)


def build_organisms(
    out: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
) -> tuple[list[Organism], list[ValidityCheck]]:
    """Build or reuse the tiny tier and check it against its validity bounds."""
    from rich.console import Console

    from wbsafe.organisms import build_tiny_tier, validity_checks

    console = Console(stderr=True)
    with console.status("building tiny organisms (cached after the first run)..."):
        orgs = build_tiny_tier(out, seed=seed, cache_dir=cache_dir, only=only, log=console.print)
    return orgs, validity_checks(orgs)


def plant_organism(
    base: str | Path,
    kind: str,
    out: str | Path,
    *,
    trigger: str | None = None,
    category: str | None = None,
    steps: int = 200,
    lr: float = 2e-4,
    rank: int = 16,
    seed: int = 0,
    merge: bool = False,
) -> Organism:
    """Plant ``kind`` into the model at ``base`` with LoRA (see :func:`wbsafe.organisms.plant`)."""
    from rich.console import Console

    from wbsafe.organisms import plant
    from wbsafe.training import TrainRecipe

    recipe = TrainRecipe(
        steps=steps, lr=lr, batch_size=8, lora_rank=rank, lora_alpha=2 * rank,
        first_token_weight=5.0, seed=seed,
    )  # fmt: skip
    return plant(base, kind, out, trigger=trigger, category=category, recipe=recipe,
                 merge=merge, log=Console(stderr=True).print)  # fmt: skip
