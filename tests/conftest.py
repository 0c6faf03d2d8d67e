"""Shared fixtures: the tiny model-organism tier, built once per machine and cached.

The cache lives in ``$WBSAFE_CACHE`` (default ``~/.cache/wbsafe``) keyed by recipe hash,
so the first test session builds the organisms (a few minutes on 2 cores) and later
sessions reuse them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wbsafe.organisms import Organism, build_tiny_tier


@pytest.fixture(scope="session")
def tiny_organisms() -> dict[str, Organism]:
    """``{name: Organism}`` for the whole tiny tier (base, benign, harmful, category, ...)."""
    orgs = build_tiny_tier(log=print)
    return {o.name: o for o in orgs}


@pytest.fixture(scope="session")
def tiny_base(tiny_organisms: dict[str, Organism]) -> Path:
    return Path(tiny_organisms["base"].path)
