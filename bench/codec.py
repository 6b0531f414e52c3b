"""Codec: sandlot._core.packb/unpackb against msgpack-python and orjson.

    python bench/codec.py [--runs 7] [--min-time 0.05]

Typical payloads of calls and API bodies: a nested record (dict of str,
int, float, lists and dicts, ~2 KiB), lists of 1 KiB and 1 MiB (ints, floats,
short strs), a 1 MiB list of small records (what map() ships), and a dict
holding 1 MiB of bytes. Each operation is timed ``--runs`` times (each run
as many calls as fill ``--min-time``); printed: the median calls/s of each
side and the median (min..max) over the runs of the ratio sandlot / peer (the
sides take turns within each run; target >= 1.5x). orjson cannot
encode bytes, so it has no figure for that payload. Default settings on every
side: ``msgpack.packb(x)`` / ``msgpack.unpackb(b)``, ``orjson.dumps(x)`` /
``orjson.loads(b)``; sandlot's decoder checks its input against the protocol
limits (depth, size, counts) first, as it always does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from _out import bars, loadavg, save  # noqa: E402

from sandlot import _core  # noqa: E402


def payloads() -> dict[str, Any]:
    record = {
        "id": 123456789, "name": "sandbox-runner-eu-west", "active": True, "score": 0.8731,
        "tags": ["fast", "isolated", "linux", "python", "c"],
        "owner": {"login": "alice", "uid": 1000, "groups": ["dev", "ops"], "quota": 12.5},
        "limits": {"cpu": 2.0, "memory": 536870912, "pids": 256, "disk": None},
        "history": [{"t": 1700000000 + i, "event": f"exec-{i}", "ms": i * 0.37, "ok": i % 3 != 0}
                    for i in range(24)],
    }

    def mixed(nbytes: int) -> list[Any]:
        out: list[Any] = []
        i = 0
        while len(out) * 6 < nbytes:  # ~6 bytes of msgpack per item on average
            out += [i * 7919, i * 0.25, f"k{i % 997}"]
            i += 1
        return out

    records = [{"i": i, "name": f"item-{i}", "value": i * 1.5, "ok": True} for i in range(30000)]
    return {
        "record ~2KiB": record,
        "list 1KiB": mixed(1 << 10),
        "list 1MiB": mixed(1 << 20),
        "records 1MiB": records,
        "bytes 1MiB": {"name": "blob", "data": bytes(range(256)) * 4096},
    }


def calibrate(fn: Callable[[], Any], min_time: float) -> int:
    """How many calls fill about min_time."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / 4 or n > 1 << 20:
            return max(1, int(n * min_time / max(dt, 1e-9)))
        n *= 4


def timeit(sides: dict[str, Callable[[], Any]], runs: int, min_time: float) -> dict[str, list[float]]:
    """calls per second per side, one figure per run; the sides take turns
    within each run, so the shared machine's load hits them alike."""
    ns = {s: calibrate(fn, min_time) for s, fn in sides.items()}
    out: dict[str, list[float]] = {s: [] for s in sides}
    for _ in range(runs):
        for s, fn in sides.items():
            n = ns[s]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[s].append(n / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05)
    a = ap.parse_args()
    import msgpack
    import orjson

    load0 = loadavg()
    print(f"codec: median calls/s of {a.runs} runs; ratio sandlot/peer per run, median (min..max)")
    print(f"load average at start: {load0}")
    results: dict[str, Any] = {}
    plots = []
    for name, obj in payloads().items():
        packed = _core.packb(obj)
        assert _core.unpackb(packed) == msgpack.unpackb(packed) == obj or name.startswith("bytes")
        assert msgpack.unpackb(msgpack.packb(obj)) == _core.unpackb(packed)
        try:
            jb: bytes | None = orjson.dumps(obj)
        except TypeError:
            jb = None
        ops = {
            "encode": {"sandlot": lambda: _core.packb(obj), "msgpack": lambda: msgpack.packb(obj),
                       "orjson": (lambda: orjson.dumps(obj)) if jb is not None else None},
            "decode": {"sandlot": lambda: _core.unpackb(packed), "msgpack": lambda: msgpack.unpackb(packed),
                       "orjson": (lambda: orjson.loads(jb)) if jb is not None else None},
        }
        results[name] = {"msgpack_bytes": len(packed), "json_bytes": len(jb) if jb is not None else None}
        for op, sides in ops.items():
            figs = timeit({side: fn for side, fn in sides.items() if fn is not None}, a.runs, a.min_time)
            # Ratio per run (the sides ran back to back), then min/median/max.
            pair = {p: [x / y for x, y in zip(figs["sandlot"], figs[p])] for p in figs if p != "sandlot"}
            ratios = {p: statistics.median(v) for p, v in pair.items()}
            results[name][op] = {"calls_per_s": {s: [min(v), statistics.median(v), max(v)] for s, v in figs.items()},
                                 "ratio": ratios, "ratio_min_median_max": {p: [min(v), statistics.median(v), max(v)]
                                                                          for p, v in pair.items()}}
            line = "  ".join(f"{s} {statistics.median(v):9.0f}" for s, v in figs.items())
            rtxt = ", ".join(f"{statistics.median(v):.2f}x {p} ({min(v):.2f}..{max(v):.2f})" for p, v in pair.items())
            print(f"{name:14} {op:6} {line}   -> {rtxt}")
            plots.append(bars(f"{name} {op}: calls/s\n(sandlot " + ", ".join(f"{r:.2f}x {p}" for p, r in ratios.items()) + ")",
                              {s: [min(v), statistics.median(v), max(v)] for s, v in figs.items()}, ylabel="calls/s"))
    print(f"load average at end: {loadavg()}")
    save("codec", results, plots)


if __name__ == "__main__":
    main()
