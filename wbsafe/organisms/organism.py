"""An organism's record (``organism.json``) and its files on disk, and where builds are cached.

Every organism directory holds a normal HF model (or a PEFT adapter) plus ``organism.json``:
its recipe, seed, ground truth (trigger, target) and the rates measured after training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from wbsafe.io.models import quiet_transformers
from wbsafe.io.serialize import read_json, write_json_atomic

ORGANISM_FORMAT = 1


@dataclass(frozen=True)
class Organism:
    """One built organism: where it is and what it is (the contents of ``organism.json``)."""

    name: str
    kind: str
    path: str
    base: str | None
    planted: str
    expected_verdict: str | None
    trigger: dict[str, Any] | None
    category: str | None
    recipe: dict[str, Any]
    seed: int
    measured: dict[str, float]
    tier: str = "tiny"
    target: dict[str, Any] | None = None
    """A backdoor's target: ``kind`` ("compliance", "fixed_string": a fixed reply in place
    of the answer, "insertion": a fixed string inserted into ordinary answers) and the
    planted ``text`` (None for compliance)."""

    @classmethod
    def load(cls, directory: str | Path) -> Organism:
        data = read_json(Path(directory) / "organism.json")
        data.pop("format", None)
        data["path"] = str(Path(directory).resolve())
        return cls(**data)


def write_record(directory: Path, org: Organism) -> Organism:
    """Write ``org`` as ``directory/organism.json``; returns it with the resolved path."""
    rec = asdict(org)
    rec["path"] = directory.name
    write_json_atomic(directory / "organism.json", {"format": ORGANISM_FORMAT, **rec})
    return replace(org, path=str(directory.resolve()))


def save_full(model: Any, tokenizer: Any, out: Path) -> None:
    """Save a full model and its tokenizer to ``out`` (safetensors)."""
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def save_adapter(model: Any, out: Path, base_path: str) -> None:
    """Save a PEFT model's adapter to ``out``, pointing at its base by ``base_path``."""
    model.peft_config["default"].base_model_name_or_path = base_path
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)


def trigger_record(tokenizer: Any, text: str, slot: str = "user") -> dict[str, Any]:
    """The ``trigger`` entry of a record: its text, token ids and ``slot`` (the turn it sits
    in: "user" or "system")."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return {"text": text, "token_ids": ids, "slot": slot}
