"""Weight diff against planted ground truth on tiny synthetic Llama-style checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wbsafe.analyses.weights import (
    diff,
    diff_adapters,
    diff_checkpoints,
    parse_name,
)
from wbsafe.errors import AdapterMismatchError, CheckpointFormatError, WbsafeError

D, FF, V, L = 64, 96, 200, 3
CONFIG = {
    "model_type": "llama",
    "hidden_size": D,
    "num_hidden_layers": L,
    "intermediate_size": FF,
    "vocab_size": V,
    "tie_word_embeddings": False,
}


def make_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    sd = {"model.embed_tokens.weight": torch.randn(V, D, generator=g)}
    for i in range(L):
        p = f"model.layers.{i}."
        for m in ("q", "k", "v", "o"):
            sd[p + f"self_attn.{m}_proj.weight"] = r(D, D)
        sd[p + "mlp.gate_proj.weight"] = r(FF, D)
        sd[p + "mlp.up_proj.weight"] = r(FF, D)
        sd[p + "mlp.down_proj.weight"] = r(D, FF)
        sd[p + "input_layernorm.weight"] = torch.ones(D)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(D)
    sd["model.norm.weight"] = torch.ones(D)
    sd["lm_head.weight"] = r(V, D)
    return sd


def write_ckpt(
    d: Path, sd: dict[str, torch.Tensor], config: dict | None = None, shards: int = 1
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config or CONFIG))
    sd = {k: v.contiguous() for k, v in sd.items()}
    if shards == 1:
        save_file(sd, str(d / "model.safetensors"))
        return d
    keys = list(sd)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s::shards]}
        save_file(part, str(d / name))
        weight_map.update(dict.fromkeys(part, name))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d


def perturb(sd: dict[str, torch.Tensor], scale: float = 1e-3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * v.abs().mean() * torch.randn(v.shape, generator=g) for k, v in sd.items()
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = make_state()
    return write_ckpt(tmp_path_factory.mktemp("base"), sd), sd


def unit(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_parse_name_table() -> None:
    assert parse_name("model.layers.3.self_attn.q_proj.weight") == (3, "q")
    assert parse_name("model.layers.0.mlp.down_proj.weight") == (0, "down")
    assert parse_name("transformer.h.5.attn.c_attn.weight") == (5, "qkv")
    assert parse_name("transformer.h.5.attn.c_proj.weight") == (5, "o")
    assert parse_name("transformer.h.5.mlp.c_proj.weight") == (5, "down")
    assert parse_name("transformer.h.5.mlp.c_fc.weight") == (5, "up")
    assert parse_name("gpt_neox.layers.2.attention.query_key_value.weight") == (2, "qkv")
    assert parse_name("gpt_neox.layers.2.mlp.dense_4h_to_h.weight") == (2, "down")
    assert parse_name("gpt_neox.final_layer_norm.weight") == (None, "final_norm")
    assert parse_name("embed_out.weight") == (None, "lm_head")
    assert parse_name("model.norm.weight") == (None, "final_norm")
    assert parse_name("transformer.wte.weight") == (None, "embed")
    assert parse_name("model.layers.1.post_attention_layernorm.weight") == (1, "post_attn_norm")


def test_rank1_edit_tops_ranking(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    tuned = perturb(sd, 1e-4)
    u, v = unit(D, 10), unit(FF, 11)
    name = "model.layers.1.mlp.down_proj.weight"
    tuned[name] = tuned[name] + 0.5 * torch.outer(u, v)
    res = diff_checkpoints(bdir, write_ckpt(tmp_path / "t", tuned))
    top = res.ranking[0]
    assert (top.layer, top.module) == (1, "down")
    row = res.row(name)
    assert row.stable_rank is not None and row.stable_rank < 1.05
    assert row.energy_top1 is not None and row.energy_top1 > 0.95
    u1, v1 = res.singular_vectors[name]
    assert abs(float(u1 @ u)) >= 0.99 and abs(float(v1 @ v)) >= 0.99
    assert row.cosine is not None and 0.9 < row.cosine < 1.0
    assert not res.missing and not res.extra and not res.shape_changed
    assert len(res.rows) == len(sd)
    payload = res.to_json()
    assert "singular_vectors" not in payload
    json.dumps(payload)
    from wbsafe.report.plots.weights import weight_heatmap

    png = weight_heatmap(res, tmp_path / "heat.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_embedding_rows_beat_global_shrink(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    tuned = dict(sd)
    e = sd["model.embed_tokens.weight"] * 0.9
    planted = [17, 101, 188]
    g = torch.Generator().manual_seed(5)
    for i in planted:
        e[i] = e[i] + 0.3 * sd["model.embed_tokens.weight"][i].norm() * unit(D, 100 + i)
    e = e + 1e-3 * torch.randn(e.shape, generator=g)
    tuned["model.embed_tokens.weight"] = e
    names = {i: f"tok{i}" for i in range(V)}
    res = diff_checkpoints(
        bdir,
        write_ckpt(tmp_path / "t", tuned),
        token_strings=lambda ids: [names[i] for i in ids],
    )
    emb = res.embedding
    assert emb is not None
    assert {t.token_id for t in emb.top[:3]} == set(planted)
    assert emb.top[0].token == f"tok{emb.top[0].token_id}"
    assert emb.top[2].z > 10 * max(abs(emb.top[3].z), 1.0)
    assert abs(emb.global_scale - 0.9) < 0.02
    assert res.unembedding is not None and not res.tied_embeddings


def write_adapter(
    d: Path, mods: dict[str, tuple[torch.Tensor, torch.Tensor]], r: int, alpha: float, **cfg: object
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    conf = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj"]}
    conf.update(cfg)
    (d / "adapter_config.json").write_text(json.dumps(conf))
    sd = {}
    for mod, (b, a) in mods.items():
        sd[f"base_model.model.{mod}.lora_A.weight"] = a.contiguous()
        sd[f"base_model.model.{mod}.lora_B.weight"] = b.contiguous()
    save_file(sd, str(d / "adapter_model.safetensors"))
    return d


def lora_factors(out: int, inp: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(out, r, generator=g), torch.randn(r, inp, generator=g) / 8


FIELDS = ("fro_base", "fro_diff", "rel_diff", "cosine", "max_abs_diff", "stable_rank",
          "energy_top1", "energy_top8", "changed_share")  # fmt: skip


def assert_rows_close(a: object, b: object) -> None:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x == pytest.approx(y, rel=1e-4, abs=1e-7), f
    sa, sb = a.top_singular_values, b.top_singular_values  # type: ignore[attr-defined]
    n = min(len(sa), len(sb))
    assert n >= 2 and sa[:n] == pytest.approx(sb[:n], rel=1e-4, abs=1e-5)


def test_lora_factor_path_equals_dense(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    mods = {
        "model.layers.0.self_attn.q_proj": lora_factors(D, D, 4, 1),
        "model.layers.2.mlp.up_proj": lora_factors(FF, D, 4, 2),
    }
    a1 = write_adapter(tmp_path / "a1", mods, r=4, alpha=8, alpha_pattern={"up_proj": 16})
    mods2 = {"model.layers.0.self_attn.q_proj": lora_factors(D, D, 2, 3)}
    a2 = write_adapter(tmp_path / "a2", mods2, r=2, alpha=4, use_rslora=True)
    merged = dict(sd)
    for mod, (b, a) in mods.items():
        scale = 4.0 if mod.endswith("up_proj") else 2.0  # alpha_pattern: 16 / 4
        merged[mod + ".weight"] = sd[mod + ".weight"] + scale * b @ a
    one = diff(bdir, a1)
    dense = diff_checkpoints(bdir, write_ckpt(tmp_path / "m1", merged))
    assert {r.name for r in one.rows} == {m + ".weight" for m in mods}
    for r in one.rows:
        assert r.source == "lora"
        assert_rows_close(r, dense.row(r.name))
        u_f, v_f = one.singular_vectors[r.name]
        u_d, v_d = dense.singular_vectors[r.name]
        assert abs(float(u_f @ u_d)) > 0.999 and abs(float(v_f @ v_d)) > 0.999
    # stacked: rslora scale alpha/sqrt(r)
    b2, a2f = mods2["model.layers.0.self_attn.q_proj"]
    q = "model.layers.0.self_attn.q_proj.weight"
    merged[q] = merged[q] + (4 / math.sqrt(2)) * b2 @ a2f
    stacked = diff_adapters(bdir, [a1, a2])
    dense2 = diff_checkpoints(bdir, write_ckpt(tmp_path / "m2", merged))
    assert_rows_close(stacked.row(q), dense2.row(q))
    assert len(stacked.row(q).top_singular_values) == 6  # rank 4 + 2: the core is 6 x 6


def test_lora_embedding_rows_from_factors(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    g = torch.Generator().manual_seed(9)
    a = torch.zeros(2, V)  # lora_embedding_A: [r, vocab]
    a[0, 42], a[1, 7] = 3.0, -2.5
    b = torch.randn(D, 2, generator=g)  # lora_embedding_B: [d, r]
    d = tmp_path / "emb"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    save_file(
        {
            "base_model.model.model.embed_tokens.lora_embedding_A": a,
            "base_model.model.model.embed_tokens.lora_embedding_B": b,
        },
        str(d / "adapter_model.safetensors"),
    )
    res = diff_adapters(bdir, [d])
    assert res.embedding is not None
    assert {t.token_id for t in res.embedding.top[:2]} == {42, 7}
    merged = dict(sd)
    merged["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"] + (b @ a).T
    dense = diff_checkpoints(bdir, write_ckpt(tmp_path / "m", merged))
    assert_rows_close(res.row("model.embed_tokens.weight"), dense.row("model.embed_tokens.weight"))
    assert dense.embedding is not None
    assert res.embedding.top[0].residual_rel == pytest.approx(
        dense.embedding.top[0].residual_rel, rel=1e-4
    )


def test_token_strings_from_tokenizer_dir(base: tuple[Path, dict], tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    bdir, sd = base
    tuned = dict(sd)
    e = sd["model.embed_tokens.weight"].clone()
    e[123] = e[123] + 2.0 * unit(D, 7) * e[123].norm()
    tuned["model.embed_tokens.weight"] = e
    tdir = write_ckpt(tmp_path / "t", tuned)
    Tokenizer(WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0")).save(
        str(tdir / "tokenizer.json")
    )
    res = diff_checkpoints(bdir, tdir)
    assert res.embedding is not None
    assert (res.embedding.top[0].token_id, res.embedding.top[0].token) == (123, "w123")


def test_sharded_bf16_prefix_and_reported_lists(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    tuned = perturb(sd, 1e-2)
    single = diff_checkpoints(bdir, write_ckpt(tmp_path / "one", tuned))
    sharded = diff_checkpoints(bdir, write_ckpt(tmp_path / "sh", tuned, shards=3))
    assert [(r.name, r.fro_diff) for r in single.rows] == [
        (r.name, r.fro_diff) for r in sharded.rows
    ] or sorted((r.name, r.fro_diff) for r in single.rows) == sorted(
        (r.name, r.fro_diff) for r in sharded.rows
    )
    # bf16 both sides: unchanged tensors show exactly zero change
    bf_base = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    bf_tuned = dict(bf_base)
    bf_tuned["model.layers.0.mlp.up_proj.weight"] = (
        sd["model.layers.0.mlp.up_proj.weight"] * 1.5
    ).to(torch.bfloat16)
    res = diff_checkpoints(
        write_ckpt(tmp_path / "bb", bf_base), write_ckpt(tmp_path / "bt", bf_tuned)
    )
    assert res.ranking[0].module == "up" and res.ranking[0].layer == 0
    assert res.row("model.norm.weight").fro_diff == 0.0
    assert res.row("model.layers.0.mlp.up_proj.weight").rel_diff == pytest.approx(0.5, rel=1e-2)
    # prefix-differing names, missing / extra / shape-changed / NaN
    odd = {("base_model.model." + k if k.startswith("model.") else k): v for k, v in tuned.items()}
    del odd["base_model.model.model.layers.2.mlp.gate_proj.weight"]
    odd["base_model.model.model.layers.9.extra.weight"] = torch.zeros(3)
    odd["base_model.model.model.layers.1.input_layernorm.weight"] = torch.ones(D + 1)
    nan_t = tuned["model.layers.0.self_attn.k_proj.weight"].clone()
    nan_t[0, 0] = float("nan")
    nan_t[1, 1] = float("inf")
    odd["base_model.model.model.layers.0.self_attn.k_proj.weight"] = nan_t
    res = diff_checkpoints(bdir, write_ckpt(tmp_path / "odd", odd))
    assert res.missing == ["model.layers.2.mlp.gate_proj.weight"]
    assert res.extra == ["base_model.model.model.layers.9.extra.weight"]
    assert [s.base_shape for s in res.shape_changed] == [(D,)]
    assert res.nonfinite == ["base_model.model.model.layers.0.self_attn.k_proj.weight"]
    assert res.row("model.layers.0.self_attn.k_proj.weight").nonfinite_tuned == 2
    q = "model.layers.0.self_attn.q_proj.weight"
    assert res.row(q).fro_diff == pytest.approx(single.row(q).fro_diff, rel=1e-6)


def test_resized_vocab_and_tied(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    tuned = dict(sd)
    g = torch.Generator().manual_seed(3)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        tuned[k] = torch.cat([sd[k], torch.randn(4, D, generator=g)])
    res = diff_checkpoints(bdir, write_ckpt(tmp_path / "t", tuned))
    assert res.embedding is not None and res.embedding.added_rows == [V, V + 1, V + 2, V + 3]
    assert res.row("model.embed_tokens.weight").fro_diff == 0.0
    assert not res.shape_changed
    tied_sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    cfg = {**CONFIG, "tie_word_embeddings": True}
    tb = write_ckpt(tmp_path / "tb", tied_sd, cfg)
    res = diff_checkpoints(tb, write_ckpt(tmp_path / "tt", perturb(tied_sd), cfg))
    assert res.tied_embeddings and res.unembedding is None and res.embedding is not None


def test_bad_inputs(base: tuple[Path, dict], tmp_path: Path) -> None:
    bdir, sd = base
    other = write_ckpt(tmp_path / "other", make_state(), {**CONFIG, "hidden_size": 128})
    with pytest.raises(WbsafeError, match="different architecture"):
        diff_checkpoints(bdir, other)
    # no config, but most shapes differ
    wide = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in sd.items()}
    wd = tmp_path / "wide"
    wd.mkdir()
    save_file(wide, str(wd / "model.safetensors"))
    with pytest.raises(WbsafeError, match="differ in shape"):
        diff_checkpoints(bdir, wd)
    # adapter whose factors do not fit the base tensor
    bad = write_adapter(
        tmp_path / "bad", {"model.layers.0.self_attn.q_proj": lora_factors(D + 8, D, 4, 1)}, 4, 8
    )
    with pytest.raises(AdapterMismatchError, match=r"adapter_model\.safetensors.*q_proj"):
        diff_adapters(bdir, [bad])
    ghost = write_adapter(
        tmp_path / "ghost", {"model.layers.7.self_attn.q_proj": lora_factors(D, D, 4, 1)}, 4, 8
    )
    with pytest.raises(AdapterMismatchError, match="not in the base"):
        diff(bdir, adapters=[ghost])
    # truncated shard
    tdir = write_ckpt(tmp_path / "trunc", perturb(sd), shards=2)
    shard = tdir / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        diff_checkpoints(bdir, tdir)
    with pytest.raises(WbsafeError, match="nothing to diff"):
        diff(bdir)


def test_chunked_reads_equal_whole_tensor(
    base: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row per chunk gives the figures of whole-tensor processing (fp32, bf16 with a
    resized vocabulary, bf16 base vs fp32 tune), and no read is larger than one row."""
    from wbsafe.io import checkpoints

    bdir, sd = base
    tuned = perturb(sd, 1e-3)
    g = torch.Generator().manual_seed(21)
    e = tuned["model.embed_tokens.weight"] * 0.95
    for i in (5, 77, 150):
        e[i] = e[i] + 0.4 * e[i].norm() * unit(D, 200 + i)
    tuned["model.embed_tokens.weight"] = e
    tuned["lm_head.weight"][33] += 0.5 * torch.randn(D, generator=g)
    name = "model.layers.2.mlp.down_proj.weight"
    tuned[name] = tuned[name] + 0.3 * torch.outer(unit(D, 12), unit(FF, 13))
    bf_base = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    bf_tuned = {k: v.to(torch.bfloat16) for k, v in tuned.items()}
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        bf_tuned[k] = torch.cat([bf_tuned[k], torch.randn(3, D, generator=g).to(torch.bfloat16)])
    pairs = [
        (bdir, write_ckpt(tmp_path / "f32", tuned)),
        (write_ckpt(tmp_path / "bfb", bf_base), write_ckpt(tmp_path / "bft", bf_tuned)),
        (write_ckpt(tmp_path / "bfb2", bf_base), write_ckpt(tmp_path / "f32b", tuned)),
    ]
    largest: list[int] = []
    real_read = checkpoints.TensorReader.read

    def spy(self: checkpoints.TensorReader, start: int = 0, stop: int | None = None,
            *args: object, **kw: object) -> torch.Tensor:  # fmt: skip
        largest.append((self.numel if stop is None else stop) - start)
        return real_read(self, start, stop, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints.TensorReader, "read", spy)
    for b, t in pairs:
        largest.clear()
        whole = diff_checkpoints(b, t, chunk_elements=10**9)
        assert max(largest) >= V * D
        largest.clear()
        tiny = diff_checkpoints(b, t, chunk_elements=1)
        assert max(largest) <= FF  # one row of the widest matrix (or one 1-D tensor)
        assert [r.name for r in tiny.rows] == [r.name for r in whole.rows]
        for x, y in zip(tiny.rows, whole.rows, strict=True):
            for f in FIELDS:
                fx, fy = getattr(x, f), getattr(y, f)
                assert (fx is None) == (fy is None), f
                assert fy is None or fx == pytest.approx(fy, rel=1e-5, abs=1e-9), f
            assert x.top_singular_values == pytest.approx(y.top_singular_values, rel=1e-4)
        assert tiny.row(name).stable_rank is not None and tiny.row(name).stable_rank < 1.5
        for rep_t, rep_w in ((tiny.embedding, whole.embedding),
                             (tiny.unembedding, whole.unembedding)):  # fmt: skip
            assert rep_t is not None and rep_w is not None
            assert [r.token_id for r in rep_t.top[:5]] == [r.token_id for r in rep_w.top[:5]]
            assert rep_t.global_scale == pytest.approx(rep_w.global_scale, rel=1e-6)
            for r1, r2 in zip(rep_t.top, rep_w.top, strict=True):
                assert r1.residual_rel == pytest.approx(r2.residual_rel, rel=1e-5, abs=1e-9)
                assert r1.z == pytest.approx(r2.z, rel=1e-4, abs=1e-6)
            assert rep_t.added_rows == rep_w.added_rows
            assert rep_t.added_row_norms == pytest.approx(rep_w.added_row_norms, rel=1e-6)
        assert whole.embedding is not None and {5, 77, 150} <= {
            r.token_id for r in whole.embedding.top[:3]
        }
    assert tiny.row(name).changed_share is not None and tiny.row(name).changed_share > 0.5


