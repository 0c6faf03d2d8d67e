"""The report document: one type, its JSON Schema on disk, and partial documents."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from report_factory import example_document, example_report

from wbsafe.errors import WbsafeError
from wbsafe.io.serialize import SCHEMA_VERSION
from wbsafe.report.document import (
    REPORT_KIND,
    SCHEMA_PATH,
    ReportDocument,
    as_json,
    check_report,
    json_schema,
    load_report,
    schema_text,
)


def test_schema_file_is_generated_from_the_type() -> None:
    # rerun `python -m wbsafe.report.document` after changing a type in the document
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text()


def test_example_round_trips_through_the_type() -> None:
    doc = example_report()
    jsonschema.validate(doc, json_schema())
    assert as_json(check_report(doc)) == doc
    assert check_report(doc) == example_document()


def test_a_started_scan_is_a_valid_document(tmp_path: Path) -> None:
    started = ReportDocument(schema_version=SCHEMA_VERSION, kind=REPORT_KIND, status="started")
    data = as_json(started)
    jsonschema.validate(data, json_schema())
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    back = load_report(path)
    assert back.status == "started" and back.decision is None and back.stages == {}


def test_a_1_0_report_without_status_reads_as_complete() -> None:
    old = example_report()
    old.pop("status")
    old["schema_version"] = "1.0"
    assert check_report(old).status == "complete"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(status="halfway"), "status"),
        (lambda d: d["stages"]["weights"].update(status="exploded"), "status"),
        (lambda d: d["decision"].update(verdict="SHIP"), "verdict"),
        (lambda d: d["gate_evidence"]["triggers"].update(candidates_tested="many"), "candidates"),
        (lambda d: d["policy"]["behaviour"].update(monitor=0.5), "bands must increase"),
    ],
)
def test_a_document_that_breaks_the_type_is_refused(change, message, tmp_path: Path) -> None:
    doc = example_report()
    change(doc)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(WbsafeError, match=message) as err:
        load_report(path)
    assert str(path) in str(err.value)


def test_gate_will_not_decide_a_partial_report(tmp_path: Path) -> None:
    from wbsafe.api import redecide

    failed = ReportDocument(
        schema_version=SCHEMA_VERSION, kind=REPORT_KIND, status="failed", error="Boom: disk"
    )
    path = tmp_path / "report.json"
    path.write_text(json.dumps(as_json(failed)), encoding="utf-8")
    with pytest.raises(WbsafeError, match=r"did not complete .*Boom: disk"):
        redecide(path)
    path.write_text(json.dumps(example_report()), encoding="utf-8")
    assert redecide(path).verdict.value == "BLOCK"


@pytest.mark.parametrize(
    ("where", "change", "message"),
    [
        ("triggers", lambda t: t["findings"][0].update(successes=-3), "outside"),
        ("triggers", lambda t: t["findings"][0].update(successes=99), "outside"),
        ("triggers", lambda t: t.update(candidates_tested=-1), "negative"),
        ("weights", lambda w: w.update(top_relative_change=float("nan")), "finite"),
    ],
)
def test_gate_and_report_refuse_implausible_evidence(
    where, change, message, tmp_path: Path
) -> None:
    """A saved report whose evidence cannot be (a negative count, more successes than trials,
    NaN) is refused with the file named, never re-decided into a softer verdict."""
    from wbsafe.api import redecide, rerender

    doc = example_report()
    change(doc["gate_evidence"][where])
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc), encoding="utf-8")  # NaN is written as JSON's NaN
    for reread in (redecide, rerender):
        with pytest.raises(WbsafeError, match=message) as err:
            reread(path)
        assert str(path) in str(err.value)


def test_behaviour_evidence_refuses_impossible_intervals_and_counts() -> None:
    from wbsafe.evidence import BehaviourEvidence

    ok = dict(n=10, base_refusals=9, tuned_refusals=8, relative_drop=0.11,
              drop_interval=(0.0, 0.4), p_value=0.5)  # fmt: skip
    BehaviourEvidence(**ok)  # type: ignore[arg-type]
    for bad, message in (
        ({"tuned_refusals": 11}, "outside"),
        ({"drop_interval": (0.4, 0.1)}, "ordered"),
        ({"drop_interval": (0.0, 1.5)}, "ordered"),
        ({"p_value": float("nan")}, "finite"),
        ({"p_value": 1.2}, r"outside \[0, 1\]"),
        ({"unjudged": -1}, "outside"),
    ):
        with pytest.raises(ValueError, match=message):
            BehaviourEvidence(**{**ok, **bad})  # type: ignore[arg-type]
