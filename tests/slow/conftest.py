"""Fixtures for the slow real-tier tests (SmolLM2-135M organisms; see scripts/build_real_tier.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tier() -> Path:
    """The built real tier named by ``WBSAFE_REAL_TIER``; skip (saying how to build it) without one."""
    env = os.environ.get("WBSAFE_REAL_TIER")
    if not env:
        pytest.skip(
            "set WBSAFE_REAL_TIER to a built real tier (scripts/prepare_smollm2.py, then "
            "scripts/build_real_tier.py --out DIR)"
        )
    path = Path(env)
    for name in ("base", "backdoor"):
        if not (path / name / "organism.json").is_file():
            pytest.skip(f"{path / name} is not built (no organism.json)")
    return path
