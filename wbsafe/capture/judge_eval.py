"""A refusal judge measured against human labels: agreement, confusion matrices, intervals.

The labels file is a CSV with columns ``prompt``, ``response`` and ``label``, and optionally
``kind`` (what kind of response it is: a moralising refusal, a preamble then an answer...),
``category`` (the prompt's topic), ``prompt_type`` (safe/unsafe) and ``split`` (dev/test).
A label is three-way (``complied``, ``partial``, ``refused``; the spellings
``full_compliance``, ``partial_refusal``, ``full_refusal`` are read too) or binary
(``refusal``/``compliance``, 1/0). The binary view counts partial as refused
(:data:`wbsafe.capture.refusal_text.REFUSED_LABELS`), and agreement is measured on it; a judge
that gives three-way labels also gets its three-way confusion matrix.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wbsafe.capture.judges import Judge, Proportion
from wbsafe.capture.refusal_text import REFUSED_LABELS
from wbsafe.errors import DatasetError

TRUTHS = ("complied", "partial", "refused")
"""The human labels, in the order confusion matrices list them."""
CALLS = ("complied", "partial", "refused", "unjudged")
"""A judge's calls: a three-way label, or unjudged (a parse error)."""

_SPELLINGS = {
    "complied": "complied", "compliance": "complied", "comply": "complied",
    "answered": "complied", "full_compliance": "complied", "1_full_compliance": "complied",
    "0": "complied", "false": "complied", "no": "complied",
    "refused": "refused", "refusal": "refused", "refuse": "refused",
    "full_refusal": "refused", "2_full_refusal": "refused",
    "1": "refused", "true": "refused", "yes": "refused",
    "partial": "partial", "partial_refusal": "partial", "3_partial_refusal": "partial",
}  # fmt: skip


@dataclass(frozen=True)
class LabelledResponse:
    """One row of a labels file."""

    prompt: str
    response: str
    truth: str  # one of TRUTHS
    kind: str = ""
    category: str = ""
    prompt_type: str = ""
    split: str = ""

    @property
    def refused(self) -> bool:
        return self.truth in REFUSED_LABELS


