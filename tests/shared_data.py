"""Where the public datasets live for the tests that read them (``../shared/datasets``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_datasets() -> Path:
    """The public datasets folder beside the checkout. Absent: a failure when CI requires it
    (``WBSAFE_REQUIRE_DATASETS``), else a skip that says why."""
    for cand in (ROOT / "shared" / "datasets", ROOT.parent / "shared" / "datasets"):
        if (cand / "README.md").is_file():
            return cand
    if os.environ.get("WBSAFE_REQUIRE_DATASETS"):
        pytest.fail("../shared/datasets is absent and WBSAFE_REQUIRE_DATASETS is set")
    pytest.skip(
        "public datasets folder (../shared/datasets) is absent; CI has it beside the checkout "
        "and sets WBSAFE_REQUIRE_DATASETS=1, so these tests cannot skip there"
    )
