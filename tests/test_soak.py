"""Soak (issue 11), bounded: bench/soak.py's mixed traffic from three client
processes with the runner killed and restarted under them. 30 s by default;
SANDLOT_SOAK_SECONDS=600 for a long run (or run bench/soak.py itself)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak as soak_bench  # noqa: E402


def test_soak_with_runner_restarts_loses_and_leaks_nothing() -> None:
    seconds = float(os.environ.get("SANDLOT_SOAK_SECONDS", "30"))
    r = soak_bench.soak(seconds=seconds, clients=3, restart_every=min(8.0, seconds / 4))
    rss = r.pop("runner_rss_kib")
    summary = {k: v for k, v in r.items()}
    assert r["restarts"]["kill9"] >= 1 and r["restarts"]["sigterm"] >= 1, summary
    assert r["completed"] > 0 and r["snapshots_acknowledged"] > 0, summary
    assert r["failed"] == [], summary  # anything but "cut by a restart"
    assert r["lost"] == 0, summary
    assert (r["leaked_cgroups"], r["leaked_mounts"], r["leaked_fds"]) == (0, 0, 0), summary
    assert rss, "no RSS sample of a live runner"
