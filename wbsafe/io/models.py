"""Load base models, full fine-tunes and PEFT adapters safely; format prompts.

Safety rules of the loader, for a security team running it on untrusted files:
- weights are read from safetensors only; pickle checkpoints are refused with a hint;
- ``trust_remote_code`` is always False and configs that ask for remote code are refused;
- every safetensors header is validated (truncation, shard index, shapes vs config)
  before transformers sees the files;
- an adapter is checked against its base (architecture, target modules, shapes) first.

A PEFT adapter is loaded onto its base once; the base's own behaviour is reachable from
the same object with :meth:`LoadedModel.base_only`, so a large base is never loaded twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.arch.names import canonical_name
from wbsafe.config import RuntimeConfig
from wbsafe.errors import (
    AdapterMismatchError,
    CheckpointFormatError,
    UnsafeCheckpointError,
    WbsafeError,
)
from wbsafe.io.checkpoints import TensorInfo, read_headers, weight_files
from wbsafe.io.config_files import check_adapter_config, check_model_config
from wbsafe.io.containment import check_inside, named_base
from wbsafe.io.placement import placement as device_placement
from wbsafe.io.serialize import read_json_object

if TYPE_CHECKING:
    import torch

    from wbsafe.arch.families import Family

PLAIN_FORMAT = "User: {content}\nAssistant:"
"""Prompt format used when a tokenizer has no chat template (multi-turn: one line per turn)."""


@dataclass(frozen=True)
class ModelSource:
    """A model on disk: a full checkpoint directory plus zero or more stacked adapters."""

    path: str
    adapters: tuple[str, ...] = ()


@dataclass
class LoadedModel:
    """A loaded causal LM, its tokenizer, and how prompts are formatted for it."""

    model: Any
    tokenizer: Any
    source: ModelSource
    device: str
    dtype: str
    chat_format: str
    adapter_names: tuple[str, ...] = ()
    weight_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self._text_config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self._text_config.hidden_size)

    @property
    def _text_config(self) -> Any:
        """The language model's config (a multimodal model's ``text_config``)."""
        cfg = self.model.config
        get = getattr(cfg, "get_text_config", None)
        return get() if callable(get) else cfg

    def format(self, conversation: Sequence[dict[str, str]] | str) -> str:
        """Turn a conversation (or a single user message) into the model's prompt text
        (a system turn folded into the first user turn where the family has no system role)."""
        from wbsafe.arch.families import try_family_of_model

        return format_prompt(self.tokenizer, conversation, try_family_of_model(self.model))

    def base_weight_hashes(self) -> dict[str, str]:
        """sha256 of the base checkpoint's own files (adapter files left out)."""
        adapters = [str(Path(a)) for a in self.source.adapters]
        return {
            f: h
            for f, h in self.weight_hashes.items()
            if not any(f.startswith(a + "/") or f == a for a in adapters)
        }

    @contextlib.contextmanager
    def base_only(self) -> Iterator[LoadedModel]:
        """Inside this context the adapters are disabled: the model is its base."""
        if not self.adapter_names:
            yield self
            return
        with self.model.disable_adapter():
            yield self

    def describe(self) -> dict[str, Any]:
        """What to record in every output about this model."""
        return {
            "path": self.source.path,
            "adapters": list(self.source.adapters),
            "device": self.device,
            "dtype": self.dtype,
            "chat_format": self.chat_format,
            "weight_sha256": self.weight_hashes,
            **({"device_map": where} if (where := device_placement(self.model)) else {}),
        }


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    from wbsafe.errors import WbsafeError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise WbsafeError("--device cuda was asked for but no CUDA GPU is visible")
    if device not in ("cpu", "cuda"):
        raise WbsafeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The dtype policy: bfloat16 on a GPU, float32 on the CPU, unless asked otherwise."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        from wbsafe.errors import WbsafeError

        raise WbsafeError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return table[dtype]


