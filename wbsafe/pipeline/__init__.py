"""The scan: from a config to a written report.

``plan`` (which prompts each analysis uses) -> ``models`` (the model pair, loaded once) ->
``stages/`` (one adapter per analysis: run it, build its report sections and gate evidence)
stored by ``store`` (resumable records) -> ``scan`` (orchestration, the gate, report.json);
``caches`` and ``directions_cache`` keep base-side work for later scans; ``fleet`` is
``scan-many``.
"""
