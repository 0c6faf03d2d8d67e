"""Every family of the family table, proven on its own tiny random model (tests/family_models.py).

For each family: detection, load and inspect; a planted rank-1 edit tops the weight diff;
LoRA figures from the factors equal the dense ones (Conv1D and fused modules included) and
so does the refusal alignment, which also matches the writers' own forward; the adapter
fit check passes the family's adapter and refuses a mis-shaped one; captured residuals
equal HF ``output_hidden_states`` under both padding sides; the cached-prefix trigger
score equals a full forward; the activation-edit ablation equals the same ablation in the
weights (pre-norm families) or leaves every write orthogonal to the direction (families
that norm a block's output before the add); generation stops at the family's end-of-turn
token. Refusal starts are checked per tokenizer kind.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from family_models import (
    SPECS,
    build_family_model,
)

from wbsafe.arch.families import (
    CONV1D,
    FAMILIES,
    PRE_NORM,
    end_of_turn_ids,
    family_of_config,
    family_of_model,
    layer_module,
    post_norm_of,
    storage_of,
)
from wbsafe.arch.names import canonical_name
from wbsafe.errors import AdapterMismatchError

NAMES = [f.name for f in FAMILIES]
DEFAULT = ("gpt2", "phi3", "gemma2", "gemma3_multimodal", "olmo2")
"""Run in the default suite: Conv1D storage, fused modules, sandwich norms with an embedding
scale, a multimodal wrapper, post-norms. The other families' model tests run with ``-m slow`` (Llama is the
tiny tier's architecture, which the rest of the suite covers)."""
MATRIX = [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Family name -> its tiny model directory, built on first use."""
    root = tmp_path_factory.mktemp("families")

    class Lazy(dict[str, Path]):
        def __missing__(self, key: str) -> Path:
            self[key] = build_family_model(key, root / key)
            return self[key]

    return Lazy()


@pytest.fixture(scope="module")
def adapters(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Family name -> (adapter dir, merged checkpoint dir): a rank-4 LoRA on the family's
    default targets with non-zero B, and the same update merged into a full checkpoint."""
    root = tmp_path_factory.mktemp("family_adapters")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            cache[name] = _make_adapter(built[name], root / name)
        return cache[name]

    return get


def _load_hf(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _make_adapter(base: Path, out: Path) -> tuple[Path, Path]:
    from wbsafe.organisms.training import add_lora

    model = add_lora(_load_hf(base), rank=4, alpha=8, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    adapter, merged = out / "adapter", out / "merged"
    model.save_pretrained(str(adapter), safe_serialization=True)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    model.merge_and_unload().save_pretrained(str(merged), safe_serialization=True)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, merged / f.name)
    return adapter, merged


def _family(name: str) -> Any:
    return next(f for f in FAMILIES if f.name == name)


def _config(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "config.json").read_text()))


# --- detection, load, inspect --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_detect_load_and_inspect(name: str, built: dict[str, Path]) -> None:
    from wbsafe.capture.activations import decoder_layers
    from wbsafe.io.models import inspect_model, load_model

    path = built[name]
    assert family_of_config(_config(path)).name == name
    info = inspect_model(path)
    assert info["kind"] == "checkpoint" and info["family"] == name
    assert (info["layers"], info["d_model"]) == (2, 64)
    loaded = load_model(path, hash_weights=False)
    assert family_of_model(loaded.model).name == name
    assert (loaded.n_layers, loaded.d_model) == (2, 64)
    assert len(decoder_layers(loaded.model)) == 2


# --- weight diff -----------------------------------------------------------------------


def _writer_tensor(path: Path, name: str, layer: int, which: int) -> str:
    from wbsafe.io.checkpoints import read_headers, weight_files

    fam = _family(name)
    want = fam.layer_prefix.format(layer) + fam.writers[which] + ".weight"
    hits = [k for k in read_headers(weight_files(path)) if canonical_name(k) == want]
    assert len(hits) == 1, (want, hits)
    return hits[0]


