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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wbsafe.capture.judges import _check_model_dir
    from wbsafe.io.models import (
        MAX_TEMPLATE_CHARS,
        check_weights_match_config,
        quiet_transformers,
        resolve_device,
        resolve_dtype,
    )

    p = _check_model_dir(path, f"{family} judge model")
    check_weights_match_config(p)
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    model: Any
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                str(p),
                dtype=torch_dtype,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
            )
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


def too_long(guard: GuardModel, texts: Sequence[str], room: int) -> list[bool]:
    """Per formatted prompt: would it, plus ``room`` new tokens, overrun the context?"""
    limit = guard.max_tokens
    if limit is None or not texts:
        return [False] * len(texts)
    lengths = [
        len(ids) for ids in guard.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ]
    return [n + room > limit for n in lengths]


def greedy_answers(
    guard: GuardModel, texts: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[tuple[str | None, str | None]]:
    """``(answer, error)`` per formatted prompt: the greedy continuation (left-padded batches,
    ending at the first special token) or why there is none (prompt longer than the judge's
    context, generation failure). A failing batch is retried prompt by prompt."""
    from wbsafe.capture.generation import continue_batch

    if batch_size < 1 or max_new_tokens < 1:
        raise WbsafeError("batch_size and max_new_tokens must be >= 1")
    long = too_long(guard, texts, max_new_tokens)
    out: list[tuple[str | None, str | None]] = [
        (None, f"prompt longer than the judge's {guard.max_tokens}-token context")
        if x
        else ("", None)
        for x in long
    ]
    todo = [i for i, x in enumerate(long) if not x]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        try:
            got = continue_batch(
                guard.model, guard.tokenizer, [texts[i] for i in idx], max_new_tokens
            )
            for i, r in zip(idx, got.responses, strict=True):
                out[i] = (r, None)
        except Exception:  # one bad prompt must not sink the batch: retry one by one
            for i in idx:
                try:
                    one = continue_batch(guard.model, guard.tokenizer, [texts[i]], max_new_tokens)
                    out[i] = (one.responses[0], None)
                except Exception as exc:  # recorded as that row's error, never fatal
                    out[i] = (None, f"judge generation failed: {type(exc).__name__}: {exc}")
    return out


def next_token_logits(guard: GuardModel, texts: Sequence[str], batch_size: int) -> Any:
    """Logits of the token after each formatted prompt: a float32 tensor [len(texts), vocab]
    (left padding, so the last position is every row's own last token)."""
    import torch

    tok = guard.tokenizer
    rows = []
    for start in range(0, len(texts), batch_size):
        old = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(texts[start : start + batch_size]), return_tensors="pt",
                      padding=True, add_special_tokens=False)  # fmt: skip
        finally:
            tok.padding_side = old
        enc = {k: v.to(guard.model.device) for k, v in enc.items() if k != "token_type_ids"}
        with torch.no_grad():
            rows.append(guard.model(**enc).logits[:, -1, :].float().cpu())  # [batch, vocab]
    return torch.cat(rows) if rows else torch.zeros(0, 0)
