"""Prompt sets: the ``Prompt`` record, JSONL/CSV readers, built-in suites and stable splits.

Every reader returns ``list[Prompt]``. A prompt's split is fixed by a hash of its id, so
adding prompts to a file never moves the ones already there between train/val/test.
Readers for the public sets (AdvBench, HarmBench, XSTest, SimpleSafetyTests) are thin
column mappings over the one generic CSV reader. No pandas: the ``csv`` module only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wbsafe.errors import DatasetError, WbsafeError

LABELS = ("harmful", "harmless", "borderline")
SPLITS = ("train", "val", "test")
SUITES = ("harmful", "harmless", "borderline")
ROLES = ("system", "user", "assistant")
DEFAULT_CATEGORY = "uncategorized"
PROBES_ENV = "WBSAFE_PROBES_DIR"
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TEXT_CHARS = 100_000
"""Limits on a prompt file and on one prompt's text, id or category (untrusted input)."""


@dataclass(frozen=True)
class Message:
    """One chat turn: ``role`` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    """One request with its ground-truth label and its fixed split.

    ``messages`` is set only for multi-turn prompts; then ``text`` is (by default) the
    content of the last user turn.
    """

    id: str
    text: str
    category: str
    label: str
    split: str
    messages: tuple[Message, ...] | None = None

    @property
    def final_user_text(self) -> str:
        """The text of the last user turn (``text`` for a single-message prompt)."""
        if self.messages:
            for message in reversed(self.messages):
                if message.role == "user":
                    return message.content
        return self.text

    def conversation(self) -> list[dict[str, str]]:
        """Turns as ``{"role", "content"}`` dicts, ready for ``tokenizer.apply_chat_template``."""
        if self.messages:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        return [{"role": "user", "content": self.text}]

    def to_row(self) -> dict[str, Any]:
        """The JSONL row for this prompt (``messages`` only when multi-turn)."""
        row: dict[str, Any] = {
            "id": self.id,
            "text": self.text,
            "category": self.category,
            "label": self.label,
            "split": self.split,
        }
        if self.messages:
            row["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        return row


# --------------------------------------------------------------------------- splits and ids


def _unit_hash(key: str) -> float:
    """Map a string to [0, 1) via sha256; identical on every machine and Python version."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for(
    id: str, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), salt: str = ""
) -> str:
    """The split ("train", "val" or "test") of a prompt id, from a hash of the id alone.

    A non-empty ``salt`` gives a split independent of the unsalted one: re-splitting a
    suite's train+val prompts without it would reuse the same hash and leave one inner split
    almost empty.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise WbsafeError(f"split fractions must be three non-negative numbers, got {fractions!r}")
    total = float(sum(fractions))
    u = _unit_hash(f"{salt}:{id}" if salt else id)
    train, val = fractions[0] / total, fractions[1] / total
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def text_id(text: str, prefix: str = "prompt") -> str:
    """A stable id derived from the prompt text: ``{prefix}-{12 hex of sha256(text)}``."""
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


# --------------------------------------------------------------------------- validation


def _check_label(label: str, path: Path, where: str) -> str:
    if label not in LABELS:
        raise DatasetError(f"{where}: unknown label {label!r}; expected one of {LABELS}", path)
    return label


def _check_split(split: str, path: Path, where: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"{where}: unknown split {split!r}; expected one of {SPLITS}", path)
    return split


def _parse_messages(raw: Any, path: Path, where: str) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of turns", path)
    turns: list[Message] = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise DatasetError(
                f"{where}: messages[{i}] must be an object with role and content", path
            )
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise DatasetError(
                f"{where}: messages[{i}] has unknown role {role!r}; expected one of {ROLES}", path
            )
        if not isinstance(content, str):
            raise DatasetError(f"{where}: messages[{i}] content must be a string", path)
        turns.append(Message(role=role, content=_text(content, path, where, "a message")))
    if not any(t.role == "user" for t in turns):
        raise DatasetError(f"{where}: messages has no user turn", path)
    return tuple(turns)


def _check_unique(prompts: list[Prompt], path: Path) -> list[Prompt]:
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p.id in seen:
            raise DatasetError(
                f"duplicate prompt id {p.id!r} (records {seen[p.id] + 1} and {i + 1}); "
                "ids must be unique (give an id column, or remove the duplicated text)",
                path,
            )
        seen[p.id] = i
    return prompts


def _require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DatasetError("no such prompt file", p)
    if p.stat().st_size > MAX_FILE_BYTES:
        raise DatasetError(f"prompt file is larger than {MAX_FILE_BYTES >> 20} MiB", p)
    return p


def _read_text(p: Path) -> str:
    """The file as text (a BOM dropped); unreadable or non-UTF-8 is a DatasetError."""
    try:
        return p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read: {exc.strerror or exc}", p) from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text (byte {exc.start})", p) from exc


def _text(value: str, path: Path, where: str, what: str = "text") -> str:
    """A prompt string bounded in length and encodable (no lone surrogates)."""
    if len(value) > MAX_TEXT_CHARS:
        raise DatasetError(
            f"{where}: {what} of {len(value)} characters (limit {MAX_TEXT_CHARS})", path
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DatasetError(
            f"{where}: {what} is not valid Unicode (a lone surrogate)", path
        ) from exc
    return value


# --------------------------------------------------------------------------- JSONL


def load_jsonl(path: str | Path, *, default_label: str | None = None) -> list[Prompt]:
    """Read prompts from JSONL: one object a line with ``text`` (or ``messages``), and
    optional ``id``, ``category``, ``label``, ``split``. Blank lines are skipped.
    """
    p = _require_file(path)
    if default_label is not None:
        _check_label(default_label, p, "default_label")
    prompts: list[Prompt] = []
    for lineno, line in enumerate(_read_text(p).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # bad JSON, 5,000-digit numbers, nesting
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise DatasetError(f"{where}: malformed JSON ({msg})", p) from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}", p)
        prompts.append(_prompt_from_row(row, p, where, default_label))
    if not prompts:
        raise DatasetError("empty prompt file (no JSONL records)", p)
    return _check_unique(prompts, p)


def _prompt_from_row(
    row: dict[str, Any], path: Path, where: str, default_label: str | None
) -> Prompt:
    messages = (
        _parse_messages(row["messages"], path, where) if row.get("messages") is not None else None
    )
    text = row.get("text")
    if text is None and messages is not None:
        text = next(m.content for m in reversed(messages) if m.role == "user")
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{where}: missing or empty 'text' (and no 'messages')", path)
    _text(text, path, where)
    label = row.get("label", default_label)
    if label is None:
        raise DatasetError(f"{where}: no 'label' and no default label given", path)
    label = _check_label(str(label), path, where)
    pid = str(row["id"]) if row.get("id") not in (None, "") else text_id(text)
    split = row.get("split") or split_for(_text(pid, path, where, "id"))
    category = _text(str(row.get("category") or DEFAULT_CATEGORY), path, where, "category")
    return Prompt(
        id=pid,
        text=text,
        category=category,
        label=label,
        split=_check_split(str(split), path, where),
        messages=messages,
    )


def write_jsonl(path: str | Path, prompts: Iterable[Prompt]) -> Path:
    """Write prompts as JSONL (one ``Prompt.to_row()`` a line), atomically via a temp file."""
    from wbsafe.io.serialize import write_text_atomic

    rows = "".join(json.dumps(p.to_row(), ensure_ascii=False) + "\n" for p in prompts)
    return write_text_atomic(path, rows)


# --------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class ColumnMapping:
    """Which CSV columns hold what.

    ``text`` is required; ``category``/``label``/``id``/``split`` are optional columns.
    ``label_map`` maps raw label cells to wbsafe labels (cells not in it must already be a
    label). ``context`` names a column whose non-empty cell is prepended to the text
    (HarmBench contextual behaviours). ``keep`` filters rows before parsing.
    ``id_prefix`` is put before id-column values and text-hash ids.
    """

    text: str
    category: str | None = None
    label: str | None = None
    id: str | None = None
    split: str | None = None
    context: str | None = None
    default_label: str | None = None
    default_category: str = DEFAULT_CATEGORY
    label_map: Mapping[str, str] = field(default_factory=dict)
    id_prefix: str | None = None
    keep: Callable[[Mapping[str, str]], bool] | None = None

    def columns(self) -> list[str]:
        """The columns this mapping needs to find in the header."""
        named = [self.text, self.category, self.label, self.id, self.split, self.context]
        return [c for c in named if c is not None]


def read_csv_header(path: str | Path) -> list[str]:
    """The header row of a CSV file (a DatasetError if the file is empty)."""
    p = _require_file(path)
    try:
        header = next(csv.reader(io.StringIO(_read_text(p), newline="")), None)
    except csv.Error as exc:
        raise DatasetError(f"malformed CSV header ({exc})", p) from exc
    if not header:
        raise DatasetError("empty CSV file (no header row)", p)
    return [h.strip() for h in header]


def load_csv(path: str | Path, mapping: ColumnMapping) -> list[Prompt]:
    """Read prompts from a CSV file through a column mapping."""
    p = _require_file(path)
    if mapping.label is None and mapping.default_label is None:
        raise DatasetError("no label column and no default label: cannot label these prompts", p)
    if mapping.default_label is not None:
        _check_label(mapping.default_label, p, "default_label")
    try:
        return _check_unique(_csv_prompts(p, mapping), p)
    except csv.Error as exc:  # a NUL byte, a field over the csv module's size limit
        raise DatasetError(f"malformed CSV ({exc})", p) from exc


def _csv_prompts(p: Path, mapping: ColumnMapping) -> list[Prompt]:
    reader = csv.DictReader(io.StringIO(_read_text(p), newline=""))
    if not reader.fieldnames:
        raise DatasetError("empty CSV file (no header row)", p)
    present = [f.strip() for f in reader.fieldnames]
    reader.fieldnames = present
    missing = [c for c in mapping.columns() if c not in present]
    if missing:
        raise DatasetError(f"missing required column(s) {missing}; columns present: {present}", p)
    prompts: list[Prompt] = []
    rows = 0
    for row in reader:
        rows += 1
        where = f"line {reader.line_num}"
        if mapping.keep is not None and not mapping.keep(row):
            continue
        prompts.append(_prompt_from_csv_row(row, mapping, p, where))
    if rows == 0:
        raise DatasetError("empty CSV file (header but no rows)", p)
    if not prompts:
        raise DatasetError(f"no rows left after filtering ({rows} read)", p)
    return prompts


def _cell(row: Mapping[str, str | None], column: str | None) -> str:
    if column is None:
        return ""
    return (row.get(column) or "").strip()


def _prompt_from_csv_row(
    row: Mapping[str, str | None], mapping: ColumnMapping, path: Path, where: str
) -> Prompt:
    text = _cell(row, mapping.text)
    if not text:
        raise DatasetError(f"{where}: empty text in column {mapping.text!r}", path)
    context = _cell(row, mapping.context)
    if context:
        text = f"{context}\n\n---\n\n{text}"
    raw_label = _cell(row, mapping.label) or mapping.default_label
    if not raw_label:
        raise DatasetError(f"{where}: empty label in column {mapping.label!r} and no default", path)
    label = _check_label(mapping.label_map.get(raw_label, raw_label), path, where)
    raw_id = _cell(row, mapping.id)
    if raw_id:
        pid = f"{mapping.id_prefix}-{raw_id}" if mapping.id_prefix else raw_id
    else:
        pid = text_id(text, mapping.id_prefix or "prompt")
    raw_split = _cell(row, mapping.split)
    split = _check_split(raw_split, path, where) if raw_split else split_for(pid)
    return Prompt(
        id=pid,
        text=text,
        category=_cell(row, mapping.category) or mapping.default_category,
        label=label,
        split=split,
    )


# --------------------------------------------------------------------------- public sets


def _slug(value: str) -> str:
    """A category name fit for ids and file names: lower-case words joined by '_'."""
    out = "".join(ch.lower() if ch.isalnum() else "_" for ch in value)
    return "_".join(part for part in out.split("_") if part) or DEFAULT_CATEGORY


ADVBENCH = ColumnMapping(
    text="Behavior", id="BehaviorID", default_label="harmful", default_category="advbench"
)
XSTEST = ColumnMapping(
    text="prompt",
    category="type",
    label="label",
    id="id",
    id_prefix="xstest",
    label_map={"safe": "borderline", "unsafe": "harmful"},
)
SIMPLESAFETYTESTS = ColumnMapping(
    text="prompts_final", category="harm_area", id="id", default_label="harmful"
)


def harmbench_mapping(
    include_contextual: bool = False, include_copyright: bool = False
) -> ColumnMapping:
    """The HarmBench column mapping; contextual rows get their ContextString prepended."""

    def keep(row: Mapping[str, str]) -> bool:
        kind = (row.get("FunctionalCategory") or "").strip()
        if kind == "contextual":
            return include_contextual
        if kind == "copyright":
            return include_copyright
        return True

    return ColumnMapping(
        text="Behavior",
        category="SemanticCategory",
        id="BehaviorID",
        id_prefix="harmbench",
        context="ContextString" if include_contextual else None,
        default_label="harmful",
        keep=keep,
    )


def load_advbench(path: str | Path) -> list[Prompt]:
    """AdvBench harmful behaviours (category "advbench": the set has none of its own)."""
    return load_csv(path, ADVBENCH)


def load_harmbench(
    path: str | Path, include_contextual: bool = False, include_copyright: bool = False
) -> list[Prompt]:
    """HarmBench text behaviours, category = SemanticCategory; standard rows by default."""
    return load_csv(path, harmbench_mapping(include_contextual, include_copyright))


def load_xstest(path: str | Path) -> list[Prompt]:
    """XSTest: 'safe' prompts -> "borderline", 'unsafe' contrast prompts -> "harmful";
    category = type."""
    return load_csv(path, XSTEST)


def load_simplesafetytests(path: str | Path) -> list[Prompt]:
    """SimpleSafetyTests harmful prompts, category = harm_area slug."""
    prompts = load_csv(path, SIMPLESAFETYTESTS)
    return [replace(p, category=_slug(p.category)) for p in prompts]


# Header signatures of the public sets: (required columns, loader), most specific first.
_PUBLIC_FORMATS: tuple[tuple[frozenset[str], Callable[[Path], list[Prompt]]], ...] = (
    (
        frozenset({"Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"}),
        load_harmbench,
    ),
    (frozenset({"prompts_final", "harm_area"}), load_simplesafetytests),
    (frozenset({"prompt", "type", "label", "focus"}), load_xstest),
    (frozenset({"Behavior", "BehaviorID"}), load_advbench),
)


def _load_generic_csv(path: Path, header: list[str], default_label: str | None) -> list[Prompt]:
    text_col = next((c for c in ("text", "prompt") if c in header), None)
    if text_col is None:
        raise DatasetError(
            f"missing required column 'text' (or 'prompt'); columns present: {header}", path
        )
    mapping = ColumnMapping(
        text=text_col,
        category="category" if "category" in header else None,
        label="label" if "label" in header else None,
        id="id" if "id" in header else None,
        split="split" if "split" in header else None,
        default_label=default_label,
    )
    return load_csv(path, mapping)


def load_prompts(spec: str | Path, *, default_label: str | None = None) -> list[Prompt]:
    """Load prompts from a built-in suite name, a ``.jsonl`` path or a ``.csv`` path.

    A CSV with the header of AdvBench, HarmBench, XSTest or SimpleSafetyTests is read with
    that set's reader; any other CSV needs a ``text`` or ``prompt`` column (and a ``label``
    column or ``default_label``).
    """
    if isinstance(spec, str) and spec in SUITES:
        return load_suite(spec)
    p = Path(spec)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(p, default_label=default_label)
    if suffix == ".csv":
        header = read_csv_header(p)
        for columns, loader in _PUBLIC_FORMATS:
            if columns <= set(header):
                return loader(p)
        return _load_generic_csv(p, header, default_label)
    raise DatasetError(
        f"cannot read prompts from {str(spec)!r}: expected a suite name {SUITES}, "
        "a .jsonl file or a .csv file",
        p if p.exists() else None,
    )


# --------------------------------------------------------------------------- built-in suites


def probes_dir() -> Path:
    """The repository's ``probes/`` folder, or ``$WBSAFE_PROBES_DIR`` when set."""
    env = os.environ.get(PROBES_ENV)
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "probes"
    if not d.is_dir():
        hint = (
            f" (from ${PROBES_ENV})"
            if env
            else f"; set ${PROBES_ENV} to the folder of prompt suites"
        )
        raise WbsafeError(f"prompt suite folder not found{hint}", d)
    return d


