"""Behaviour: the behavioural refusal benchmark, base vs tuned on the same prompts.

- :mod:`.benchmark`: runs both models (generation or the logit score), judges the rows;
- :mod:`.results`: the records (rows, per-model rates, comparisons, ``BehaviourResult``);
- :mod:`.paired`: paired tests and band calls against the gate edges (pure);
- :mod:`.sampling`: sampled refusal probabilities, edge cases, the spread over seeds (pure);
- :mod:`.evidence`: the gate's behaviour evidence from the paired calls.
"""

from wbsafe.analyses.behaviour.benchmark import run_behaviour
from wbsafe.analyses.behaviour.evidence import behaviour_evidence, over_refusal_evidence
from wbsafe.analyses.behaviour.paired import analyse_pairs, band_calls, interval_width_curve
from wbsafe.analyses.behaviour.results import BehaviourResult, ResponseRow
from wbsafe.analyses.behaviour.sampling import majority, sampling_summary, seed_spread

__all__ = [
    "BehaviourResult",
    "ResponseRow",
    "analyse_pairs",
    "band_calls",
    "behaviour_evidence",
    "interval_width_curve",
    "majority",
    "over_refusal_evidence",
    "run_behaviour",
    "sampling_summary",
    "seed_spread",
]
