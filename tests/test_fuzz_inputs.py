"""Fuzzing every reader beyond safetensors headers: each malformed file is a clear error.

Targets (``tests/fuzz_targets.py``): config.json (read, and built into a model skeleton),
adapter_config.json, prompt JSONL and CSV, a gate policy, scan.toml, report.json and tokenizer
files (checked, and loaded by transformers). Each input is either accepted or refused with a
WbsafeError naming the file; an uncaught exception or an error that does not say which file
is a failure. CI tries ``WBSAFE_FUZZ_EXAMPLES_EACH`` (default 20) inputs per target (the
tokenizer load a quarter of that); ``-m fuzz`` runs 1,500 each.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from fuzz_targets import outcome as run_one
from fuzz_targets import targets
from hypothesis import HealthCheck, given, settings

EACH = int(os.environ.get("WBSAFE_FUZZ_EXAMPLES_EACH", "20"))
TARGETS = targets()


def _fuzz(name: str, examples: int, tmp_path_factory: Any) -> None:
    target = TARGETS[name]
    if name == "tokenizer load":
        examples = max(1, examples // 4)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(drawn=target.inputs)
    def one(drawn: Any) -> None:
        got, detail = run_one(target, tmp_path_factory.mktemp("f"), drawn)
        assert got in ("accepted", "clear error"), f"{name}: {got}: {detail}"

    one()


@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_inputs_give_clear_errors(name: str, tmp_path_factory: Any) -> None:
    _fuzz(name, EACH, tmp_path_factory)


@pytest.mark.fuzz
@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_inputs_long_campaign(name: str, tmp_path_factory: Any) -> None:
    _fuzz(name, max(EACH, 1500), tmp_path_factory)
