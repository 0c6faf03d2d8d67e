"""Capture the residual stream at chosen sites and token positions; save/load as safetensors.

Sites are named the TransformerLens way: ``blocks.{l}.hook_resid_pre`` (input of decoder
layer ``l``) and ``blocks.{l}.hook_resid_post`` (its output). Positions are named:

- ``last_instr``: the last token of the user's content;
- ``post0``, ``post1``, ...: each template token after it (for the tiny template
  ``<|end|>`` and ``<|assistant|>``), found by formatting a sentinel conversation;
- ``mean``: the mean over every (non-pad) prompt token, accumulated in float64.

Capture goes through TransformerLens ``TransformerBridge`` hooks: :func:`bridged` builds
a bridge around the model wbsafe already loaded (``build_bridge_from_module``; nothing is
read from disk or the hub, no weights are copied or converted). The bridge wraps the
Hugging Face modules in place, so for a PEFT model (bridged through its inner
transformers model) the injected LoRA layers stay in the forward pass and
``LoadedModel.base_only()`` (``disable_adapter()``) switches them off for the bridge too:
base activations come from the same loaded model. Because the wrapping is in place, the
module tree (and the attention implementation, eager inside the bridge) is restored when
the context ends, so generation and :func:`residual_edit` run on the plain HF modules.
:func:`capture` calls ``run_with_hooks`` with a names filter, passes position ids taken
from the attention mask (either padding side) and ends the pass with an exception raised
from the hook of the deepest site asked for.

Hooks are removed, and the module tree restored, in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    import torch

    from wbsafe.io.models import LoadedModel

SITE_KINDS = ("resid_pre", "resid_post")
_SITE_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post)$")
_SENTINEL = "wbsafe sentinel"
ACTIVATIONS_FORMAT = "wbsafe.activations/1"


def site_name(layer: int, kind: str = "resid_pre") -> str:
    """``blocks.{layer}.hook_{kind}``."""
    if kind not in SITE_KINDS:
        raise WbsafeError(f"unknown site kind {kind!r} (use {', '.join(SITE_KINDS)})")
    return f"blocks.{layer}.hook_{kind}"


def parse_site(name: str) -> tuple[int, str]:
    """``blocks.3.hook_resid_post`` -> ``(3, "resid_post")``."""
    m = _SITE_RE.match(name)
    if not m:
        raise WbsafeError(
            f"unsupported activation site {name!r} (use blocks.<l>.hook_resid_pre|resid_post)"
        )
    return int(m.group(1)), m.group(2)


def position_names(n_post: int) -> tuple[str, ...]:
    """All position names for a template with ``n_post`` post-instruction tokens."""
    return ("last_instr", *(f"post{i}" for i in range(n_post)), "mean")


def _unwrap(model: Any) -> Any:
    """The underlying transformers model of a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(model: Any) -> Any:
    """The ``ModuleList`` of decoder layers of a causal LM (plain or PEFT-wrapped), at the
    family table's ``layers_path`` (:mod:`wbsafe.arch.families`)."""
    from wbsafe.arch.families import family_of_model

    inner = _unwrap(model)
    path = family_of_model(inner).layers_path
    obj = inner
    try:
        for part in path.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise WbsafeError(
            f"cannot find the decoder layers of {type(inner).__name__} at {path}"
        ) from None
    return obj


def post_instruction_length(tokenizer: Any) -> int:
    """How many template tokens follow the user's content in a formatted prompt.

    Formats a conversation whose content is a sentinel, cuts the text right after it and
    counts the tokens of the rest: generic over chat templates.
    """
    from wbsafe.io.models import format_prompt

    text = format_prompt(tokenizer, _SENTINEL)
    end = text.rfind(_SENTINEL)
    if end < 0:
        raise WbsafeError("the chat template drops the user's content; cannot find positions")
    end += len(_SENTINEL)
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    n_post = len(full) - len(head)
    if n_post < 0 or full[: len(head)] != head:
        raise WbsafeError("cannot separate the template suffix from the user's content")
    return n_post


@dataclass(frozen=True)
class Batch:
    """One tokenised batch: ``input_ids``, ``attention_mask``, ``position_ids`` [batch, pos]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def last_index(self) -> torch.Tensor:
        """Index of each row's last real token, Int[batch] (any padding side)."""
        import torch

        pos = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
        return (self.attention_mask.long() * (pos + 1)).argmax(dim=1)

    def kwargs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def encode(loaded: LoadedModel, texts: Sequence[str], padding_side: str = "left") -> Batch:
    """Tokenise already formatted prompts; position ids come from the attention mask."""
    tok = loaded.tokenizer
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = old
    mask = enc["attention_mask"]
    position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return Batch(
        enc["input_ids"].to(loaded.device),
        mask.to(loaded.device),
        position_ids.to(loaded.device),
    )


