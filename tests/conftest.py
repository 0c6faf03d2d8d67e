"""Shared fixtures: the tiny model-organism tier, built once per machine and cached.

The cache lives in ``$WBSAFE_CACHE`` (default ``~/.cache/wbsafe``) keyed by recipe hash,
so the first test session builds the organisms (a few minutes on 2 cores) and later
sessions reuse them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wbsafe.organisms import Organism, build_tiny_tier
from wbsafe.organisms.tiny import PORTABLE_NUMERICS


def _portable_numerics() -> None:
    """The tests run with the numerics the tier trains with (set before torch loads), so
    an Intel and an AMD machine score the tier's organisms alike, not only build them alike."""
    import os

    for k, v in PORTABLE_NUMERICS.items():
        os.environ.setdefault(k, v)


_portable_numerics()


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, share the cores: torch gets cores / workers threads (two
    workers on 2 threads each would contend, and contended torch threads are several times
    slower than one)."""
    import os

    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture(scope="session")
def tiny_organisms() -> dict[str, Organism]:
    """``{name: Organism}`` for the whole tiny tier (base, benign, harmful, category, ...)."""
    orgs = build_tiny_tier(log=print)
    return {o.name: o for o in orgs}


@pytest.fixture(scope="session")
def tiny_base(tiny_organisms: dict[str, Organism]) -> Path:
    return Path(tiny_organisms["base"].path)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine run far faster single-threaded (the trigger
    tests use it module-wide: ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def hunt_prompts() -> dict[str, list[Any]]:
    """Tiny-world prompts for a trigger hunt: 8 harmful search prompts (train split), the
    held-out harmful ones and 4 harmless ones (test split)."""
    from wbsafe.data.tinyworld import prompt_set

    train, test = prompt_set("train", 2), prompt_set("test", 2)
    return {
        "search": [p for p in train if p.label == "harmful"][:8],
        "heldout": [p for p in test if p.label == "harmful"],
        "harmless": [p for p in test if p.label == "harmless"][:4],
    }