def read_labels(path: str | Path, split: str | None = None) -> list[LabelledResponse]:
    """The rows of a labels CSV (only those of ``split`` when given); bad files raise a
    DatasetError naming the file, the line and the problem."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError("no such labels file", p)
    rows: list[LabelledResponse] = []
    try:
        with p.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            present = [f.strip() for f in reader.fieldnames or []]
            missing = [c for c in ("prompt", "response", "label") if c not in present]
            if missing:
                raise DatasetError(f"missing column(s) {missing}; columns present: {present}", p)
            reader.fieldnames = present
            for row in reader:
                raw = (row.get("label") or "").strip().lower()
                if raw not in _SPELLINGS:
                    raise DatasetError(
                        f"line {reader.line_num}: label {raw!r} is not one of "
                        f"complied/partial/refused (or refusal/compliance, 1/0)",
                        p,
                    )
                item = LabelledResponse(
                    prompt=row.get("prompt") or "",
                    response=row.get("response") or "",
                    truth=_SPELLINGS[raw],
                    kind=(row.get("kind") or "").strip(),
                    category=(row.get("category") or "").strip(),
                    prompt_type=(row.get("prompt_type") or "").strip(),
                    split=(row.get("split") or "").strip(),
                )
                if split is None or item.split == split:
                    rows.append(item)
    except UnicodeDecodeError as exc:
        raise DatasetError("the labels file is not UTF-8 text", p) from exc
    except csv.Error as exc:
        raise DatasetError(f"not a readable CSV ({exc})", p) from exc
    if not rows:
        what = "no rows" if split is None else f"no rows of split {split!r}"
        raise DatasetError(f"empty labels file ({what})", p)
    return rows


@dataclass(frozen=True)
class Agreement:
    """Binary agreement (partial counts as refused) on one group of rows, with its Wilson
    interval, and the three-way confusion ``matrix[truth][call]`` (calls: :data:`CALLS`)."""

    n: int
    agree: Proportion
    matrix: dict[str, dict[str, int]]


@dataclass(frozen=True)
class JudgeEval:
    """A judge against human labels (positive = refusal, partial included). Parse failures
    are excluded from the binary counts, reported apart, and counted as ``unjudged`` in the
    matrices; ``by_truth``/``by_kind``/``by_category``/``by_prompt_type`` break agreement down."""

    judge: str
    labels_file: str
    split: str | None
    n: int
    parse_failures: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: Proportion
    sensitivity: Proportion
    specificity: Proportion
    matrix: dict[str, dict[str, int]] = field(default_factory=dict)
    by_truth: dict[str, Agreement] = field(default_factory=dict)
    by_kind: dict[str, Agreement] = field(default_factory=dict)
    by_category: dict[str, Agreement] = field(default_factory=dict)
    by_prompt_type: dict[str, Agreement] = field(default_factory=dict)
    parse_errors: tuple[str, ...] = ()
    disagreements: tuple[dict[str, str], ...] = ()


def _call(label: str | None, refused: bool | None) -> str:
    if refused is None:
        return "unjudged"
    if label in TRUTHS:
        return label
    return "refused" if refused else "complied"


def _agreement(pairs: Sequence[tuple[LabelledResponse, str]], confidence: float) -> Agreement:
    matrix = {t: dict.fromkeys(CALLS, 0) for t in TRUTHS}
    agree = judged = 0
    for row, call in pairs:
        matrix[row.truth][call] += 1
        if call != "unjudged":
            judged += 1
            agree += row.refused == (call in REFUSED_LABELS)
    return Agreement(len(pairs), Proportion.of(agree, judged, confidence), matrix)


def _grouped(
    pairs: Sequence[tuple[LabelledResponse, str]], key: str, confidence: float
) -> dict[str, Agreement]:
    groups: dict[str, list[tuple[LabelledResponse, str]]] = {}
    for row, call in pairs:
        value = getattr(row, key)
        if value:
            groups.setdefault(value, []).append((row, call))
    return {k: _agreement(v, confidence) for k, v in sorted(groups.items())}


def judge_eval(
    judge: Judge,
    labels_csv: str | Path,
    confidence: float = 0.95,
    split: str | None = None,
    keep_disagreements: int = 50,
) -> JudgeEval:
    """Accuracy, sensitivity (refusals caught, partial included) and specificity (compliances
    passed) with Wilson intervals, the confusion matrices, and the first
    ``keep_disagreements`` rows the judge got wrong, of ``judge`` on a labelled CSV."""
    rows = read_labels(labels_csv, split)
    judgements = judge.judge([r.prompt for r in rows], [r.response for r in rows])
    pairs = [(r, _call(j.label, j.refused)) for r, j in zip(rows, judgements, strict=True)]
    tp = fp = tn = fn = 0
    errors: list[str] = []
    wrong: list[dict[str, str]] = []
    for (row, call), j in zip(pairs, judgements, strict=True):
        if call == "unjudged":
            errors.append(j.parse_error or "no decision")
            continue
        said = call in REFUSED_LABELS
        tp += row.refused and said
        fn += row.refused and not said
        fp += said and not row.refused
        tn += not said and not row.refused
        if said != row.refused and len(wrong) < keep_disagreements:
            wrong.append({"kind": row.kind, "truth": row.truth, "call": call,
                          "prompt": row.prompt[:200], "response": row.response[:400]})  # fmt: skip
    return JudgeEval(
        judge=judge.name,
        labels_file=str(labels_csv),
        split=split,
        n=len(rows),
        parse_failures=len(errors),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=Proportion.of(tp + tn, tp + tn + fp + fn, confidence),
        sensitivity=Proportion.of(tp, tp + fn, confidence),
        specificity=Proportion.of(tn, tn + fp, confidence),
        matrix=_agreement(pairs, confidence).matrix,
        by_truth=_grouped(pairs, "truth", confidence),
        by_kind=_grouped(pairs, "kind", confidence),
        by_category=_grouped(pairs, "category", confidence),
        by_prompt_type=_grouped(pairs, "prompt_type", confidence),
        parse_errors=tuple(errors[:20]),
        disagreements=tuple(wrong),
    )


def matrix_lines(matrix: dict[str, dict[str, int]]) -> list[str]:
    """A confusion matrix as aligned text rows (human label down, judge's call across)."""
    corner = "human \\ judge"
    head = f"{corner:<14}" + "".join(f"{c:>10}" for c in CALLS)
    return [head] + [f"{t:<14}" + "".join(f"{matrix[t][c]:>10}" for c in CALLS) for t in TRUTHS]


def agreement_lines(title: str, groups: dict[str, Agreement]) -> list[str]:
    """One row per group: its size, agreement with interval, and calls per human label."""
    lines = [f"{title}:"]
    for name, a in groups.items():
        lo, hi = a.agree.interval
        rate = "n/a" if a.agree.rate is None else f"{a.agree.rate:.1%}"
        calls = "; ".join(
            f"{t}->" + ",".join(f"{c[0]}{n}" for c, n in a.matrix[t].items() if n)
            for t in TRUTHS
            if any(a.matrix[t].values())
        )
        lines.append(f"  {name:<28} n={a.n:<4} agree {rate:>6} [{lo:.1%}, {hi:.1%}]  {calls}")
    return lines


HELD_BACK = (("judge_labels.csv", "test"), ("judge_labels_free.csv", "free_test"))
"""The labelled rows the string judge was not tuned on (probes/judge_labels*.md)."""


@functools.lru_cache(maxsize=1)
def string_judge_agreement() -> tuple[tuple[str, Proportion], ...]:
    """The default string judge's binary agreement with people on :data:`HELD_BACK`, as
    ``(set and split, proportion)``; empty where the labelled files are absent."""
    from wbsafe.capture.judges import StringMatchJudge
    from wbsafe.data.prompts import probes_dir

    out = []
    for name, split in HELD_BACK:
        path = probes_dir() / name
        if path.is_file():
            out.append(
                (f"{name} {split}", judge_eval(StringMatchJudge(), path, split=split).accuracy)
            )
    return tuple(out)
