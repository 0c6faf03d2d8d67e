"""Agreement of the refusal judges with people, on the hand-labelled sets in probes/.

Three sets, by three authors, written blind to the judge: ``judge_labels.csv`` (from phrase
pools; splits dev and test share the pools), ``judge_labels_free.csv`` (free-form, every
response written individually; halves free_dev and free_test by a hash of the prompt) and
``judge_labels_xs.csv`` (free-form, in the registers of the five chat models of a public
over-refusal benchmark's responses, after its rubric; halves xs_dev and xs_test by a seeded
shuffle). The string judge was tuned on dev, free_dev and xs_dev; its last fix (declines
with "not willing to", "must firmly decline", "not a paragraph I'm willing to write") was
made after the misses of every split had been read, so free_test and xs_test are no longer
blind to it (their figures before that fix: 93.7% and 95.6%). For each split,
the default string judge (structure of a refusal, three-way) beside the first-words rule it
replaced as the benchmark default: binary agreement (partial counts as refused) with a Wilson
interval, sensitivity, specificity, the three-way confusion matrix and agreement per kind of
response. Writes results/judge_agreement.json and results/judge_agreement.md.

    python scripts/bench_judges.py [--labels FILE]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wbsafe.capture.judge_eval import JudgeEval, judge_eval, matrix_lines, read_labels
from wbsafe.capture.judges import Judgement, StringMatchJudge, opens_with_refusal
from wbsafe.data.prompts import probes_dir
from wbsafe.io.serialize import run_manifest, write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class FirstWordsJudge:
    """The first-words rule (a refusal opener at the very start) as a judge: the baseline."""

    name: str = "first-words"

    def judge(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[Judgement]:
        return [
            Judgement(None, None, "empty response")
            if not r.strip()
            else Judgement(opens_with_refusal(r), None)
            for r in responses
        ]


def _pct(p: Any) -> str:
    lo, hi = p.interval
    return "n/a" if p.rate is None else f"{p.rate:.1%} [{lo:.1%}, {hi:.1%}] ({p.k}/{p.n})"


def _section(ev: JudgeEval) -> list[str]:
    lines = [
        f"### {ev.judge}, {Path(ev.labels_file).name} split {ev.split}",
        "",
        f"- agreement {_pct(ev.accuracy)}",
        f"- sensitivity (refusals and partial refusals caught) {_pct(ev.sensitivity)}",
        f"- specificity (compliances passed) {_pct(ev.specificity)}",
        f"- unjudged: {ev.parse_failures} of {ev.n}",
        "",
        "```",
        *matrix_lines(ev.matrix),
        "```",
        "",
        "| kind of response | n | agreement |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {k} | {a.n} | {_pct(a.agree)} |" for k, a in ev.by_kind.items()]
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        default=[probes_dir() / f"judge_labels{s}.csv" for s in ("", "_free", "_xs")],
    )
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    evals, sizes = [], []
    for labels in args.labels:
        rows = read_labels(labels)
        sizes.append(f"`{labels.name}` ({len(rows)} rows)")
        splits = sorted({r.split for r in rows if r.split}) or [None]
        evals += [
            judge_eval(judge, labels, split=split)
            for split in splits
            for judge in (StringMatchJudge(), FirstWordsJudge())
        ]
    manifest = run_manifest()
    write_json_atomic(args.out / "judge_agreement.json", {"manifest": manifest, "evals": evals})
    md = [
        "# Refusal judges against human labels",
        "",
        f"Labels: {', '.join(sizes)}; see probes/judge_labels*.md. The string judge was tuned "
        "on the dev, free_dev and xs_dev splits; test shares dev's phrase pools, free_test "
        "and xs_test do not, but its last fix was made after every split's misses had been "
        "read (free_test and xs_test were 93.7% and 95.6% before it). Written by "
        "`scripts/bench_judges.py`; binary agreement counts partial as refused.",
        f"Commit {manifest['git_commit']}, {manifest['platform']}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}.",
        "",
    ]
    for ev in evals:
        md += _section(ev)
    write_text_atomic(args.out / "judge_agreement.md", "\n".join(md))
    for ev in evals:
        print(f"{ev.judge:<12} {ev.split:<10}: agreement {_pct(ev.accuracy)}")


if __name__ == "__main__":
    main()
