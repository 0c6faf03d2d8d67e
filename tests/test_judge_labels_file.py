"""The hand-labelled judge development set (probes/judge_labels.csv): shape, values, coverage.

It checks the file itself, not a judge: the columns and label values, unique ids, that both
splits hold every label and every kind of response (>= 3 rows each), its size, and that no
prompt was copied from the public prompt sets in ../shared/datasets.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
from shared_data import shared_datasets

ROOT = Path(__file__).resolve().parent.parent
LABELS_CSV = ROOT / "probes" / "judge_labels.csv"
FREE_CSV = ROOT / "probes" / "judge_labels_free.csv"  # the second author's free-form set
SETS = [(LABELS_CSV, {"dev", "test"}, 450), (FREE_CSV, {"free_dev", "free_test"}, 220)]
COLUMNS = ["id", "split", "prompt_type", "category", "kind", "label", "prompt", "response"]
LABELS = {"complied", "partial", "refused"}
SPLITS = {"dev", "test"}
PROMPT_TYPES = {"safe", "unsafe"}
# the column that holds the prompt text in each public set (see ../shared/datasets/README.md)
PROMPT_COLUMNS = ("prompt", "Behavior", "prompts_final")


def _rows(path: Path = LABELS_CSV) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS, f"{path}: columns {reader.fieldnames}"
        return list(reader)


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@pytest.mark.parametrize(("path", "splits", "least"), SETS)
def test_columns_and_values(path: Path, splits: set[str], least: int) -> None:
    rows = _rows(path)
    assert len(rows) >= least
    assert {row["label"] for row in rows} == LABELS and {row["split"] for row in rows} == splits
    for row in rows:
        assert row["label"] in LABELS, row["id"]
        assert row["split"] in splits, row["id"]
        assert row["prompt_type"] in PROMPT_TYPES, row["id"]
        assert row["category"].strip() and row["kind"].strip(), row["id"]
        assert row["prompt"].strip() and row["response"].strip(), row["id"]
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]


def test_each_kind_has_one_label() -> None:
    """A kind names a way of answering, so it must not mix labels (complied, refused, partial)."""
    labels_of: dict[str, set[str]] = {}
    for row in _rows():
        labels_of.setdefault(row["kind"], set()).add(row["label"])
    mixed = {kind: labels for kind, labels in labels_of.items() if len(labels) > 1}
    assert not mixed


def test_both_splits_cover_every_label_and_kind() -> None:
    rows = _rows()
    for field in ("label", "kind"):
        values = {row[field] for row in rows}
        for split in SPLITS:
            counts = Counter(row[field] for row in rows if row["split"] == split)
            thin = {v: counts[v] for v in values if counts[v] < 3}
            assert not thin, f"{split} split has < 3 rows of {field} {thin}"
    assert {row["label"] for row in rows} == LABELS


@pytest.mark.parametrize("path", [LABELS_CSV, FREE_CSV])
def test_split_is_by_prompt(path: Path) -> None:
    """All responses to one prompt sit in one split, so the test split holds unseen prompts."""
    split_of: dict[str, set[str]] = {}
    for row in _rows(path):
        split_of.setdefault(row["prompt"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())


@pytest.mark.parametrize("path", [LABELS_CSV, FREE_CSV])
def test_no_prompt_copied_from_public_sets(path: Path) -> None:
    public: set[str] = set()
    files = sorted(shared_datasets().glob("*.csv"))
    assert files
    for public_file in files:
        with public_file.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            columns = [c for c in PROMPT_COLUMNS if c in (reader.fieldnames or [])]
            assert columns, f"{public_file}: no prompt column among {PROMPT_COLUMNS}"
            for row in reader:
                public.update(_normalise(row[c]) for c in columns if row[c])
    assert len(public) > 1000
    copied = sorted({row["prompt"] for row in _rows(path) if _normalise(row["prompt"]) in public})
    assert not copied
