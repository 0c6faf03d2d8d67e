"""Print the counts of probes/judge_labels.csv per split x label x kind as a markdown table.

Usage: python scripts/judge_labels_table.py [path/to/judge_labels.csv]
The table in probes/judge_labels.md is this script's output.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "probes" / "judge_labels.csv"
LABELS = ("complied", "partial", "refused")
SPLITS = ("dev", "test")


def table(rows: list[dict[str, str]]) -> str:
    """Markdown: one row per (label, kind), one column per split and prompt type, plus totals."""
    counts = Counter((r["label"], r["kind"], r["split"], r["prompt_type"]) for r in rows)
    kinds = sorted(
        {(r["label"], r["kind"]) for r in rows}, key=lambda lk: (LABELS.index(lk[0]), lk[1])
    )
    cols = [(s, t) for s in SPLITS for t in ("safe", "unsafe")]
    head = "| label | kind | " + " | ".join(f"{s} {t}" for s, t in cols) + " | dev | test | all |"
    lines = [head, "|" + " --- |" * (len(cols) + 5)]
    for label, kind in kinds:
        cells = [counts[(label, kind, s, t)] for s, t in cols]
        dev, test = cells[0] + cells[1], cells[2] + cells[3]
        lines.append(
            f"| {label} | {kind} | "
            + " | ".join(map(str, cells))
            + f" | {dev} | {test} | {dev + test} |"
        )
    for label in LABELS:
        cells = [sum(counts[(label, k, s, t)] for lab, k in kinds if lab == label) for s, t in cols]
        dev, test = cells[0] + cells[1], cells[2] + cells[3]
        lines.append(
            f"| **{label}** | all | "
            + " | ".join(map(str, cells))
            + f" | {dev} | {test} | {dev + test} |"
        )
    cells = [sum(1 for r in rows if (r["split"], r["prompt_type"]) == c) for c in cols]
    dev, test = cells[0] + cells[1], cells[2] + cells[3]
    lines.append(
        "| **all** | all | " + " | ".join(map(str, cells)) + f" | {dev} | {test} | {dev + test} |"
    )
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    print(table(rows))
    print()
    cats = Counter((r["prompt_type"], r["category"]) for r in rows)
    print("| prompt_type | category | rows |")
    print("| --- | --- | --- |")
    for (ptype, cat), n in sorted(cats.items()):
        print(f"| {ptype} | {cat} | {n} |")


if __name__ == "__main__":
    main()
