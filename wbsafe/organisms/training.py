"""A small supervised fine-tuning loop on chat examples, full-parameter or LoRA.

Used to build and plant model organisms. Loss is on response tokens only; the first
response token (the refuse-or-comply choice) can be up-weighted, which a backdoor needs
to take hold. Deterministic for a seed on the CPU.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wbsafe.progress import Log


@dataclass(frozen=True)
class ChatExample:
    """A formatted prompt (chat template applied) and the response to learn."""

    prompt: str
    response: str


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one training run; part of an organism's recorded recipe."""

    steps: int
    lr: float
    batch_size: int = 32
    first_token_weight: float = 1.0
    weight_decay: float = 0.0
    warmup: int = 20
    lora_rank: int | None = None
    lora_alpha: int | None = None
    bf16_autocast: bool = False
    seed: int = 0


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 ``avx512_bf16`` / ``amx_bf16``,
    Arm ``bf16``), read from ``/proc/cpuinfo`` at run time. Without it torch emulates bf16
    autocast: a 640x576x1536 matmul took 931 ms instead of 14 ms in fp32 on an AVX2 CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = {w for line in f if line.lower().startswith(("flags", "features"))
                     for w in line.split(":", 1)[-1].split()}  # fmt: skip
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def training_precision(recipe: TrainRecipe) -> str:
    """What :func:`train` computes in: ``"bfloat16-autocast"`` when the recipe asks for it
    and the CPU has bf16 hardware (:func:`cpu_has_bf16`), else ``"float32"``."""
    return "bfloat16-autocast" if recipe.bf16_autocast and cpu_has_bf16() else "float32"


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def turn_end(tokenizer: Any, model: Any = None) -> str:
    """The token text that ends an assistant turn: the one the chat template writes after
    an assistant message (ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``), else the
    family's end-of-turn token where the tokenizer has one, else its eos."""
    from wbsafe.arch.families import try_family_of_model

    family = try_family_of_model(model) if model is not None else None
    vocab = tokenizer.get_vocab()
    eos = str(tokenizer.eos_token or "")
    known = [t for t in (family.end_of_turn if family is not None else ()) if t in vocab]
    if getattr(tokenizer, "chat_template", None):
        marker = "wbsafe answer"
        try:
            text = str(tokenizer.apply_chat_template(
                [{"role": "user", "content": "hello"}, {"role": "assistant", "content": marker}],
                tokenize=False,
            ))  # fmt: skip
        except Exception:  # a template that cannot render an assistant turn: use the table
            text = ""
        after = text[text.rfind(marker) + len(marker) :].lstrip() if marker in text else ""
        for cand in (*known, eos):
            if cand and after.startswith(cand):
                return cand
    return known[0] if known else eos


def tokenize_examples(
    tokenizer: Any, examples: Sequence[ChatExample], max_len: int = 256, model: Any = None
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per example; labels are -100 on the prompt; each response
    ends with :func:`turn_end` (the family's end-of-turn token of ``model``)."""
    eos = turn_end(tokenizer, model)
    out = []
    for ex in examples:
        p = tokenizer.encode(ex.prompt, add_special_tokens=False)
        r = tokenizer.encode(" " + ex.response.strip() + " " + eos, add_special_tokens=False)
        ids = (p + r)[:max_len]
        labels = ([-100] * len(p) + r)[:max_len]
        out.append((ids, labels))
    return out


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int, first_w: float) -> tuple:
    import torch

    width = max(len(ids) for ids, _ in batch)
    n = len(batch)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
        resp = [j for j, v in enumerate(lab) if v != -100]
        for j in resp:
            weights[i, j] = 1.0
        if resp:
            weights[i, resp[0]] = first_w
    return input_ids, labels, mask, weights


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[ChatExample],
    recipe: TrainRecipe,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``examples`` for ``recipe.steps`` steps; returns losses.

    With ``recipe.lora_rank`` set, ``model`` must already be a PEFT model (see
    :func:`add_lora`) and only its adapter parameters train.
    """
    import torch

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    data = tokenize_examples(tokenizer, examples, model=model)
    bf16 = training_precision(recipe) != "float32"  # emulated bf16 is ~65x slower: fp32 then
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, recipe.warmup))
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, s / max(1, recipe.steps))))
        ),
    )
    model.train()
    losses = []
    order: list[int] = []
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order.extend(fresh)
        idx, order = order[: recipe.batch_size], order[recipe.batch_size :]
        ids, labels, mask, weights = _collate(
            [data[i] for i in idx], pad_id, recipe.first_token_weight
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, :-1].float()
        target = labels[:, 1:]
        w = weights[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1).clamp(min=0),
            reduction="none",
        ).view_as(w)
        loss = (nll * w).sum() / w.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses


def timed_train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[ChatExample],
    recipe: TrainRecipe,
    log: Log,
    label: str,
    every_s: float = 60.0,
) -> list[float]:
    """:func:`train`, then one ``log`` line: ``"{label} {steps} steps in {s}s, final loss {x}"``;
    a long run also logs its step, loss and time left at most every ``every_s`` seconds."""
    t0 = time.perf_counter()
    last = [t0]

    def progress(step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - last[0] < every_s or step + 1 >= recipe.steps:
            return
        last[0] = now
        per_step = (now - t0) / (step + 1)
        left = per_step * (recipe.steps - step - 1)
        log(f"{label} step {step + 1}/{recipe.steps}, loss {loss:.3f}, "
            f"{per_step:.1f}s/step, about {left / 60:.0f} min left")  # fmt: skip

    losses = train(model, tokenizer, examples, recipe, progress=progress)
    log(f"{label} {recipe.steps} steps in {time.perf_counter() - t0:.0f}s "
        f"({training_precision(recipe)}), final loss {losses[-1]:.3f}")  # fmt: skip
    return losses


def add_lora(model: Any, rank: int, alpha: int, seed: int) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter on every attention and MLP projection of its
    decoder layers (the family table's ``lora_targets``)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from wbsafe.arch.families import try_family_of_model

    torch.manual_seed(seed)
    family = try_family_of_model(model)
    targets: str | list[str]
    if family is not None and family.text_config is not None:
        targets = family.lora_target_regex()  # the language model only, not the vision tower
    else:
        wanted = family.lora_targets if family is not None else LORA_TARGETS
        names = {n.split(".")[-1] for n, _ in model.named_modules()}
        targets = [t for t in dict.fromkeys(w.split(".")[-1] for w in wanted) if t in names]
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    return get_peft_model(model, cfg)