def format_prompt(
    tokenizer: Any, conversation: Sequence[dict[str, str]] | str, family: Family | None = None
) -> str:
    """Format with the tokenizer's chat template (generation prompt added) or
    :data:`PLAIN_FORMAT`; for a ``family`` without a system role (Gemma) a system message is
    folded into the first user turn first."""
    from wbsafe.arch.families import fold_system_turn

    messages = (
        [{"role": "user", "content": conversation}]
        if isinstance(conversation, str)
        else list(conversation)
    )
    messages = fold_system_turn(family, messages)
    if getattr(tokenizer, "chat_template", None):
        try:
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        except CheckpointFormatError:
            raise
        except Exception as exc:  # the sandbox's SecurityError, a template's own errors
            raise CheckpointFormatError(
                f"the chat template failed to render ({type(exc).__name__}: {exc})",
                getattr(tokenizer, "name_or_path", None) or None,
            ) from exc
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages[:-1]]
    lines.append(PLAIN_FORMAT.format(content=messages[-1]["content"]))
    return "\n".join(lines)


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as they follow other text, not as a text of their own.

    A SentencePiece-style tokenizer with a dummy prefix (Llama 2, Mistral, Phi-3) puts a
    lone ``▁`` before text it encodes on its own, which the same text does not get in the
    middle of a prompt; text after a special token gets none, so ``text`` is encoded behind
    the eos token and that token dropped (plain encoding where there is no such token).
    """
    anchor = getattr(tokenizer, "eos_token", None)
    anchor_id = getattr(tokenizer, "eos_token_id", None)
    if isinstance(anchor, str) and isinstance(anchor_id, int):
        ids = list(tokenizer.encode(anchor + text, add_special_tokens=False))
        if ids and ids[0] == anchor_id:
            return ids[1:]
    return list(tokenizer.encode(text, add_special_tokens=False))


def chat_format_name(tokenizer: Any) -> str:
    """A record of the formatting used: the template's hash, or ``plain``."""
    from wbsafe.io.serialize import stable_hash

    template = getattr(tokenizer, "chat_template", None)
    return f"chat_template:{stable_hash(template)}" if template else "plain"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json``; refuse configs that need remote code."""
    cfg_path = Path(model_dir) / "config.json"
    if cfg_path.is_symlink():
        check_inside(cfg_path, model_dir, "config.json")
    cfg = read_json_object(
        cfg_path, CheckpointFormatError, "no config.json: not a Hugging Face model directory"
    )
    if "auto_map" in cfg:
        raise UnsafeCheckpointError(
            "config.json asks for custom (remote) code via auto_map; wbsafe never runs a model's "
            "own code. Use a checkpoint of an architecture built into transformers.",
            cfg_path,
        )
    check_model_config(cfg, cfg_path)
    return cfg


def check_weights_match_config(model_dir: str | Path) -> dict[str, TensorInfo]:
    """Validate every header and compare tensor shapes with the shapes the config implies.

    Instantiates the architecture on the meta device (no memory, no weights), so a config
    that does not match the weights is caught before loading, with the first few offenders
    named. Returns the merged headers.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    read_config(model_dir)
    files = weight_files(model_dir)
    headers = read_headers(files)
    try:
        config = AutoConfig.from_pretrained(
            model_dir, trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:  # transformers' config validators raise their own types
        msg = str(exc)[:300]
        raise CheckpointFormatError(f"config.json is not usable: {msg}", model_dir) from exc
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # transformers' model code on sizes it was never meant for
        msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise CheckpointFormatError(
            f"config.json does not build a model ({msg})", model_dir
        ) from exc
    expected = {canonical_name(k): tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = {canonical_name(k): v for k, v in headers.items()}
    bad = [
        f"{k} {list(stored[k].shape)} vs config {list(shape)} ({stored[k].file.name})"
        for k, shape in expected.items()
        if k in stored and tuple(stored[k].shape) != shape
    ]
    missing = [
        k
        for k in expected
        if k not in stored
        and not (k.startswith("lm_head") and getattr(config, "tie_word_embeddings", False))
    ]
    if bad:
        raise CheckpointFormatError(
            "weights do not match config.json: " + "; ".join(bad[:3]), files[0].parent
        )
    if missing:
        raise CheckpointFormatError(
            f"{len(missing)} tensor(s) the config needs are absent, e.g. {', '.join(missing[:3])}",
            files[0].parent,
        )
    return headers


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """Read ``adapter_config.json``; only LoRA adapters are supported."""
    path = Path(adapter_dir) / "adapter_config.json"
    if path.is_symlink():
        check_inside(path, adapter_dir, "adapter_config.json")
    cfg = read_json_object(path, AdapterMismatchError, "no adapter_config.json: not a PEFT adapter")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(
            f"peft_type {cfg.get('peft_type')!r} is not supported (LoRA only)", path
        )
    check_adapter_config(cfg, path)
    return cfg


def check_adapter_fits(
    base_headers: dict[str, TensorInfo], adapter_dir: str | Path, base_dir: str | Path
) -> dict[str, Any]:
    """Check that every LoRA factor targets a base matrix with matching shapes.

    ``lora_A`` is ``(r, in_features)`` and ``lora_B`` is ``(out_features, r)``; the base
    weight is ``(out_features, in_features)`` for ``nn.Linear`` and ``(in_features,
    out_features)`` for GPT-2's ``Conv1D`` (the layout comes from the family table,
    :func:`wbsafe.arch.families.storage_of`). Raises AdapterMismatchError naming the
    adapter file and the first offending tensor. Returns the adapter config.
    """
    from wbsafe.arch.families import CONV1D, storage_of, try_family

    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    family = try_family(read_config(base_dir))
    files = weight_files(adapter_dir, stem="adapter_model")
    headers = read_headers(files)
    base = {canonical_name(k): v for k, v in base_headers.items()}
    if not any(".lora_A" in k for k in headers):
        raise AdapterMismatchError("adapter file holds no LoRA factors", files[0])
    for name, info in headers.items():
        if ".lora_A" not in name and ".lora_B" not in name:
            continue
        module = canonical_name(name.split(".lora_")[0])
        target = base.get(f"{module}.weight")
        if target is None:
            raise AdapterMismatchError(
                f"targets module {module!r}, which the base at {base_dir} does not have "
                "(is this adapter for another base?)",
                info.file,
            )
        conv1d = family is not None and storage_of(family, module + ".weight") == CONV1D
        out_f, in_f = (
            (target.shape[-1], target.shape[0]) if conv1d else (target.shape[0], target.shape[-1])
        )
        ok = info.shape[-1] == in_f if ".lora_A" in name else info.shape[0] == out_f
        if not ok:
            raise AdapterMismatchError(
                f"{name} has shape {list(info.shape)} but base {module}.weight is "
                f"{list(target.shape)} (is this adapter for another base?)",
                info.file,
            )
    return cfg


def weight_file_hashes(path: str | Path, stem: str = "model") -> dict[str, str]:
    from wbsafe.io.serialize import hash_files

    return hash_files(weight_files(path, stem=stem))


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    from wbsafe.io.tokenizer_files import check_tokenizer_files

    check_tokenizer_files(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(model_dir), trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:  # tokenizers' parser raises bare Exception on a malformed file
        msg = str(exc)[:300]
        raise CheckpointFormatError(f"cannot load the tokenizer: {msg}", model_dir) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    check_chat_template(tok, Path(model_dir))
    return tok


MAX_TEMPLATE_CHARS = 100_000
TEMPLATE_SECONDS = 5.0


def check_chat_template(tokenizer: Any, where: Path) -> None:
    """Refuse a chat template that is oversized, that the Jinja sandbox stops (reaching for
    Python internals, huge ranges), or that does not finish a sample conversation within
    ``TEMPLATE_SECONDS`` (loops): a template is untrusted code, rendered only in
    transformers' sandbox and only once it has passed here."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        size = len(template) if isinstance(template, str) else "?"
        raise CheckpointFormatError(f"chat template of {size} characters refused", where)
    with _time_limit(TEMPLATE_SECONDS, where):
        format_prompt(tokenizer, "hello")  # one user turn: what every scan formats


@contextlib.contextmanager
def _time_limit(seconds: float, where: Path) -> Iterator[None]:
    """SIGALRM-bounded block on the main thread (elsewhere: unbounded, the sandbox's own
    limits only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise CheckpointFormatError(
            f"chat template did not render a sample conversation within {seconds:g} s "
            "(a loop?); refused",
            where,
        )

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers draws a "Loading weights" bar on stderr; wbsafe's library prints nothing
    (progress goes through its callbacks), so the bar is off while wbsafe loads."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def pretrained_causal_lm(path: str | Path, dtype: Any, **placement: Any) -> Any:
    """``AutoModelForCausalLM`` from a local directory already validated by the caller:
    safetensors only, never remote code, never a download, transformers' chatter off.
    ``placement``: ``device_map`` and ``offload_folder`` (accelerate), when given."""
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
            **{k: v for k, v in placement.items() if v is not None},
        )


def load_model(
    path: str | Path,
    adapters: Sequence[str | Path] = (),
    runtime: RuntimeConfig | None = None,
    *,
    hash_weights: bool = True,
    follow_named_base: bool = False,
) -> LoadedModel:
    """Load a local checkpoint (and stacked adapters) after validating every file.

    ``path`` may also be a PEFT adapter directory; its base is then read from
    ``adapter_config.json`` (``base_model_name_or_path``) and must exist locally; a base
    outside the adapter directory is followed only with ``follow_named_base`` (or
    ``--allow-outside-links``): see :mod:`wbsafe.io.containment`.
    Hub ids are accepted when the user has them in the local HF cache (never downloaded).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # wbsafe shows its own progress; keep output readable
    runtime = runtime or RuntimeConfig()
    if runtime.threads is not None:
        import torch

        torch.set_num_threads(runtime.threads)
    path = Path(path)
    adapter_paths = [Path(a) for a in adapters]
    if is_adapter_dir(path):
        adapter_paths.insert(0, path)
        named = read_adapter_config(path).get("base_model_name_or_path") or ""
        path = named_base(adapter_paths[0], named, allow=follow_named_base)
        if not path.is_dir():
            raise AdapterMismatchError(
                f"adapter names base {str(path)!r}, which is not a local directory; pass --base",
                adapter_paths[0],
            )
    if not path.exists():
        path = _resolve_cached_hub_id(str(path))
    headers = check_weights_match_config(path)
    adapter_cfgs = [check_adapter_fits(headers, a, path) for a in adapter_paths]
    del adapter_cfgs
    from wbsafe.io import placement

    device_map = placement.read_device_map(runtime.device_map)
    if placement.uses_disk(device_map) and not runtime.offload_folder:
        raise WbsafeError("the device map offloads modules to 'disk': give --offload-folder DIR")
    device = placement.map_device_kind(device_map, resolve_device(runtime.device))
    dtype = resolve_dtype(runtime.dtype, device)
    model: Any
    try:
        model = pretrained_causal_lm(
            path, dtype, device_map=device_map, offload_folder=runtime.offload_folder
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointFormatError(f"transformers could not load the model: {exc}", path) from exc
    if device_map is not None:
        placement.check_placed(model, path)
    names: list[str] = []
    if adapter_paths:
        from peft import PeftModel

        for i, a in enumerate(adapter_paths):
            name = f"adapter{i}"
            if i == 0:
                model = PeftModel.from_pretrained(model, str(a), adapter_name=name)
            else:
                model.load_adapter(str(a), adapter_name=name)
            names.append(name)
        model.base_model.set_adapter(names)
    if device_map is None:
        model.to(device)
    else:  # accelerate placed (and hooked) the layers: moving them would undo that
        device = str(placement.input_device(model))
    model.eval()
    # wbsafe never trains what it loads: frozen weights let autograd (the trigger hunt's
    # input gradients) keep only what input gradients need, not every layer's input
    model.requires_grad_(False)
    tokenizer = load_tokenizer(path)
    hashes: dict[str, str] = {}
    if hash_weights:
        hashes.update(weight_file_hashes(path))
        for a in adapter_paths:
            hashes.update(weight_file_hashes(a, stem="adapter_model"))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=ModelSource(str(path), tuple(str(a) for a in adapter_paths)),
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        chat_format=chat_format_name(tokenizer),
        adapter_names=tuple(names),
        weight_hashes=hashes,
    )


def _resolve_cached_hub_id(model_id: str) -> Path:
    """Find a hub id in the local HF cache without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception as exc:  # the hub library raises several unrelated types here
        raise CheckpointFormatError(
            "not a local directory, and not a model id in the local Hugging Face cache "
            "(wbsafe never downloads)",
            model_id,
        ) from exc


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Describe a checkpoint or adapter directory without loading weights into memory."""
    path = Path(path)
    if is_adapter_dir(path):
        cfg = read_adapter_config(path)
        files = weight_files(path, stem="adapter_model")
        headers = read_headers(files)
        ranks = sorted({h.shape[0] for k, h in headers.items() if ".lora_A" in k})
        return {
            "kind": "adapter",
            "path": str(path),
            "peft_type": cfg.get("peft_type", "LORA"),
            "base_model": cfg.get("base_model_name_or_path"),
            "rank": cfg.get("r"),
            "ranks_in_file": ranks,
            "lora_alpha": cfg.get("lora_alpha"),
            "target_modules": cfg.get("target_modules"),
            "parameters": sum(_numel(h.shape) for h in headers.values()),
            "dtypes": sorted({h.dtype for h in headers.values()}),
            "weight_sha256": weight_file_hashes(path, stem="adapter_model"),
        }
    cfg = read_config(path)
    files = weight_files(path)
    headers = read_headers(files)
    tokenizer_info: dict[str, Any] = {}
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        tok = load_tokenizer(path)
        tokenizer_info = {"vocab": len(tok), "chat_format": chat_format_name(tok)}
    from wbsafe.arch.families import text_config, try_family

    family = try_family(cfg)
    text = text_config(family, cfg) if family is not None else cfg  # multimodal: text part
    return {
        "kind": "checkpoint",
        "path": str(path),
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "model_type": cfg.get("model_type"),
        "family": family.name if family is not None else None,
        "layers": text.get("num_hidden_layers", text.get("n_layer")),
        "d_model": text.get("hidden_size", text.get("n_embd")),
        "vocab_size": text.get("vocab_size", cfg.get("vocab_size")),
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "dtypes": sorted({h.dtype for h in headers.values()}),
        "parameters": sum(_numel(h.shape) for h in headers.values()),
        "shards": len(files),
        "tokenizer": tokenizer_info,
        "weight_sha256": weight_file_hashes(path),
    }


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for one run; called by commands, never at import."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
