"""The fleet's console line: done / running / failed and an ETA from its own throughput."""

from __future__ import annotations

from wbsafe.pipeline.fleet_progress import FleetProgress, eta_text


def test_progress_counts_and_estimates_from_throughput() -> None:
    now = [100.0]
    lines: list[str] = []
    p = FleetProgress(5, lines.append, clock=lambda: now[0])
    p.finish("kept", error=False, reused=True, started=False)  # re-used: not in the rate
    assert lines[-1].endswith("ETA ?; reused kept")
    p.start("a")
    p.start("b")
    now[0] += 60.0
    p.finish("a", error=False)
    p.finish("b", error=True)
    # 2 scans measured in 60 s, 2 left: 60 s more
    assert lines[-1] == "fleet: 3/5 finished (2 done, 1 failed), 0 running, ETA 1m00s; failed b"
    assert eta_text(3725) == "1h02m" and eta_text(42.4) == "42s" and eta_text(None) == "?"
