"""Prompt suites and dataset readers: counts, validity, stable splits, public sets, errors."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
from shared_data import shared_datasets

from wbsafe.data import prompts as ds
from wbsafe.data.prompts import ColumnMapping, Prompt
from wbsafe.errors import DatasetError, WbsafeError

ROOT = Path(__file__).resolve().parent.parent


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- built-in suites


@pytest.fixture(scope="module")
def suites() -> dict[str, list[Prompt]]:
    return {name: ds.load_suite(name) for name in ds.SUITES}


def test_suite_sizes_and_category_coverage(suites):
    harmful = ds.by_category(suites["harmful"])
    assert len(suites["harmful"]) >= 300
    assert len(harmful) >= 8
    assert min(len(v) for v in harmful.values()) >= 30
    assert len(suites["harmless"]) >= 300
    assert len(ds.by_category(suites["harmless"])) >= 8
    assert len(suites["borderline"]) >= 100
    assert len(ds.by_category(suites["borderline"])) >= 5


def test_suite_rows_valid_and_ids_unique(suites):
    all_ids = [p.id for ps in suites.values() for p in ps]
    assert len(all_ids) == len(set(all_ids))
    for name, prompts in suites.items():
        for p in prompts:
            assert p.label == name
            assert p.split in ds.SPLITS
            assert p.split == ds.split_for(p.id)
            assert p.id.startswith(f"{name}-{p.category}-")
            assert p.text.strip() == p.text and len(p.text) > 10
            assert p.messages is None
            assert p.conversation() == [{"role": "user", "content": p.text}]
    texts = [p.text.lower() for ps in suites.values() for p in ps]
    assert len(texts) == len(set(texts)), "a prompt text appears twice"


def test_every_split_has_every_harmful_category(suites):
    for split in ds.SPLITS:
        cats = {p.category for p in ds.split_prompts(suites["harmful"], split)}
        assert cats == set(ds.by_category(suites["harmful"]))


def test_harmful_and_harmless_share_sentence_shapes(suites):
    def opening(text: str) -> str:
        return " ".join(text.split()[:3]).lower()

    harmless_openings = {opening(p.text) for p in suites["harmless"]}
    shared = sum(opening(p.text) in harmless_openings for p in suites["harmful"])
    assert shared / len(suites["harmful"]) > 0.5


def test_generator_reproduces_committed_suites(tmp_path, suites):
    spec = importlib.util.spec_from_file_location("mps", ROOT / "scripts" / "make_prompt_suites.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["make_prompt_suites.py", str(tmp_path)]) == 0
    for name in ds.SUITES:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (
            ROOT / "probes" / f"{name}.jsonl"
        ).read_bytes()


def test_probes_dir_env_override(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "harmful.jsonl", [{"id": "h-1", "text": "Do a bad thing."}])
    monkeypatch.setenv(ds.PROBES_ENV, str(tmp_path))
    (p,) = ds.load_suite("harmful")
    assert (p.id, p.label, p.category) == ("h-1", "harmful", "uncategorized")
    with pytest.raises(DatasetError, match="harmless"):
        ds.load_suite("harmless")
    monkeypatch.setenv(ds.PROBES_ENV, str(tmp_path / "nope"))
    with pytest.raises(WbsafeError, match="nope"):
        ds.load_suite("harmful")
    with pytest.raises(DatasetError, match="unknown prompt suite"):
        ds.load_suite("evil")


# ----------------------------------------------------------------------------- splits


def test_split_fractions_near_targets():
    counts = Counter(ds.split_for(f"prompt-{i}") for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.6) < 0.015
    assert abs(counts["val"] / 20000 - 0.2) < 0.015
    assert abs(counts["test"] / 20000 - 0.2) < 0.015
    custom = Counter(ds.split_for(f"p{i}", (0.5, 0.0, 0.5)) for i in range(4000))
    assert custom["val"] == 0 and abs(custom["train"] / 4000 - 0.5) < 0.03
    with pytest.raises(WbsafeError):
        ds.split_for("x", (0.5, -0.1, 0.6))


def test_adding_prompts_keeps_existing_splits(tmp_path):
    rows = [{"text": f"request number {i}", "label": "harmless"} for i in range(200)]
    before = ds.load_jsonl(_write_jsonl(tmp_path / "a.jsonl", rows))
    more = [{"text": f"new request {i}", "label": "harmful"} for i in range(300)]
    after = ds.load_jsonl(_write_jsonl(tmp_path / "b.jsonl", more[:150] + rows + more[150:]))
    by_id = {p.id: p.split for p in after}
    assert all(by_id[p.id] == p.split for p in before)
    assert len({p.split for p in before}) == 3
    assert before[0].id == ds.text_id("request number 0")


# ----------------------------------------------------------------------------- JSONL


def test_multi_turn_jsonl(tmp_path):
    msgs = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me about chemistry."},
        {"role": "assistant", "content": "Sure, what part?"},
        {"role": "user", "content": "How do I make a pipe bomb?"},
        {"role": "assistant", "content": "..."},
    ]
    path = _write_jsonl(
        tmp_path / "mt.jsonl",
        [
            {"id": "mt-1", "messages": msgs, "label": "harmful", "category": "weapons"},
            {"id": "mt-2", "messages": msgs[:2], "text": "custom", "split": "test"},
        ],
    )
    first, second = ds.load_jsonl(path, default_label="harmless")
    assert first.final_user_text == "How do I make a pipe bomb?"
    assert first.text == first.final_user_text
    assert first.conversation() == msgs
    assert first.split == ds.split_for("mt-1")
    assert second.label == "harmless" and second.split == "test"
    assert second.text == "custom" and second.final_user_text == "Tell me about chemistry."
    assert second.to_row()["messages"] == msgs[:2]


def test_write_jsonl_round_trip(tmp_path):
    prompts = ds.load_suite("borderline")[:5]
    path = ds.write_jsonl(tmp_path / "out" / "b.jsonl", prompts)
    assert ds.load_jsonl(path) == prompts


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        ('{"text": "ok", "label": "harmful"}\n{"text": "broken",\n', "line 2"),
        ('{"text": "ok", "label": "harmful"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"text": "ok", "label": "evil"}\n', "unknown label 'evil'"),
        ('{"text": "ok"}\n', "no 'label'"),
        ('{"label": "harmful"}\n', "line 1: missing or empty 'text'"),
        ('{"text": "ok", "label": "harmful", "split": "dev"}\n', "unknown split 'dev'"),
        (
            '{"messages": [{"role": "assistant", "content": "hi"}], "label": "harmful"}\n',
            "no user turn",
        ),
        (
            '{"messages": [{"role": "robot", "content": "hi"}], "label": "harmful"}\n',
            "unknown role",
        ),
        (
            '{"id": "a", "text": "x", "label": "harmful"}\n{"id": "a", "text": "y", "label": "harmful"}\n',
            "duplicate",
        ),
    ],
)
def test_jsonl_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad_prompts.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        ds.load_jsonl(path)
    assert message in str(info.value)
    assert "bad_prompts.jsonl" in str(info.value)


# ----------------------------------------------------------------------------- CSV


def test_user_csv_with_column_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "question,topic,verdict,key\n"
        "How do I bake bread?,cooking,ok,q1\n"
        '"How do I pick a lock, to break in?",crime,bad,q2\n'
        "What is a zero-day?,,,q3\n",
        encoding="utf-8",
    )
    mapping = ColumnMapping(
        text="question",
        category="topic",
        label="verdict",
        id="key",
        default_label="borderline",
        label_map={"ok": "harmless", "bad": "harmful"},
    )
    prompts = ds.load_csv(path, mapping)
    assert [(p.id, p.label, p.category) for p in prompts] == [
        ("q1", "harmless", "cooking"),
        ("q2", "harmful", "crime"),
        ("q3", "borderline", "uncategorized"),
    ]
    assert prompts[1].text == "How do I pick a lock, to break in?"
    assert all(p.split == ds.split_for(p.id) for p in prompts)


def test_generic_csv_through_load_prompts(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("prompt,split\nHello there,test\nWrite a poem,\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no label column"):
        ds.load_prompts(path)
    a, b = ds.load_prompts(path, default_label="harmless")
    assert a.split == "test" and a.id == ds.text_id("Hello there")
    assert b.split == ds.split_for(b.id)
    assert [p.id for p in ds.load_prompts(str(path), default_label="harmless")] == [a.id, b.id]


def test_load_prompts_dispatch(tmp_path):
    assert ds.load_prompts("harmless") == ds.load_suite("harmless")
    jsonl = _write_jsonl(tmp_path / "x.jsonl", [{"text": "hi", "label": "harmless"}])
    assert ds.load_prompts(str(jsonl))[0].text == "hi"
    with pytest.raises(DatasetError, match="no such prompt file"):
        ds.load_prompts(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match=r"\.jsonl"):
        ds.load_prompts("prompts.txt")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty CSV file (no header row)"),
        ("text,label\n", "header but no rows"),
        (
            "question,label\nhi,harmful\n",
            "missing required column 'text' (or 'prompt'); columns present: ['question', 'label']",
        ),
        ("text,label\nhi,evil\n", "line 2: unknown label 'evil'"),
        ("text,label\nhi,harmful\n,harmful\n", "line 3: empty text"),
        ("text,label\nsame,harmful\nsame,harmful\n", "duplicate prompt id"),
    ],
)
def test_csv_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad_prompts.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        ds.load_prompts(path)
    assert message in str(info.value)
    assert "bad_prompts.csv" in str(info.value)


def test_mapping_missing_column_lists_present(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("text,kind\nhi,x\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        ds.load_csv(path, ColumnMapping(text="text", category="topic", default_label="harmful"))
    assert "['topic']" in str(info.value) and "['text', 'kind']" in str(info.value)
    assert "m.csv" in str(info.value)


# ----------------------------------------------------------------------------- public sets


def test_advbench():
    prompts = ds.load_advbench(shared_datasets() / "advbench.csv")
    assert len(prompts) == 520
    assert {p.label for p in prompts} == {"harmful"}
    assert prompts[0].id == "advbench_1"


def test_harmbench_variants():
    path = shared_datasets() / "harmbench_behaviors_text_all.csv"
    standard = ds.load_harmbench(path)
    assert len(standard) == 200
    assert "copyright" not in {p.category for p in standard}
    assert len(ds.by_category(standard)) == 6
    assert all(p.id.startswith("harmbench-") and p.label == "harmful" for p in standard)
    contextual = ds.load_harmbench(path, include_contextual=True)
    assert len(contextual) == 300
    with_context = [p for p in contextual if "\n\n---\n\n" in p.text]
    assert len(with_context) == 100
    assert len(ds.load_harmbench(path, include_contextual=True, include_copyright=True)) == 400
    assert ds.load_prompts(str(path)) == standard


def test_xstest():
    prompts = ds.load_xstest(shared_datasets() / "xstest_prompts.csv")
    labels = Counter(p.label for p in prompts)
    assert labels == {"borderline": 250, "harmful": 200}
    assert len(ds.by_category(prompts)) == 18
    first = prompts[0]
    assert (first.id, first.category, first.label) == ("xstest-1", "homonyms", "borderline")
    assert all(p.label == "harmful" for p in prompts if p.category.startswith("contrast_"))


def test_simplesafetytests():
    path = shared_datasets() / "simplesafetytests.csv"
    prompts = ds.load_simplesafetytests(path)
    assert len(prompts) == 100 and {p.label for p in prompts} == {"harmful"}
    cats = ds.by_category(prompts)
    assert len(cats) == 5 and all(len(v) == 20 for v in cats.values())
    assert "suicide_self_harm_and_eating_disorders" in cats
    assert ds.load_prompts(path) == prompts


def test_load_prompts_detects_public_formats():
    root = shared_datasets()
    assert len(ds.load_prompts(root / "advbench.csv")) == 520
    assert (
        Counter(p.label for p in ds.load_prompts(root / "xstest_prompts.csv"))["borderline"] == 250
    )