def prompt_texts(loaded: LoadedModel, prompts: Sequence[Any]) -> list[str]:
    """Format prompts (``Prompt`` objects, conversations or plain strings) for the model."""
    out: list[str] = []
    for p in prompts:
        conv = p.conversation() if hasattr(p, "conversation") else p
        out.append(loaded.format(conv))
    return out


class _StopForward(Exception):
    """Raised by the hook of the deepest requested site to end the forward pass early."""


def _hidden_out(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _replace_out(output: Any, new: Any) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _module_tree(model: Any) -> list[tuple[Any, str, Any]]:
    """Every ``(parent, child name, child)`` edge of a module tree."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
    ]


@contextlib.contextmanager
def bridged(model: Any) -> Iterator[Any]:
    """A ``TransformerBridge`` around ``model`` (plain or PEFT-wrapped) while inside.

    The bridge wraps the loaded HF modules in place (adapters included); on exit every
    submodule and the attention implementation are put back as they were.
    """
    import copy

    from transformer_lens.model_bridge.sources import build_bridge_from_module

    inner = _unwrap(model)
    tree = _module_tree(inner)
    attn = getattr(inner.config, "_attn_implementation", None)
    try:
        try:
            bridge = build_bridge_from_module(
                inner, type(inner).__name__, hf_config=copy.deepcopy(inner.config)
            )
        except (ValueError, AttributeError) as exc:
            raise WbsafeError(
                f"TransformerLens cannot bridge {type(inner).__name__}: {exc}"
            ) from exc
        if attn is not None and attn != "eager":
            inner.set_attn_implementation("eager")  # the bridge's convention for its hooks
        yield bridge
    finally:
        for parent, name, child in tree:
            parent._modules[name] = child
        if attn is not None and getattr(inner.config, "_attn_implementation", None) != attn:
            inner.set_attn_implementation(attn)


@contextlib.contextmanager
def residual_edit(
    model: Any, edit: Callable[[torch.Tensor], torch.Tensor], layers: Sequence[int] | None = None
) -> Iterator[None]:
    """Apply ``edit`` to the residual stream (Float[batch, pos, d] -> same) while inside.

    With ``layers=None`` the edit is applied everywhere the stream is written: each decoder
    layer's input, what its attention and MLP blocks add (their outputs, or for a family
    that norms a block's output before the add, Gemma's sandwich norms and OLMo 2's, the
    outputs of those norms: the family table's ``post_norms``), and its output. With a list
    of layers it is applied to those layers' inputs only (activation addition). Hooks are
    removed in ``finally``.
    """
    from wbsafe.arch.families import family_of_model

    family = family_of_model(_unwrap(model))
    writes = family.post_norms or (family.attention, family.mlp)
    all_layers = decoder_layers(model)
    handles: list[Any] = []

    def pre_hook(mod: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = edit(kwargs["hidden_states"])
        return args, kwargs

    def out_hook(mod: Any, args: Any, output: Any) -> Any:
        return _replace_out(output, edit(_hidden_out(output)))

    try:
        targets = range(len(all_layers)) if layers is None else layers
        for i in targets:
            layer = all_layers[i]
            handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
            if layers is None:
                handles.append(layer.register_forward_hook(out_hook))
                for sub in writes:
                    module = getattr(layer, sub, None)
                    if module is None:
                        raise WbsafeError(
                            f"decoder layer {i} of a {family.name} model has no {sub}"
                        )
                    handles.append(module.register_forward_hook(out_hook))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Activations:
    """Captured activations: ``acts[site]`` is Float[n_prompts, n_positions, d_model].

    ``positions`` names the second axis; ``prompt_ids`` the first. ``meta`` is free JSON
    (model description, padding side, ...).
    """

    acts: dict[str, torch.Tensor]
    positions: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def get(self, site: str, position: str) -> torch.Tensor:
        """Float[n_prompts, d_model] at one site and position."""
        if site not in self.acts:
            raise WbsafeError(f"site {site} was not captured (have {sorted(self.acts)})")
        if position not in self.positions:
            raise WbsafeError(f"position {position} was not captured (have {self.positions})")
        return self.acts[site][:, self.positions.index(position)]

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file; metadata (JSON) goes in its ``__metadata__``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": ACTIVATIONS_FORMAT,
            "positions": json.dumps(list(self.positions)),
            "prompt_ids": json.dumps(list(self.prompt_ids)),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous().cpu() for k, v in self.acts.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        from safetensors.torch import load_file

        from wbsafe.io.checkpoints import file_metadata, read_header

        path = Path(path)
        read_header(path)
        meta = file_metadata(path)
        if meta.get("format") != ACTIVATIONS_FORMAT:
            raise WbsafeError(
                f"not a wbsafe activations file (format {meta.get('format')!r})", path
            )
        try:
            positions = tuple(json.loads(meta["positions"]))
            ids = tuple(json.loads(meta["prompt_ids"]))
            extra = json.loads(meta["meta"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise WbsafeError("activations file has corrupt metadata", path) from exc
        acts = load_file(str(path))
        for name, t in acts.items():
            if t.ndim != 3 or t.shape[0] != len(ids) or t.shape[1] != len(positions):
                raise WbsafeError(
                    f"tensor {name} has shape {list(t.shape)}, metadata disagree", path
                )
        return cls(acts, positions, ids, extra)


def capture(
    loaded: LoadedModel,
    prompts: Sequence[Any],
    sites: Sequence[str],
    positions: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    padding_side: str = "left",
) -> Activations:
    """Residual-stream activations of ``prompts`` at ``sites`` and ``positions``.

    ``prompts`` are ``Prompt`` objects, conversations or plain user messages (formatted
    with the model's chat template). ``positions`` defaults to every named position. Runs
    through TransformerBridge hooks (:func:`bridged`; with ``loaded.base_only()`` it
    captures the base of an adapter model); the forward pass stops after the deepest
    site. Returns float32 tensors on the CPU (the prompt mean is accumulated in float64
    first).
    """
    import torch

    n_post = post_instruction_length(loaded.tokenizer)
    all_positions = position_names(n_post)
    wanted = tuple(positions) if positions is not None else all_positions
    for p in wanted:
        if p not in all_positions:
            raise WbsafeError(f"unknown position {p!r} (this template has {all_positions})")
    if not sites:
        raise WbsafeError("no activation sites asked for")
    for s in sites:
        layer, _ = parse_site(s)
        if layer >= loaded.n_layers:
            raise WbsafeError(f"site {s} asks for layer {layer}; the model has {loaded.n_layers}")
    texts = prompt_texts(loaded, prompts)
    ids = tuple(getattr(p, "id", f"prompt-{i}") for i, p in enumerate(prompts))
    # offset from the last real token for each token position
    offsets = {f"post{i}": n_post - 1 - i for i in range(n_post)}
    offsets["last_instr"] = n_post
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    model = loaded.model
    state: dict[str, torch.Tensor] = {}

    def reader(site: str) -> Callable[[torch.Tensor], None]:
        def read(hidden: torch.Tensor) -> None:
            # a placed model's layers may sit on other devices than the inputs
            mask, last = state["mask"].to(hidden.device), state["last"].to(hidden.device)
            rows = torch.arange(len(last), device=hidden.device)
            cols = []
            for p in wanted:
                if p == "mean":
                    h = torch.where(mask[..., None], hidden.double(), 0.0)
                    cols.append(h.sum(dim=1) / mask.sum(dim=1, keepdim=True).double())
                else:
                    cols.append(hidden[rows, last - offsets[p]].double())
            chunks[site].append(torch.stack(cols, dim=1).float().cpu())

        return read

    parsed = {s: parse_site(s) for s in sites}
    deepest = max(sites, key=lambda s: (parsed[s][0], parsed[s][1] == "resid_post"))
    readers = {s: reader(s) for s in sites}
    with torch.no_grad(), bridged(model) as bridge:
        missing = [s for s in sites if s not in bridge.hook_dict]
        if missing:
            raise WbsafeError(f"the bridge for this model has no hook point {missing[0]}")
        by_hook = {bridge.hook_dict[s].name: s for s in sites}
        deepest_hook = bridge.hook_dict[deepest].name

        def on_site(tensor: torch.Tensor, *, hook: Any) -> None:
            readers[by_hook[hook.name]](tensor)  # Float[batch, pos, d_model]
            if hook.name == deepest_hook:
                raise _StopForward

        wanted_names = set(sites)
        for start in range(0, len(texts), batch_size):
            batch = encode(loaded, texts[start : start + batch_size], padding_side)
            state["mask"], state["last"] = batch.attention_mask.bool(), batch.last_index
            if bool((state["mask"].sum(dim=1) <= n_post).any()):
                raise WbsafeError("a prompt is shorter than the chat template's suffix")
            try:
                bridge.run_with_hooks(
                    batch.input_ids,
                    fwd_hooks=[(wanted_names.__contains__, on_site)],
                    return_type=None,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
            except _StopForward:
                pass
            else:
                raise WbsafeError(f"the forward pass never reached site {deepest}")
    acts = {s: torch.cat(c, dim=0) for s, c in chunks.items()}
    meta = {"model": loaded.describe(), "padding_side": padding_side, "n_post": n_post}
    return Activations(acts, wanted, ids, meta)
