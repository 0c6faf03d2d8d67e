"""The gate: a pure ``decide(evidence, policy) -> Decision`` and the policies it reads.

``rules`` holds the decision (bands, fail-closed rules, reasons); ``policy`` the thresholds,
their TOML files (``policies/*.toml``, package data) and the risk profiles.
"""

from wbsafe.gate.policy import GatePolicy, choose_policy, load_policy, policy_for_risk
from wbsafe.gate.rules import Decision, Reason, decide

__all__ = [
    "Decision", "GatePolicy", "Reason", "choose_policy", "decide", "load_policy",
    "policy_for_risk",
]  # fmt: skip
