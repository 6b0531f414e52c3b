"""Where a benchmark leaves its raw figures: ``bench/out/<name>.json``, which
``bench/plot.py`` turns into ``bench/plots/<name>.png``.

A benchmark calls :func:`save` once at the end with its results and the
plots it wants; the file also records what makes a figure comparable (the
command line, the date, ``/proc/loadavg`` before and after, the machine)::

    from _out import save, cdf, bars, curve
    save("codec", results, plots=[
        bars("encode, MB/s", {"sandlot": [lo, med, hi], "msgpack": [...]}, ylabel="MB/s"),
        cdf("sync round trip", {"sandlot": samples_ms, "ppe": samples_ms}, xlabel="ms"),
        curve("create p50 vs live", {"sandlot": [[1000, 5.1], [5000, 5.3]]}, xlabel="live", ylabel="ms"),
    ])

Plot kinds (drawn by plot.py, one panel each, all panels of a benchmark in
one PNG): ``cdf`` (latency distributions: raw samples per series), ``bars``
(one value or ``[min, median, max]`` per label; the error bar spans min..max),
``curve`` (``[[x, y], ...]`` per series).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"
_LOAD_AT_START = open("/proc/loadavg").read().strip()
_STARTED = time.strftime("%Y-%m-%d %H:%M:%S %Z")


def loadavg() -> str:
    """``/proc/loadavg`` now (1, 5, 15 minute averages, runnable/total, last pid)."""
    with open("/proc/loadavg") as f:
        return f.read().strip()


#: A CDF keeps at most this many samples per series (evenly spaced order
#: statistics of all of them: the same curve, a JSON file of a few KiB).
CDF_POINTS = 1000


def _quantiles(xs: list[float]) -> list[float]:
    xs = sorted(xs)
    if len(xs) > CDF_POINTS:
        step = (len(xs) - 1) / (CDF_POINTS - 1)
        xs = [xs[round(i * step)] for i in range(CDF_POINTS)]
    return [float(f"{x:.4g}") for x in xs]


def cdf(title: str, series: dict[str, list[float]], *, xlabel: str = "ms") -> dict[str, Any]:
    """A CDF panel: samples per series (kept as up to CDF_POINTS quantiles)."""
    return {"kind": "cdf", "title": title, "xlabel": xlabel, "n": {k: len(v) for k, v in series.items()},
            "series": {k: _quantiles(v) for k, v in series.items()}}


def bars(title: str, values: dict[str, Any], *, ylabel: str = "", note: str = "") -> dict[str, Any]:
    """A bar panel: ``label -> value`` or ``label -> [min, median, max]``."""
    return {"kind": "bars", "title": title, "ylabel": ylabel, "values": values, "note": note}


def curve(title: str, series: dict[str, list[list[float]]], *, xlabel: str = "", ylabel: str = "") -> dict[str, Any]:
    """A line panel: ``[[x, y], ...]`` per series."""
    return {"kind": "curve", "title": title, "xlabel": xlabel, "ylabel": ylabel, "series": series}


def save(name: str, results: Any, plots: list[dict[str, Any]] | None = None) -> Path:
    """Write ``bench/out/<name>.json``; returns its path. Never raises for a
    full disk or a read-only checkout: the benchmark's printed figures are
    what matters, the JSON is for the plots."""
    doc = {
        "name": name,
        "command": " ".join([os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else name, *sys.argv[1:]]),
        "started": _STARTED,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": _LOAD_AT_START,
        "loadavg_end": loadavg(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "results": results,
        "plots": plots or [],
    }
    path = OUT_DIR / f"{name}.json"
    try:
        OUT_DIR.mkdir(exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        tmp.replace(path)
    except OSError as exc:
        print(f"(could not write {path}: {exc})", file=sys.stderr)
    return path
