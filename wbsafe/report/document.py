"""The report document: one typed, versioned record of a scan, and its JSON Schema.

``report.json`` is a :class:`ReportDocument` written as JSON. The scan writes it when it starts
(``status = "started"``), after every stage, and when it ends (``complete``, or ``failed`` with
the error), so an interrupted or crashed scan still leaves a valid document. ``wbsafe gate`` and
``wbsafe report`` read it back through the same type (:func:`load_report`): pydantic validates
the JSON against these dataclasses, so there is no hand-written parser and no second schema.
``schema.json`` beside this file is the JSON Schema generated from the type
(``python -m wbsafe.report.document`` rewrites it; a test keeps it equal to the type).

Why dataclasses validated by pydantic rather than pydantic models: the evidence, policy and
decision types are plain frozen dataclasses that the analyses and the gate build and read
without pydantic; one ``TypeAdapter`` over them gives validation and the schema for free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from wbsafe.errors import WbsafeError
from wbsafe.evidence import GateEvidence
from wbsafe.gate.policy import GatePolicy
from wbsafe.gate.rules import Decision
from wbsafe.io.serialize import SCHEMA_VERSION, read_json, to_jsonable
from wbsafe.io.typed import adapter

REPORT_KIND: Literal["wbsafe.scan"] = "wbsafe.scan"
SCHEMA_PATH = Path(__file__).with_name("schema.json")
ScanStatus = Literal["started", "complete", "failed"]
StageStatus = Literal["done", "failed", "skipped"]


class Section(TypedDict):
    """One block of a stage's report: a plot (``png``, relative to report.json), a table
    (``columns``, ``rows``) or text. Optional keys are absent rather than null."""

    title: str
    kind: Literal["plot", "table", "text"]
    png: NotRequired[str]
    caption: NotRequired[str]
    columns: NotRequired[list[str]]
    rows: NotRequired[list[list[Any]]]
    note: NotRequired[str]
    text: NotRequired[str]


@dataclass
class StageEntry:
    """One analysis as it ran: status, wall time, error, a one-line summary, the report
    sections and the full machine-readable result (the analysis's own ``to_json`` form)."""

    status: StageStatus
    seconds: float | None = None
    error: str | None = None
    summary: str = ""
    sections: list[Section] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


@dataclass
class ReportDocument:
    """A scan's report. Only ``schema_version`` and ``kind`` are required: a scan that has
    just started has no decision, evidence or stages yet.

    models: ``{"base": {...}, "tuned": {...}}`` as described by the loader (path, adapters,
    device, dtype, chat format, weight hashes). weight_files: sha256 of every file read.
    gate_evidence: what ``gate.decide`` was given; decision: what it answered (both None
    until the scan completes). timings: seconds per stage and ``total``.
    """

    schema_version: str
    kind: Literal["wbsafe.scan"]
    status: ScanStatus = "complete"
    """1.0 documents have no status: they were written only when a scan completed."""
    manifest: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    weight_files: dict[str, str] = field(default_factory=dict)
    risk: str = "standard"
    policy: GatePolicy | None = None
    decision: Decision | None = None
    gate_evidence: GateEvidence | None = None
    stages: dict[str, StageEntry] = field(default_factory=dict)
    timings: dict[str, float | None] = field(default_factory=dict)
    created: str = ""
    error: str | None = None
    """Why a ``failed`` scan stopped."""


def check_report(data: Any, path: str | Path | None = None) -> ReportDocument:
    """``data`` (parsed JSON) as a ReportDocument, or a WbsafeError naming ``path``.

    Accepts any schema version with the same major number as ``SCHEMA_VERSION``.
    """
    if not isinstance(data, dict):
        raise WbsafeError("not a wbsafe report: the top level is not a JSON object", path)
    kind = data.get("kind")
    if kind != REPORT_KIND:
        raise WbsafeError(
            f"not a wbsafe scan report: kind is {kind!r}, expected {REPORT_KIND!r}", path
        )
    version = data.get("schema_version")
    major = SCHEMA_VERSION.split(".")[0]
    if not isinstance(version, str) or version.split(".")[0] != major:
        raise WbsafeError(
            f"unsupported report schema_version {version!r}; this wbsafe reads {major}.x",
            path,
        )
    from pydantic import ValidationError

    try:
        doc: ReportDocument = adapter(ReportDocument).validate_python(data)
    except ValidationError as exc:
        raise WbsafeError(f"report does not match the report schema: {exc}", path) from exc
    return doc


def load_report(path: str | Path) -> ReportDocument:
    """Read and validate a report.json; errors name the file."""
    return check_report(read_json(path), path)


def as_json(doc: ReportDocument) -> dict[str, Any]:
    """The JSON form of ``doc`` (what report.json holds and what the renderers read)."""
    out = to_jsonable(doc)
    assert isinstance(out, dict)
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, generated from :class:`ReportDocument`."""
    schema: dict[str, Any] = adapter(ReportDocument).json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"wbsafe-report-{SCHEMA_VERSION}"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m wbsafe.report.document: rewrite schema.json
    SCHEMA_PATH.write_text(schema_text(), encoding="utf-8")
    print(SCHEMA_PATH)