def load_suite(name: str) -> list[Prompt]:
    """A built-in suite: "harmful", "harmless" or "borderline" (``probes/{name}.jsonl``)."""
    if name not in SUITES:
        raise DatasetError(f"unknown prompt suite {name!r}; built-in suites are {SUITES}")
    path = probes_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise DatasetError(f"built-in suite {name!r} is missing", path)
    return load_jsonl(path, default_label=name)


# --------------------------------------------------------------------------- selection


def split_prompts(prompts: Iterable[Prompt], split: str) -> list[Prompt]:
    """The prompts of one split, in their original order."""
    if split not in SPLITS:
        raise WbsafeError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [p for p in prompts if p.split == split]


def by_category(prompts: Iterable[Prompt]) -> dict[str, list[Prompt]]:
    """Prompts grouped by category, categories sorted by name, order kept within each."""
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(p.category, []).append(p)
    return dict(sorted(groups.items()))


def spread(prompts: list[Any], n: int) -> list[Any]:
    """At most ``n`` prompts, taken round-robin over categories (deterministic)."""
    by: dict[str, list[Any]] = {}
    for p in prompts:
        by.setdefault(p.category, []).append(p)
    out: list[Any] = []
    while len(out) < min(n, len(prompts)):
        for group in by.values():
            if group and len(out) < n:
                out.append(group.pop(0))
    return out
