"""Triggers: the backdoor trigger hunt, tuned vs base.

- :mod:`.hunt`: :func:`hunt_triggers`, the search from candidates to verified triggers;
- :mod:`.objectives`: what ranks candidates (``refusal``; ``divergence``, target-agnostic);
- :mod:`.divergence`: the tuned-vs-base divergence, exact (cached prefix) and its gradient;
- :mod:`.searcher`: one objective's search (gradient, pool, funnel, phrases, refinement);
- :mod:`.candidates`: candidate sources (gradient, embedding rows, user and built-in lists);
- :mod:`.memorised`: n-grams the tuned model samples from near-empty prompts, not the base;
- :mod:`.funnel`: exact scoring of candidates within the budget (screen, then contrast);
- :mod:`.verify`: held-out verification (generation + the first-words rule, activations);
- :mod:`.results`: the result types (candidates, verifications, coverage);
- :mod:`.search`: slots and slot contexts, gradient ranking, cached-prefix scoring, pass counts.
"""

from wbsafe.analyses.triggers.candidates import builtin_candidates_path, read_candidate_list
from wbsafe.analyses.triggers.hunt import hunt_triggers
from wbsafe.analyses.triggers.results import Candidate, Coverage, TriggerResult, Verification
from wbsafe.analyses.triggers.search import (
    PassCounter,
    Slot,
    place,
    score_cached,
    score_full,
    slot_context,
)

__all__ = [
    "Candidate",
    "Coverage",
    "PassCounter",
    "Slot",
    "TriggerResult",
    "Verification",
    "builtin_candidates_path",
    "hunt_triggers",
    "place",
    "read_candidate_list",
    "score_cached",
    "score_full",
    "slot_context",
]
