"""Compare two sets of scan reports (e.g. the demo before and after a refactor) field by field.

    python scripts/compare_reports.py BEFORE_DIR AFTER_DIR [--same OLD NEW ...]

Each directory holds one sub-directory per scan with its report.json and report.md (what
``wbsafe demo --out DIR`` writes). The reports must be identical apart from what legitimately
changes between runs or is named below as a deliberate change of the report format:

- timings, wall-clock seconds (per stage and per trigger-hunt phase), the creation time,
  whether a stage was re-used, the platform string, the git commit, package versions;
- schema 1.0 -> 1.1 (``schema_version`` wherever it is written): the document gained
  ``status`` (must be ``complete``) and ``error`` (must be null), and the behaviour stage
  (its name, its result's ``kind``) is spelled ``behaviour`` (was ``behavior``).

Run both sides on a cold base-side cache (``WBSAFE_CACHE`` pointing at a folder that holds
only the organisms): a re-used directions fit is reported as such, and would differ.

``--same OLD NEW`` reads the path prefix NEW in the after-reports as OLD (the same models
under another cache folder). Exits 0 when every pair matches, 1 with the first differences of each pair otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VOLATILE_TOP = ("created", "timings", "schema_version", "status", "error", "exit_code")
VOLATILE_MANIFEST = ("platform", "git_commit", "versions", "schema_version")


def _spell(name: Any) -> Any:
    return "behaviour" if name == "behavior" else name


def normalise(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what may differ between two runs of the same scan."""
    out = json.loads(json.dumps(report))
    for key in VOLATILE_TOP:
        out.pop(key, None)
    for key in VOLATILE_MANIFEST:
        out.get("manifest", {}).pop(key, None)
    config = out.get("manifest", {}).get("config") or {}
    if "stages" in config:
        config["stages"] = [_spell(s) for s in config["stages"]]
    out["stages"] = {_spell(n): st for n, st in (out.get("stages") or {}).items()}
    for stage in out["stages"].values():
        result = stage.get("result") or {}
        if "kind" in result:
            result["kind"] = _spell(result["kind"])
        stage.pop("seconds", None)
        stage.pop("reused", None)
        for phase in ((stage.get("result") or {}).get("passes") or {}).values():
            if isinstance(phase, dict):
                phase.pop("seconds", None)
    _drop_key(out, "schema_version")
    evidence = out.get("gate_evidence") or {}
    if "failed" in evidence:
        evidence["failed"] = [_spell(n) for n in evidence["failed"]]
    return out


def _drop_key(value: Any, key: str) -> None:
    if isinstance(value, dict):
        value.pop(key, None)
        for v in value.values():
            _drop_key(v, key)
    elif isinstance(value, list):
        for v in value:
            _drop_key(v, key)


_TIMES = re.compile(r"\b\d+(?:\.\d+)? (?:s|min \d+ s|h \d+ min)\b")
_VOLATILE_MD = re.compile(r"^(?:.*(?:Created|created|Git commit|Platform|python|torch|transformers|"
                          r"peft|safetensors|wbsafe|Schema|schema).*)$", re.M)  # fmt: skip


def normalise_markdown(text: str) -> str:
    """report.md without times, versions, commit and platform lines; one stage spelling."""
    text = _TIMES.sub("<time>", text)
    text = _VOLATILE_MD.sub("<volatile>", text)
    return re.sub(r"\bbehavior\b", "behaviour", text)


def diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which ``a`` and ``b`` differ (JSON values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                out += diff(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items before, {len(b)} after"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in diff(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def write_outcome(
    path: Path,
    before: Path,
    after: Path,
    outcomes: list[tuple[str, str]],
    problems: list[str],
    before_commit: str,
) -> None:
    """The comparison's outcome as Markdown, with the commit and the machine."""
    import datetime as dt
    import platform
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    lines = [
        "# Demo reports before and after (scripts/compare_reports.py)",
        "",
        f"- before: `{before}` (written by commit `{before_commit or 'unknown'}`); "
        f"after: `{after}`",
        f"- after-commit: `{commit.strip()}`; machine: {platform.platform()}, "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        "",
        "| scan | report.json and report.md |",
        "| --- | --- |",
        *[f"| {name} | {outcome} |" for name, outcome in outcomes],
        "",
        *([f"- {p}" for p in problems] or ["No difference beyond the volatile fields listed in "
                                            "the script's docstring."]),
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read(path: Path, same: list[tuple[str, str]]) -> str:
    text = path.read_text(encoding="utf-8")
    for old, new in same:
        text = text.replace(new, old)
    return text


def compare(
    before: Path, after: Path, same: Sequence[tuple[str, str]] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """((scan, "identical" | "DIFFERENT") per scan, the differences found)."""
    problems: list[str] = []
    outcomes: list[tuple[str, str]] = []
    names = sorted(p.name for p in before.iterdir() if (p / "report.json").is_file())
    if not names:
        return outcomes, [f"no reports under {before}"]
    for name in names:
        old = json.loads((before / name / "report.json").read_text())
        path = after / name / "report.json"
        if not path.is_file():
            problems.append(f"{name}: no report.json in {after}")
            outcomes.append((name, "missing"))
            continue
        new = json.loads(_read(path, list(same)))
        if new.get("status") != "complete" or new.get("error") is not None:
            problems.append(f"{name}: after-report status {new.get('status')!r}")
        found = diff(normalise(old), normalise(new), name)
        problems += found[:20]
        md_old = normalise_markdown((before / name / "report.md").read_text())
        md_new = normalise_markdown(_read(after / name / "report.md", list(same)))
        if md_old != md_new:
            lines = [
                f"{name}/report.md: {x!r} -> {y!r}"
                for x, y in zip(md_old.splitlines(), md_new.splitlines(), strict=False)
                if x != y
            ]
            problems += lines[:10] or [f"{name}/report.md: lengths differ"]
        outcome = "identical" if not found and md_old == md_new else "DIFFERENT"
        print(f"{name}: {outcome}")
        outcomes.append((name, outcome))
    return outcomes, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--same", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                    help="read the path prefix NEW in the after-reports as OLD")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="also write the outcome here (.md)")
    ap.add_argument("--before-commit", default="", help="the commit that wrote BEFORE_DIR")
    args = ap.parse_args()
    outcomes, problems = compare(args.before, args.after, [tuple(x) for x in args.same])
    if args.out:
        write_outcome(args.out, args.before, args.after, outcomes, problems, args.before_commit)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
