"""Loading a guard model from a local directory and running it: greedy answers, batched and
left-padded, and the next-token distribution at the end of a prompt.

Safety, as for every model wbsafe loads: the directory is checked by
:func:`wbsafe.capture.judges._check_model_dir` (config without remote code, safetensors only)
and its headers against the config (:func:`wbsafe.io.models.check_weights_match_config`),
then transformers loads it with ``use_safetensors=True`` and ``trust_remote_code=False``.
The guard judges build their prompts themselves, so the tokenizer's chat template is never
rendered: it is kept as text (to recognise the family and variant) and removed from the
tokenizer. That is also why a real ShieldGemma loads here although its template, which needs
a ``guideline`` variable, fails :func:`wbsafe.io.models.load_tokenizer`'s sample render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wbsafe.errors import WbsafeError


@dataclass
class GuardModel:
    """A loaded guard: model, tokenizer (chat template removed), the template's text (None
    when it had none), its directory and device."""

    model: Any
    tokenizer: Any
    path: Path
    template: str | None
    device: str

    @property
    def max_tokens(self) -> int | None:
        """The context length the config states (None when it states none)."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None


def load_guard_model(
    path: str | Path, family: str, device: str = "auto", dtype: str = "auto"
) -> GuardModel:
    """Load the guard model at ``path`` (local only); errors name ``path`` and ``family``."""
    from transformers import AutoTokenizer

    from wbsafe.capture.judges import _check_model_dir
    from wbsafe.io.models import (
        MAX_TEMPLATE_CHARS,
        check_weights_match_config,
        pretrained_causal_lm,
        resolve_device,
        resolve_dtype,
    )

    p = _check_model_dir(path, f"{family} judge model")
    check_weights_match_config(p)
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    model: Any
    try:
        model = pretrained_causal_lm(p, torch_dtype)
        tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WbsafeError(f"cannot load the {family} judge: {exc}", p) from exc
    template = getattr(tok, "chat_template", None)
    if template is not None and (
        not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS
    ):
        raise WbsafeError(f"{family} judge: chat template refused (not text, or oversized)", p)
    tok.chat_template = None  # never rendered: the judges write their own prompts
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        raise WbsafeError(f"{family} judge: tokenizer has neither a pad nor an eos token", p)
    model.to(where)
    model.eval()
    model.requires_grad_(False)
    return GuardModel(model, tok, p, template, where)


def require_single_tokens(guard: GuardModel, tokens: Sequence[str], family: str) -> list[int]:
    """The id of each of ``tokens``, each of which must encode to exactly one token (the
    family's special tokens, answer words); otherwise a WbsafeError naming the directory."""
    ids = []
    for t in tokens:
        got = guard.tokenizer.encode(t, add_special_tokens=False)
        if len(got) != 1 or got[0] == guard.tokenizer.unk_token_id:
            how = "unknown to it" if len(got) == 1 else f"it splits into {len(got)} tokens"
            raise WbsafeError(
                f"not a {family} tokenizer: {t!r} is not one token of its vocabulary ({how})",
                guard.path,
            )
        ids.append(int(got[0]))
    return ids


def too_long(
    guard: GuardModel, texts: Sequence[str], room: int, add_special_tokens: bool = False
) -> list[bool]:
    """Per formatted prompt: would it, plus ``room`` new tokens, overrun the context?"""
    limit = guard.max_tokens
    if limit is None or not texts:
        return [False] * len(texts)
    enc = guard.tokenizer(list(texts), add_special_tokens=add_special_tokens)
    return [len(ids) + room > limit for ids in enc["input_ids"]]


def encode_left(guard: GuardModel, texts: Sequence[str], add_special_tokens: bool) -> Any:
    """One left-padded batch on the model's device (``add_special_tokens``: let the tokenizer
    put its own BOS in front, for formats published as text without it)."""
    tok = guard.tokenizer
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True,
                  add_special_tokens=add_special_tokens)  # fmt: skip
    finally:
        tok.padding_side = old
    return {k: v.to(guard.model.device) for k, v in enc.items() if k != "token_type_ids"}


def _generate(
    guard: GuardModel, texts: Sequence[str], max_new_tokens: int, add_special_tokens: bool
) -> list[str]:
    """Greedy continuations of one batch, each cut at its first special token, stripped."""
    import torch

    enc = encode_left(guard, texts, add_special_tokens)
    tok = guard.tokenizer
    with torch.no_grad():
        out = guard.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
    specials = {int(i) for i in tok.all_special_ids}
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():  # [batch, new tokens]
        cut = next((k for k, t in enumerate(row) if t in specials), len(row))
        rows.append(row[:cut])
    return [t.strip() for t in tok.batch_decode(rows, skip_special_tokens=True)]


def greedy_answers(
    guard: GuardModel,
    texts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = False,
) -> list[tuple[str | None, str | None]]:
    """``(answer, error)`` per formatted prompt: the greedy continuation (left-padded batches,
    ending at the first special token) or why there is none (prompt longer than the judge's
    context, generation failure). A failing batch is retried prompt by prompt."""
    if batch_size < 1 or max_new_tokens < 1:
        raise WbsafeError("batch_size and max_new_tokens must be >= 1")
    long = too_long(guard, texts, max_new_tokens, add_special_tokens)
    too = f"prompt longer than the judge's {guard.max_tokens}-token context"
    out: list[tuple[str | None, str | None]] = [(None, too) if x else ("", None) for x in long]
    todo = [i for i, x in enumerate(long) if not x]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        try:
            got = _generate(guard, [texts[i] for i in idx], max_new_tokens, add_special_tokens)
            for i, r in zip(idx, got, strict=True):
                out[i] = (r, None)
        except Exception:  # one bad prompt must not sink the batch: retry one by one
            for i in idx:
                try:
                    out[i] = (
                        _generate(guard, [texts[i]], max_new_tokens, add_special_tokens)[0],
                        None,
                    )
                except Exception as exc:  # recorded as that row's error, never fatal
                    out[i] = (None, f"judge generation failed: {type(exc).__name__}: {exc}")
    return out


def next_token_logits(guard: GuardModel, texts: Sequence[str], batch_size: int) -> Any:
    """Logits of the token after each formatted prompt: a float32 tensor [len(texts), vocab]
    (left padding, so the last position is every row's own last token)."""
    import torch

    rows = []
    for start in range(0, len(texts), batch_size):
        enc = encode_left(guard, texts[start : start + batch_size], add_special_tokens=False)
        with torch.no_grad():
            rows.append(guard.model(**enc).logits[:, -1, :].float().cpu())  # [batch, vocab]
    return torch.cat(rows) if rows else torch.zeros(0, 0)
