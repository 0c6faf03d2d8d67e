"""Running a loaded model and reading what it does.

- ``activations``: residual-stream capture through TransformerBridge hooks, and activation edits.
- ``generation``: batched greedy or seeded sampled continuations, cut at the end of turn.
- ``refusal_score``: the first-token refusal log-odds (no generation).
- ``judges``: response -> refused / answered (string rules, the logit score, local judge models),
  and a judge measured against human labels.
- ``recovery``: a refusal anywhere in a continuation (refusal depth: did a prefilled model turn
  back?).
"""
