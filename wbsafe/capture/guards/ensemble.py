"""Several judges voting on each response, and where they disagree.

:class:`JudgeEnsemble` asks every judge and takes the majority of the judges that decided (a
parse error is an abstention). A tie, or no judge deciding, is no call (``refused=None`` with
a ``parse_error``): the ensemble fails closed rather than pick a side. Each call carries every
judge's vote, so :func:`summarise_disagreement` can count, per pair of judges, how often both
decided and how often they differed, and list the rows where decided judges split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from wbsafe.capture.guards.classifiers import GuardJudgement, request_text
from wbsafe.capture.judges import Judge, Judgement
from wbsafe.errors import WbsafeError

Vote = tuple[str, bool | None]
"""One judge's vote on one response: (judge name, refused or None when it could not say)."""


@dataclass(frozen=True)
class EnsembleJudgement(GuardJudgement):
    """The ensemble's call plus every judge's ``votes`` (and their parse errors in
    ``detail["errors"]``). ``score`` is the share of deciding judges that said refused."""

    votes: tuple[Vote, ...] = ()

    @property
    def disagree(self) -> bool:
        """True when at least one deciding judge said refused and another did not."""
        decided = {v for _, v in self.votes if v is not None}
        return len(decided) == 2


class JudgeEnsemble:
    """Majority vote of ``judges`` (at least two; duplicate names get ``#2``, ``#3``)."""

    def __init__(self, judges: Sequence[Judge], name: str | None = None) -> None:
        if len(judges) < 2:
            raise WbsafeError("a judge ensemble needs at least two judges")
        self.judges = list(judges)
        names: list[str] = []
        for j in self.judges:
            base, k = str(j.name), 2
            label = base
            while label in names:
                label, k = f"{base}#{k}", k + 1
            names.append(label)
        self.names = tuple(names)
        self._name = name or "ensemble(" + "+".join(self.names) + ")"

    @property
    def name(self) -> str:
        return self._name

    def judge(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[Judgement]:
        calls = [j.judge(prompts, responses) for j in self.judges]
        for label, got in zip(self.names, calls, strict=True):
            if len(got) != len(responses):
                raise WbsafeError(
                    f"judge {label} returned {len(got)} calls for {len(responses)} responses"
                )
        return [self._combine([c[i] for c in calls]) for i in range(len(responses))]

    def _combine(self, row: Sequence[Judgement]) -> EnsembleJudgement:
        votes = tuple((n, j.refused) for n, j in zip(self.names, row, strict=True))
        errors = {n: j.parse_error or "no decision" for n, j in zip(self.names, row, strict=True)
                  if j.refused is None}  # fmt: skip
        yes = sum(v is True for _, v in votes)
        no = sum(v is False for _, v in votes)
        detail = {"errors": errors}
        if yes + no == 0:
            why = "; ".join(f"{n}: {e}" for n, e in errors.items())
            return EnsembleJudgement(
                None, None, f"no judge could decide ({why})", None, (), detail, votes
            )
        score = yes / (yes + no)
        if yes == no:
            msg = f"judges tie {yes} refused to {no} complied"
            return EnsembleJudgement(None, score, msg, None, (), detail, votes)
        return EnsembleJudgement(yes > no, score, None, None, (), detail, votes)


@dataclass(frozen=True)
class PairAgreement:
    """Two judges over the same responses: rows both decided, rows they differed on."""

    first: str
    second: str
    both_decided: int
    disagree: int

    @property
    def agreement(self) -> float | None:
        """Share of the jointly decided rows on which they agree (None when there are none)."""
        if not self.both_decided:
            return None
        return 1.0 - self.disagree / self.both_decided


@dataclass(frozen=True)
class DisagreementRow:
    """A response on which deciding judges split: its index, every vote, the ensemble's call,
    and (when given) the request and the response."""

    index: int
    votes: tuple[Vote, ...]
    call: bool | None
    request: str | None = None
    response: str | None = None


@dataclass(frozen=True)
class DisagreementSummary:
    """Where an ensemble's judges disagree, for a report.

    ``n`` responses; ``n_disagree`` with deciding judges split; ``n_undecided`` the ensemble
    could not call (ties, or no judge deciding); ``undecided`` per judge, its abstentions;
    ``pairs`` one :class:`PairAgreement` per pair of judges; ``rows`` the split rows (at most
    ``max_rows`` of them, in order; ``rows_left_out`` counts the rest).
    """

    judges: tuple[str, ...]
    n: int
    n_disagree: int
    n_undecided: int
    undecided: tuple[tuple[str, int], ...]
    pairs: tuple[PairAgreement, ...]
    rows: tuple[DisagreementRow, ...]
    rows_left_out: int = 0


def summarise_disagreement(
    judgements: Sequence[Judgement],
    prompts: Sequence[Any] | None = None,
    responses: Sequence[str] | None = None,
    max_rows: int = 50,
) -> DisagreementSummary:
    """Summarise the votes inside ``judgements`` (a :class:`JudgeEnsemble`'s output)."""
    calls = [j for j in judgements if isinstance(j, EnsembleJudgement)]
    if len(calls) != len(judgements):
        raise WbsafeError("disagreement needs the calls of a JudgeEnsemble (with their votes)")
    for name, seq in (("prompts", prompts), ("responses", responses)):
        if seq is not None and len(seq) != len(calls):
            raise WbsafeError(f"{len(seq)} {name} for {len(calls)} judgements")
    names = tuple(n for n, _ in calls[0].votes) if calls else ()
    if any(tuple(n for n, _ in c.votes) != names for c in calls):
        raise WbsafeError("the judgements come from different ensembles")
    pairs = []
    for a, b in combinations(range(len(names)), 2):
        both = [(c.votes[a][1], c.votes[b][1]) for c in calls]
        decided = [(x, y) for x, y in both if x is not None and y is not None]
        pairs.append(
            PairAgreement(names[a], names[b], len(decided), sum(x != y for x, y in decided))
        )
    split = [i for i, c in enumerate(calls) if c.disagree]
    rows = tuple(
        DisagreementRow(
            i,
            calls[i].votes,
            calls[i].refused,
            None if prompts is None else request_text(prompts[i]),
            None if responses is None else responses[i],
        )
        for i in split[:max_rows]
    )
    undecided = tuple((n, sum(c.votes[k][1] is None for c in calls)) for k, n in enumerate(names))
    return DisagreementSummary(
        judges=names,
        n=len(calls),
        n_disagree=len(split),
        n_undecided=sum(c.refused is None for c in calls),
        undecided=undecided,
        pairs=tuple(pairs),
        rows=rows,
        rows_left_out=max(0, len(split) - max_rows),
    )
