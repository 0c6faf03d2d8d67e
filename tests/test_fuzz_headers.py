"""Fuzzing the safetensors header reader: every malformed header is a CheckpointFormatError.

Property-based (hypothesis): a real, small checkpoint's header is mutated (values replaced by
other JSON values, huge or non-finite numbers, deep nesting, negative or overlapping offsets,
dropped or renamed keys) and the file rewritten; ``read_header`` must either accept it (and
then every tensor's bytes lie inside the file) or raise CheckpointFormatError naming the
file, never another exception, in bounded time. The CI run tries a few hundred inputs; the
``-m fuzz`` run ten thousand (``WBSAFE_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbsafe.errors import CheckpointFormatError
from wbsafe.io.checkpoints import read_header

HEADER = {
    "__metadata__": {"format": "pt"},
    "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b.bias": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
}
DATA = bytes(32)

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)  # fmt: skip
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip


def _write(path: Path, header_bytes: bytes, data: bytes = DATA) -> Path:
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


def _check(path: Path) -> None:
    try:
        infos = read_header(path)
    except CheckpointFormatError as exc:
        assert str(path) in str(exc)
        return
    size = path.stat().st_size
    for info in infos.values():
        assert 0 <= info.offset <= size and all(type(s) is int and s >= 0 for s in info.shape)


@st.composite
def mutated_headers(draw: Any) -> bytes:
    header = json.loads(json.dumps(HEADER))
    name = draw(st.sampled_from(["a.weight", "b.bias"]))
    key = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    how = draw(st.sampled_from(["value", "drop", "rename", "whole", "raw"]))
    if how == "raw":  # text a JSON writer would never produce
        raw = draw(st.sampled_from([
            '{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}',
            '{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}',
            '{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
            "[" * 100_000 + "]" * 100_000,
            '{"a": ' * 5000 + "1" + "}" * 5000,
            '{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
            '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}',
            '{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
            ' "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}',
            "\xff\xfe not utf-8",
        ]))  # fmt: skip
        return raw.encode("utf-8", "surrogateescape")
    if how == "whole":
        header[name] = draw(json_value)
    elif how == "drop" and key:
        header[name].pop(key, None)
    elif how == "rename":
        header[draw(st.text(max_size=20))] = header.pop(name)
    elif key:
        header[name][key] = draw(json_value)
    return json.dumps(header, allow_nan=True).encode()


EXAMPLES = int(os.environ.get("WBSAFE_FUZZ_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(header=mutated_headers(), trailing=st.integers(min_value=-8, max_value=8))
def test_header_mutations_give_clear_errors(tmp_path_factory: Any, header: bytes, trailing: int):
    data = DATA[: max(0, len(DATA) + trailing)] if trailing < 0 else DATA + bytes(trailing)
    _check(_write(tmp_path_factory.mktemp("h") / "model.safetensors", header, data))


@pytest.mark.fuzz
@settings(max_examples=max(EXAMPLES, 10_000), deadline=2000,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(header=mutated_headers(), trailing=st.integers(min_value=-8, max_value=8))
def test_header_mutations_long_campaign(tmp_path_factory: Any, header: bytes, trailing: int):
    data = DATA[: max(0, len(DATA) + trailing)] if trailing < 0 else DATA + bytes(trailing)
    _check(_write(tmp_path_factory.mktemp("h") / "model.safetensors", header, data))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}',
         "digits"),
        ('{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', "Infinity"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
        ('{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "sizes >= 0"),
        ('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
         ' "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}', "share bytes"),
        ('{"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}', "not a safetensors"),
    ],
)  # fmt: skip
def test_the_first_findings_are_clear_errors(tmp_path: Path, header: str, message: str) -> None:
    """What a first fuzz run found: each came out as a traceback, or (a negative shape) was
    accepted and shown as "parameters -1"."""
    path = _write(tmp_path / "model.safetensors", header.encode(), bytes(32))
    with pytest.raises(CheckpointFormatError, match=message) as err:
        read_header(path)
    assert str(path) in str(err.value)