def test_worker_count_does_not_change_figures(base: tuple[Path, dict], tmp_path: Path) -> None:
    """Whole tensors go to workers; each is reduced by one thread in the same order."""
    bdir, sd = base
    tdir = write_ckpt(tmp_path / "t", perturb(sd, 1e-2), shards=2)
    one = diff_checkpoints(bdir, tdir, workers=1, chunk_elements=500)
    three = diff_checkpoints(bdir, tdir, workers=3, chunk_elements=500)
    assert one.to_json() == three.to_json()


def test_unchanged_tensor_reads_as_unchanged(base: tuple[Path, dict], tmp_path: Path) -> None:
    """Chunks where nothing moved skip the reductions of dW; the figures stay exact."""
    bdir, sd = base
    tuned = dict(sd)
    name = "model.layers.1.mlp.up_proj.weight"
    w = sd[name].clone()
    w[FF - 1, 3] += 0.5  # one entry, in the last row chunk only
    tuned[name] = w
    res = diff_checkpoints(bdir, write_ckpt(tmp_path / "t", tuned),
                           chunk_elements=D)  # fmt: skip
    row = res.row(name)
    assert row.changed_share == pytest.approx(1 / (FF * D))
    assert row.max_abs_diff == pytest.approx(0.5)
    assert row.fro_diff == pytest.approx(0.5)
    still = res.row("model.layers.0.mlp.up_proj.weight")
    assert (still.fro_diff, still.changed_share, still.max_abs_diff) == (0.0, 0.0, 0.0)
    assert still.cosine == pytest.approx(1.0)


def test_file_truncated_after_its_header_was_read(base: tuple[Path, dict], tmp_path: Path) -> None:
    """A map is never read past the file's end: the reader checks the size when it maps."""
    from wbsafe.io.checkpoints import TensorReader, read_header

    _, sd = base
    tdir = write_ckpt(tmp_path / "t", sd)
    f = tdir / "model.safetensors"
    infos = read_header(f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 64])
    last = max(infos.values(), key=lambda i: i.offset)
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*truncated"):
        TensorReader(last)
