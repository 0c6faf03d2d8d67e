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
