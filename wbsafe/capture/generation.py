"""Batched chat generation for the behavioural benchmark.

Prompts are chat-templated with :meth:`LoadedModel.format`, left-padded, and continued with
Hugging Face ``generate`` (KV cache on). Greedy by default; sampling draws ``n_samples``
continuations per prompt at a temperature, each batch under a seed derived from the run
seed and recorded in every row, so a sampled run can be repeated exactly.

A batch that raises is retried prompt by prompt; a prompt that still fails gets a row with
its error string instead of a response, and the run goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wbsafe.errors import WbsafeError
from wbsafe.progress import Progress, no_progress

if TYPE_CHECKING:
    from wbsafe.data.prompts import Prompt
    from wbsafe.io.models import LoadedModel


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling mode: ``n_samples`` continuations per prompt at ``temperature`` (nucleus ``top_p``)."""

    n_samples: int = 5
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise WbsafeError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.temperature <= 0:
            raise WbsafeError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise WbsafeError(f"top_p must lie in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Generation:
    """One response: prompt ``prompt_id``, sample index ``sample`` (0 when greedy).

    ``seed`` is the torch seed the batch ran under (None when greedy); ``error`` holds the
    exception text when generation failed for this prompt (then ``response`` is "").
    """

    prompt_id: str
    sample: int
    response: str
    n_tokens: int
    seed: int | None = None
    error: str | None = None


def batch_seed(seed: int, batch_index: int) -> int:
    """A reproducible 31-bit seed for one batch of a sampled run."""
    digest = hashlib.sha256(f"wbsafe-gen:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _conversation(prompt: Prompt | str) -> Any:
    return prompt if isinstance(prompt, str) else prompt.conversation()


def _prompt_id(prompt: Prompt | str, i: int) -> str:
    return f"prompt-{i}" if isinstance(prompt, str) else prompt.id


@dataclass(frozen=True)
class BatchOutput:
    """One ``generate`` call's output: a response and its new-token count per row, and the
    prompt tokens the batch held (padding excluded)."""

    responses: list[str]
    new_tokens: list[int]
    prompt_tokens: int


def continue_batch(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
) -> BatchOutput:
    """Continue already formatted ``texts`` in one left-padded batch (KV cache on).

    Greedy without ``sampling``; with it, ``n_samples`` consecutive rows per text, drawn
    under ``torch.manual_seed(seed)``. A response ends at its first special token and is
    stripped. The tokenizer's padding side is put back afterwards.
    """
    import torch

    from wbsafe.arch.families import end_of_turn_ids, try_family_of_model
    from wbsafe.io.placement import input_device

    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    dev = input_device(model)  # layers may sit on other devices (a device map)
    enc = {k: v.to(dev) for k, v in enc.items()}
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
    }
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = sorted(
        {*end_of_turn_ids(try_family_of_model(model), tokenizer),
         *([configured] if isinstance(configured, int) else (configured or ()))}
    )  # fmt: skip
    if stop:  # a chat model ends its turn with its family's token, not only its config's eos
        kwargs["eos_token_id"] = stop
    if sampling is None:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=None,
            num_return_sequences=sampling.n_samples,
        )
        assert seed is not None
        torch.manual_seed(seed)
    with torch.inference_mode():  # token ids only come out: no autograd, no version counts
        out = model.generate(**enc, **kwargs)
    # a response ends at its first special token: a chat model may skip its end-of-turn
    # token and open a turn of its own ("<|im_start|>user ..."), which is not its answer
    specials = {int(i) for i in tokenizer.all_special_ids}
    new_rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        cut = next((k for k, t in enumerate(row) if t in specials), len(row))
        new_rows.append(row[:cut])
    decoded = tokenizer.batch_decode(new_rows, skip_special_tokens=True)
    return BatchOutput(
        responses=[t.strip() for t in decoded],
        new_tokens=[len(row) for row in new_rows],
        prompt_tokens=int(enc["attention_mask"].sum()),
    )


def greedy_continuations(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
    on_batch: Callable[[BatchOutput], None] | None = None,
) -> list[str]:
    """Greedy responses to already formatted ``texts``, in order, ``batch_size`` at a time;
    ``on_batch`` sees each batch's output (for counting model passes)."""
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        got = continue_batch(model, tokenizer, texts[i : i + batch_size], max_new_tokens)
        if on_batch is not None:
            on_batch(got)
        out += got.responses
    return out


def generate(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    progress: Progress = no_progress,
    description: str = "generating",
    prefills: Sequence[str] | None = None,
) -> list[Generation]:
    """Responses to ``prompts`` (``Prompt`` objects or plain user messages), in prompt order.

    Greedy: one row per prompt. Sampling: ``sampling.n_samples`` rows per prompt, sample
    indices 0..n-1, each batch seeded with :func:`batch_seed` (recorded in ``Generation.seed``).
    ``prefills``: text put at the start of each assistant turn (after the chat template's
    generation prompt); the response is what the model writes after it.
    """
    if max_new_tokens < 1:
        raise WbsafeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise WbsafeError(f"batch_size must be >= 1, got {batch_size}")
    formatted = [loaded.format(_conversation(p)) for p in prompts]
    if prefills is not None:
        if len(prefills) != len(prompts):
            raise WbsafeError(f"{len(prefills)} prefills for {len(prompts)} prompts")
        formatted = [f + x for f, x in zip(formatted, prefills, strict=True)]
    m, tok = loaded.model, loaded.tokenizer
    ids = [_prompt_id(p, i) for i, p in enumerate(prompts)]
    n_samples = 1 if sampling is None else sampling.n_samples
    rows: list[Generation] = []
    progress(description, 0, len(prompts))
    for b, start in enumerate(range(0, len(formatted), batch_size)):
        chunk = formatted[start : start + batch_size]
        chunk_ids = ids[start : start + batch_size]
        bseed = None if sampling is None else batch_seed(seed, b)
        try:
            got = continue_batch(m, tok, chunk, max_new_tokens, sampling, bseed)
            for j, pid in enumerate(chunk_ids):
                for s in range(n_samples):
                    k = j * n_samples + s
                    rows.append(Generation(pid, s, got.responses[k], got.new_tokens[k], bseed))
        except Exception:  # a bad prompt must not sink the batch: retry one by one
            for j, (pid, text) in enumerate(zip(chunk_ids, chunk, strict=True)):
                pseed = None if bseed is None else batch_seed(bseed, j)
                try:
                    one = continue_batch(m, tok, [text], max_new_tokens, sampling, pseed)
                    rows += [
                        Generation(pid, s, r, n, pseed)
                        for s, (r, n) in enumerate(zip(one.responses, one.new_tokens, strict=True))
                    ]
                except Exception as exc:  # recorded in the row, never fatal
                    err = f"{type(exc).__name__}: {exc}"
                    rows += [Generation(pid, s, "", 0, pseed, err) for s in range(n_samples)]
        progress(description, min(start + batch_size, len(prompts)), len(prompts))
    return rows