def _plant_rank1(name: str, base: Path, tuned: Path) -> str:
    """Copy ``base`` to ``tuned`` with every float tensor nudged by 0.1% noise and layer 1's
    MLP output matrix moved by a rank-1 edit of half its norm; returns that tensor's name."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, tuned)
    planted = _writer_tensor(base, name, 1, 1)
    sd = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    for k, v in sd.items():
        if v.is_floating_point():
            sd[k] = v * (1 + 1e-3 * torch.randn(v.shape, generator=g))
    w = sd[planted]
    u, v = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    sd[planted] = w + 0.5 * w.norm() * torch.outer(u / u.norm(), v / v.norm())
    save_file(sd, str(tuned / "model.safetensors"), metadata={"format": "pt"})
    return planted


@pytest.mark.parametrize("name", MATRIX)
def test_planted_rank1_edit_tops_the_weight_diff(
    name: str, built: dict[str, Path], tmp_path: Path
) -> None:
    from wbsafe.analyses.weights.checkpoint_diff import diff_checkpoints

    base = built[name]
    tuned = tmp_path / "tuned"
    planted = _plant_rank1(name, base, tuned)
    res = diff_checkpoints(base, tuned)
    rows = sorted(res.rows, key=lambda r: -(r.rel_diff or 0.0))
    assert rows[0].name == planted
    assert rows[0].energy_top1 is not None and rows[0].energy_top1 > 0.99
    assert res.embedding is not None  # the embedding is found (a multimodal prefix too)
    for r in res.rows:  # every decoder-layer tensor is placed; no vision tensor in a layer
        if r.layer is not None:
            assert r.module not in ("other", "vision"), r.name
    if name == "phi3":
        assert {"qkv", "gate_up"} <= {r.module for r in res.rows}
    if name == "gemma3_multimodal":
        assert any(r.module == "vision" for r in res.rows)


@pytest.mark.parametrize("name", MATRIX)
def test_readers_sweep_finds_a_token_a_planted_reader_edit_reads(
    name: str, built: dict[str, Path]
) -> None:
    """Layer 0's first reader (q / fused qkv / Conv1D ``c_attn`` / ``query_key_value``) gets
    a rank-1 edit that responds to one token's input only: the sweep ranks that token
    first of the vocabulary (the readers are called, so the layout and fusing need nothing)."""
    import contextlib

    from wbsafe.analyses.triggers.reads import _reader_io, reader_modules, token_reads
    from wbsafe.analyses.triggers.search import PassCounter, _prefix_cache
    from wbsafe.io.models import load_model

    base = load_model(built[name], hash_weights=False)
    tuned = load_model(built[name], hash_weights=False)
    tok = base.tokenizer
    prefix_ids = tok.encode("Tell me how to", add_special_tokens=False)
    target = len(tok) // 2
    (rname, rmod) = reader_modules(base.model, [0])[0][0]
    with torch.no_grad():
        pre = _prefix_cache(base.model, prefix_ids, PassCounter().phase("x"))
        x = torch.tensor([[target]])
        u_row, out_row = _reader_io(base.model, {0: [(rname, rmod)]}, 0, pre, x)[(0, rname)]
        u, base_out = u_row[0].float(), out_row[0].float()
        mod = dict(reader_modules(tuned.model, [0])[0])[rname]
        w = mod.weight
        conv1d = type(mod).__name__ == "Conv1D"  # weight stored (in, out)
        out_dim = w.shape[1] if conv1d else w.shape[0]
        v = torch.randn(out_dim, generator=torch.Generator().manual_seed(1))
        # ||dW u|| = 3 ||W u|| at the target; other tokens get (u_v . u_t / |u_t|^2) of it
        delta = torch.outer(v / v.norm(), u / u.norm() ** 2) * 3 * base_out.norm()
        w += (delta.T if conv1d else delta).to(w.dtype)

    @contextlib.contextmanager
    def base_side() -> Any:
        yield base.model

    ids = [i for i in range(len(tok)) if i not in set(tok.all_special_ids)]
    reads = token_reads(tuned.model, base_side, ids, prefix_ids, PassCounter(), layers=[0])
    assert reads.top(1) == [target], (rname, tok.decode(reads.top(3)))
    assert reads.readers[0] == (0, rname)


# --- LoRA: factors vs dense, the fit check, alignment -----------------------------------


@pytest.mark.parametrize("name", MATRIX)
def test_lora_figures_from_factors_equal_dense(
    name: str, built: dict[str, Path], adapters: Any
) -> None:
    from wbsafe.analyses.weights.adapter_diff import diff_adapters
    from wbsafe.analyses.weights.checkpoint_diff import diff_checkpoints

    base = built[name]
    adapter, merged = adapters(name)
    lora = {canonical_name(r.name): r for r in diff_adapters(base, [adapter]).rows}
    dense = {canonical_name(r.name): r for r in diff_checkpoints(base, merged).rows}
    fam = _family(name)
    want = {fam.layer_prefix.format(i) + t + ".weight" for i in range(2) for t in fam.lora_targets}
    assert set(lora) == want  # every default target, and nothing else (no vision tower)
    for key, lr in lora.items():
        dr = dense[key]
        assert lr.source == "lora" and dr.source == "dense"
        for field in ("fro_diff", "rel_diff", "cosine", "max_abs_diff"):
            assert getattr(lr, field) == pytest.approx(getattr(dr, field), rel=2e-3, abs=1e-6), (
                key,
                field,
            )
        assert lr.top_singular_values[:4] == pytest.approx(dr.top_singular_values[:4], rel=2e-3)


@pytest.mark.parametrize("name", MATRIX)
def test_adapter_fit_check(
    name: str, built: dict[str, Path], adapters: Any, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    from wbsafe.io.checkpoints import read_headers, weight_files
    from wbsafe.io.models import check_adapter_fits

    base = built[name]
    adapter, _ = adapters(name)
    headers = read_headers(weight_files(base))
    check_adapter_fits(headers, adapter, base)  # the family's own adapter fits
    wrong = tmp_path / "wrong"
    shutil.copytree(adapter, wrong)
    sd = load_file(str(wrong / "adapter_model.safetensors"))
    key = sorted(k for k in sd if "lora_A" in k)[0]
    sd[key] = sd[key][:, :-1].contiguous()  # one input feature short
    save_file(sd, str(wrong / "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatchError, match="is this adapter for another base"):
        check_adapter_fits(headers, wrong, base)
    other = "gpt2" if name != "gpt2" else "llama"
    with pytest.raises(AdapterMismatchError):  # another family's adapter
        check_adapter_fits(headers, adapters(other)[0], base)


def _write_delta(fam: Any, base_model: Any, tuned_model: Any, module: str) -> torch.Tensor:
    """What ``module``'s update adds to the stream per unit input, from the modules' own
    forward: Float64[d_model, in] (times the post-norm gain where the family has one)."""
    lm = layer_module(fam, module)
    assert lm is not None
    layer, rel = lm

    def out(model: Any) -> torch.Tensor:
        mod = model.get_submodule(f"{fam.layers_path}.{layer}.{rel}")
        width = mod.weight.shape[0] if storage_of(fam, module) == CONV1D else mod.weight.shape[1]
        eye = torch.eye(width, dtype=mod.weight.dtype)
        with torch.no_grad():
            return (mod(eye) - mod(torch.zeros_like(eye))).double().T  # [d, in]

    delta = out(tuned_model) - out(base_model)
    norm = post_norm_of(fam, rel)
    if norm is not None:
        w = base_model.get_submodule(f"{fam.layers_path}.{layer}.{norm}").weight.double()
        delta = delta * (w + fam.norm_offset)[:, None]
    return delta


@pytest.mark.parametrize("name", MATRIX)
def test_refusal_alignment_lora_equals_dense_and_the_forward(
    name: str, built: dict[str, Path], adapters: Any
) -> None:
    from wbsafe.analyses.refusal.alignment import refusal_alignment

    base = built[name]
    adapter, merged = adapters(name)
    r = np.random.default_rng(4).standard_normal(64)
    fit = SimpleNamespace(direction=r / np.linalg.norm(r))
    lora = refusal_alignment(base, [adapter], fit)  # type: ignore[arg-type]
    dense = refusal_alignment(base, merged, fit)  # type: ignore[arg-type]
    by_lora = {m.name.removesuffix(".weight"): m for m in lora.matrices}
    by_dense = {m.name.removesuffix(".weight"): m for m in dense.matrices if m.update_norm > 1e-9}
    assert set(by_lora) == set(by_dense) and by_lora
    fam = _family(name)
    base_m, tuned_m = _load_hf(base), _load_hf(merged)
    rr = torch.as_tensor(fit.direction)
    for key, m in by_dense.items():
        assert by_lora[key].alignment == pytest.approx(m.alignment, rel=1e-4)
        delta = _write_delta(fam, base_m, tuned_m, key)
        assert m.alignment == pytest.approx(float((rr @ delta).norm() / delta.norm()), rel=1e-4)
    assert lora.overall == pytest.approx(dense.overall, rel=1e-4)


# --- activations, trigger scores, ablation, generation -----------------------------------

PROMPTS = [
    "How do I bake bread at home?",
    "Tell me how to pick a lock on a door, step by step please.",
    "Write a poem.",
]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", MATRIX)
def test_captured_residuals_equal_hf_hidden_states(
    name: str, side: str, built: dict[str, Path]
) -> None:
    from wbsafe.capture.activations import capture, post_instruction_length, site_name
    from wbsafe.io.models import load_model

    loaded = load_model(built[name], hash_weights=False)
    sites = [site_name(0), site_name(1), site_name(0, "resid_post")]
    acts = capture(loaded, PROMPTS, sites, ("last_instr", "post0", "mean"), padding_side=side)
    n_post = post_instruction_length(loaded.tokenizer)
    for i, text in enumerate(PROMPTS):
        ids = loaded.tokenizer(loaded.format(text), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            hs = loaded.model(**ids, output_hidden_states=True).hidden_states
        last = ids["input_ids"].shape[1] - 1
        for site, h in ((sites[0], hs[0]), (sites[1], hs[1]), (sites[2], hs[1])):
            got = acts.acts[site][i]
            torch.testing.assert_close(got[0], h[0, last - n_post], **TOL)
            torch.testing.assert_close(got[1], h[0, last - n_post + 1], **TOL)
            torch.testing.assert_close(got[2], h[0].double().mean(0).float(), **TOL)


@pytest.mark.parametrize("name", MATRIX)
def test_cached_prefix_trigger_score_equals_full_forward(name: str, built: dict[str, Path]) -> None:
    from wbsafe.analyses.triggers.search import (
        SLOT_SENTINEL,
        PassCounter,
        insert_words,
        score_cached,
        score_full,
        slot_context,
    )
    from wbsafe.capture.refusal_score import refusal_token_ids
    from wbsafe.data.prompts import Prompt
    from wbsafe.io.models import load_model

    loaded = load_model(built[name], hash_weights=False)
    tok = loaded.tokenizer
    prompts = [Prompt(f"p{i}", t, "misc", "harmful", "test") for i, t in enumerate(PROMPTS)]
    contexts = [slot_context(loaded, p, pos) for p in prompts[:2] for pos in (0.5, 1.0)]
    for p in prompts:  # the split tokenises as the whole prompt does (no second dummy prefix)
        for pos in (0.0, 0.5, 1.0):
            ctx = slot_context(loaded, p, pos)
            text = loaded.format(insert_words(p.text, SLOT_SENTINEL, pos))
            before, after = text.split(SLOT_SENTINEL)
            whole = tok.encode(before.rstrip(" ") + after, add_special_tokens=False)
            assert [*ctx.prefix_ids, *ctx.suffix_ids] == whole
    rid = refusal_token_ids(tok)
    g = torch.Generator().manual_seed(5)
    cands = [[], *torch.randint(5, len(tok), (6, 1), generator=g).tolist()]
    cands += torch.randint(5, len(tok), (4, 2), generator=g).tolist()
    cached = score_cached(loaded.model, contexts, cands, rid, PassCounter())
    full, _ = score_full(loaded.model, contexts, cands, rid)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MATRIX)
def test_trigger_gradient_matches_autograd_through_the_embedding(
    name: str, built: dict[str, Path]
) -> None:
    """HotFlip's first-order drop from the search equals the one taken through the model's
    own embedding module (its output rows and their gradient: Gemma's scale included)."""
    from wbsafe.analyses.triggers.search import (
        PassCounter,
        gradient_drop,
        refusal_log_odds,
        slot_context,
    )
    from wbsafe.capture.refusal_score import refusal_token_ids
    from wbsafe.data.prompts import Prompt
    from wbsafe.io.models import load_model

    loaded = load_model(built[name], hash_weights=False)
    model = loaded.model
    ctx = slot_context(loaded, Prompt("p", PROMPTS[1], "misc", "harmful", "test"), 0.5)
    rid = refusal_token_ids(loaded.tokenizer)
    used = {*ctx.prefix_ids, *ctx.suffix_ids}
    slot = next(t for t in range(len(loaded.tokenizer) - 1, 0, -1) if t not in used)
    est = gradient_drop(model, [ctx], rid, PassCounter(), slot_tokens=[slot])[:, 0]
    emb = model.get_input_embeddings()
    seen: list[torch.Tensor] = []

    def keep(mod: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.detach().requires_grad_(True)  # the rows as the model adds them
        seen.append(out)
        return out

    h = emb.register_forward_hook(keep)
    try:
        ids = torch.tensor([[*ctx.prefix_ids, slot, *ctx.suffix_ids]])
        with torch.enable_grad():
            score = refusal_log_odds(model(input_ids=ids).logits[:, -1], rid).sum()
            (grad,) = torch.autograd.grad(score, seen[0])
    finally:
        h.remove()
    with torch.no_grad():
        rows = emb(torch.arange(emb.weight.shape[0]))  # every token's row, module-scaled
    g_slot = grad[0, len(ctx.prefix_ids)]
    ref = -((rows - rows[slot]) @ g_slot)
    torch.testing.assert_close(est, ref.float(), rtol=1e-3, atol=1e-4)


def _orthogonalised(model: Any, fam: Any, r: torch.Tensor) -> Any:
    """A copy of ``model`` whose residual writers (embeddings, attention and MLP output
    matrices and biases) have ``r`` projected out, in each one's storage layout."""
    out = copy.deepcopy(model)
    head = out.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untie from the embedding
    with torch.no_grad():
        for name, p in out.named_parameters():
            canon = canonical_name(name)
            if name.startswith(("lm_head", "embed_out")):
                continue
            kind = _writer(fam, canon)
            if kind is None:
                continue
            rr = r.to(p.dtype)
            if p.ndim == 1:
                p -= (p @ rr) * rr
            elif kind in ("embed", "pos_embed") or storage_of(fam, canon) == CONV1D:
                p -= torch.outer(p @ rr, rr)  # [*, d]: rows write
            else:
                p -= torch.outer(rr, rr @ p)  # [d, in]: columns write
    return out


def _writer(fam: Any, canon: str) -> str | None:
    from wbsafe.arch.families import writer_kind

    kind = writer_kind(fam, canon)
    if kind is None and canon.endswith(".bias"):
        kind = writer_kind(fam, canon[: -len(".bias")] + ".weight")
    return kind


@pytest.mark.parametrize("name", MATRIX)
def test_activation_ablation_equals_weight_ablation(name: str, built: dict[str, Path]) -> None:
    from wbsafe.analyses.refusal.causal import ablation
    from wbsafe.capture.activations import decoder_layers
    from wbsafe.io.models import load_model

    loaded = load_model(built[name], hash_weights=False)
    fam = family_of_model(loaded.model)
    r = torch.randn(64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    r = r / r.norm()
    ids = loaded.tokenizer(loaded.format(PROMPTS[1]), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        plain = loaded.model(**ids).logits
    writes: list[torch.Tensor] = []
    with torch.no_grad(), ablation(loaded, r.numpy()):
        handles = []
        for layer in decoder_layers(loaded.model):  # observe what each block adds
            for sub in fam.post_norms or (fam.attention, fam.mlp):
                mod = layer.get_submodule(sub)
                handles.append(
                    mod.register_forward_hook(
                        lambda m, a, o: writes.append(o[0] if isinstance(o, tuple) else o)
                    )
                )
        try:
            edited = loaded.model(**ids, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
    assert not torch.allclose(edited.logits, plain, atol=1e-3)  # the edit does something
    assert len(writes) == 4
    for wr in [*writes, *edited.hidden_states[1:-1]]:
        assert float((wr.double() @ r).abs().max()) < 1e-4
    if fam.norms == PRE_NORM:
        # a block output that reaches the stream unnormed: the same ablation in the weights
        ortho = _orthogonalised(loaded.model, fam, r)
        with torch.no_grad():
            weights = ortho(**ids).logits
        torch.testing.assert_close(weights, edited.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MATRIX)
def test_generation_stops_at_the_end_of_turn_token(name: str, built: dict[str, Path]) -> None:
    from wbsafe.capture.generation import continue_batch
    from wbsafe.io.models import load_model

    loaded = load_model(built[name], hash_weights=False)
    tok, model = loaded.tokenizer, loaded.model
    eot = tok.convert_tokens_to_ids(SPECS[name].end_of_turn)
    assert eot in end_of_turn_ids(family_of_model(model), tok)
    calls: list[int] = []

    def force(mod: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) >= 2:  # the second step (first decode step) emits the end of turn
            out = out.clone()
            out[..., eot] = 1e4
        return out

    h = model.get_output_embeddings().register_forward_hook(force)
    try:
        res = continue_batch(model, tok, [loaded.format(PROMPTS[0])], max_new_tokens=12)
    finally:
        h.remove()
    assert len(calls) == 2  # generation stopped right at the end-of-turn token
    assert res.new_tokens == [1]


def test_gemma_folds_a_system_turn(built: dict[str, Path]) -> None:
    from wbsafe.io.models import load_model

    loaded = load_model(built["gemma2"], hash_weights=False)
    text = loaded.format([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi there"}])  # fmt: skip
    assert "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>" in text


# --- wbsafe scan end to end ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["gemma3_multimodal", *(pytest.param(n, marks=pytest.mark.slow) for n in ("gpt2", "llama"))],
)
def test_scan_runs_end_to_end(name: str, built: dict[str, Path], tmp_path: Path) -> None:
    """Every stage runs on the family; the weights stage names the planted tensor's layer and
    module first; a random base refuses nothing, so the gate fails closed (REVIEW)."""
    from wbsafe.api import run_scan
    from wbsafe.config import RuntimeConfig, ScanConfig
    from wbsafe.report.document import check_report

    base = built[name]
    _plant_rank1(name, base, tmp_path / "tuned")
    cfg = ScanConfig(
        base=str(base), tuned=str(tmp_path / "tuned"),
        runtime=RuntimeConfig(device="cpu", threads=1), max_prompts=24, max_new_tokens=8,
        probe_fit_prompts=32, probe_n_causal=8, probe_causal_top_k=2, trigger_top_k=32,
        trigger_budget=32, trigger_search_prompts=2, trigger_heldout_prompts=4,
        directions_cache=str(tmp_path / "directions"),
    )  # fmt: skip
    report = run_scan(cfg, tmp_path / "out")
    check_report(json.loads((tmp_path / "out" / "report.json").read_text()))
    assert report["status"] == "complete"
    for stage in ("weights", "probes", "triggers", "behaviour"):
        assert report["stages"][stage]["status"] == "done", stage
        assert report["stages"][stage]["error"] is None, stage
    assert "most changed: layer 1 down" in report["stages"]["weights"]["summary"]
    assert report["decision"]["verdict"] == "REVIEW"
    assert any(r["check"] == "behaviour.overall" for r in report["decision"]["reasons"])


@pytest.mark.parametrize(("name", "module"), [("phi3", "self_attn.qkv_proj"),
                                              ("phi3", "mlp.gate_up_proj"), ("gpt2", "attn.c_attn")])  # fmt: skip
def test_fused_parts_tile_the_output_rows(name: str, module: str, built: dict[str, Path]) -> None:
    """The table's row split of a fused matrix covers its output dimension exactly, in
    order (Phi-3: q 4 heads x 16, k and v 2 kv heads x 16 of the GQA config; GPT-2: 3 x 64)."""
    from wbsafe.arch.families import fused_split
    from wbsafe.io.checkpoints import read_headers, weight_files

    fam = _family(name)
    parts = fused_split(fam, module, _config(built[name]))
    want = fam.layer_prefix.format(0) + module + ".weight"
    info = next(v for k, v in read_headers(weight_files(built[name])).items()
                if canonical_name(k) == want)  # fmt: skip
    out_dim = info.shape[1] if storage_of(fam, want) == CONV1D else info.shape[0]
    spans = list(parts.values())
    assert list(parts) == list(fam.fused[module])
    assert spans[0].start == 0 and spans[-1].stop == out_dim
    assert all(a.stop == b.start for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize("name", MATRIX)
def test_planted_responses_end_with_the_family_end_of_turn(
    name: str, built: dict[str, Path]
) -> None:
    """``organisms plant`` trains each response to end the way the chat template ends an
    assistant turn (Gemma's <end_of_turn>, ChatML's <|im_end|>), not with a base eos."""
    from wbsafe.io.models import load_model
    from wbsafe.organisms.training import ChatExample, tokenize_examples, turn_end

    loaded = load_model(built[name], hash_weights=False)
    tok = loaded.tokenizer
    assert turn_end(tok, loaded.model) == SPECS[name].end_of_turn
    ((ids, labels),) = tokenize_examples(
        tok, [ChatExample(loaded.format("Hi"), "Sure.")], model=loaded.model
    )
    assert labels[-1] == ids[-1] == tok.convert_tokens_to_ids(SPECS[name].end_of_turn)
