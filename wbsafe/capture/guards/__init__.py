"""Guard-model judges (Llama Guard 3, WildGuard, HarmBench classifiers, ShieldGemma) and judge
ensembles, reachable from :func:`wbsafe.capture.judges.make_judge` by spec string:

- ``llamaguard3:DIR``, ``wildguard:DIR``, ``harmbench:DIR``, ``shieldgemma:DIR``: a guard
  model in a local directory (safetensors, no remote code);
- ``ensemble:SPEC+SPEC+...``: a :class:`JudgeEnsemble` of two or more judge specs, e.g.
  ``ensemble:string+llamaguard3:/models/lg3+wildguard:/models/wg``.

The ensemble separator. A POSIX path may hold every character but NUL, so no printable
character is impossible in a path; ``+`` separates sub-specs only where it is followed by a
judge kind (``string``, ``logit``, ``classifier``, ``causal`` or a guard kind) and then ``:``,
``+`` or the end. A ``+`` anywhere else (``/models/a+b``) stays part of the path, so the one
path an ensemble spec cannot name is one containing ``+<kind>:``; build a
:class:`JudgeEnsemble` in Python for that. Ensembles do not nest.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from wbsafe.capture.guards.classifiers import (
    GuardJudgement,
    HarmBenchJudge,
    LlamaGuard3Judge,
    ShieldGemmaJudge,
    WildGuardJudge,
)
from wbsafe.capture.guards.ensemble import (
    DisagreementRow,
    DisagreementSummary,
    EnsembleJudgement,
    JudgeEnsemble,
    PairAgreement,
    summarise_disagreement,
)
from wbsafe.errors import WbsafeError

if TYPE_CHECKING:
    from wbsafe.capture.judges import Judge
    from wbsafe.io.models import LoadedModel

GUARD_JUDGES: dict[str, Any] = {
    "llamaguard3": LlamaGuard3Judge,
    "wildguard": WildGuardJudge,
    "harmbench": HarmBenchJudge,
    "shieldgemma": ShieldGemmaJudge,
}
"""Guard judge classes by spec kind."""

GUARD_KINDS = (*GUARD_JUDGES, "ensemble")
"""The spec kinds this package answers for (``make_judge`` delegates them here)."""

BASE_KINDS = ("string", "logit", "classifier", "causal")
"""The judge kinds of :mod:`wbsafe.capture.judges` an ensemble may name."""

MODEL_KINDS = (*GUARD_JUDGES, "classifier", "causal")
"""Kinds that load a model (the ones an ensemble's ``device`` option is passed to)."""

ENSEMBLE_SEPARATOR = "+"
_SPLIT = re.compile(r"\+(?=(?:" + "|".join((*BASE_KINDS, *GUARD_JUDGES)) + r")(?::|\+|$))")


def split_ensemble_spec(arg: str) -> list[str]:
    """The sub-specs of ``ensemble:ARG`` (see the module docstring for the separator rule)."""
    parts = _SPLIT.split(arg)
    for part in parts:
        kind = part.partition(":")[0]
        if kind not in (*BASE_KINDS, *GUARD_JUDGES):
            raise WbsafeError(
                f"ensemble member {part!r} is not a judge spec (kinds: "
                f"{', '.join((*BASE_KINDS, *GUARD_JUDGES))}; ensembles do not nest)"
            )
    if len(parts) < 2:
        raise WbsafeError(f"ensemble:{arg} names {len(parts)} judge; an ensemble needs two or more")
    return parts


def make_guard_judge(spec: str, loaded: LoadedModel | None = None, **options: Any) -> Judge:
    """A guard judge or an ensemble from its spec string (``KIND:DIR`` or
    ``ensemble:SPEC+SPEC...``); ``options`` go to the judge (for an ensemble, only ``device``,
    passed to its model-backed members)."""
    from wbsafe.capture.judges import make_judge

    kind, _, arg = spec.partition(":")
    if kind in GUARD_JUDGES:
        if not arg:
            raise WbsafeError(f"judge {kind!r} needs a model directory: {kind}:DIR")
        judge: Judge = GUARD_JUDGES[kind](arg, **options)
        return judge
    if kind == "ensemble":
        extra = sorted(set(options) - {"device"})
        if extra:
            raise WbsafeError(f"an ensemble takes only the device option, not {extra}")
        members = []
        for part in split_ensemble_spec(arg):
            sub = options if part.partition(":")[0] in MODEL_KINDS else {}
            members.append(make_judge(part, loaded, **sub))
        return JudgeEnsemble(members)
    raise WbsafeError(f"unknown guard judge {spec!r}; use {', '.join(GUARD_KINDS)}")


__all__ = [
    "GUARD_KINDS",
    "DisagreementRow",
    "DisagreementSummary",
    "EnsembleJudgement",
    "GuardJudgement",
    "HarmBenchJudge",
    "JudgeEnsemble",
    "LlamaGuard3Judge",
    "PairAgreement",
    "ShieldGemmaJudge",
    "WildGuardJudge",
    "make_guard_judge",
    "split_ensemble_spec",
    "summarise_disagreement",
]
