"""Snapshot capture and restore vs doing the setup again, in one run.

Setup step (the "cold start" a snapshot skips): inside a fresh sandbox, write
FILES files totalling MB megabytes under /srv/data (default 20,000 files /
200 MB, random bytes so nothing is sparse or deduplicated), from Python.

Measured, ROUNDS times each, interleaved:
  scratch  Sandbox.create() -> exec(setup) -> wait: ready from nothing
  capture  sb.snapshot() on the set-up sandbox: wall time of the request, and
           the runner's capture_seconds (how long the sandbox stayed frozen)
  restore  Sandbox.create(snapshot=snap) -> exec(["true"]) -> wait: ready from
           the snapshot (first exec included), plus a check that a file is there

Each storage in --storage gets a private sandlotd started with
``--snapshot-storage <it>`` (erofs: one image file per snapshot; dir: the copy
fallback), and the rounds alternate between them, so both see the same load.

Usage: python bench/snapshot.py [--files 20000] [--mb 200] [--rounds 3]
                                [--storage erofs,dir] [--json]
Targets (issue 4): restore >= 10x faster than scratch; capture < 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SETUP = r"""
import os, sys
files, total = int(sys.argv[1]), int(sys.argv[2])
size = total // files
blob = os.urandom(size + 4096)
for i in range(files):
    d = f"/srv/data/d{i // 500:03d}"
    if i % 500 == 0:
        os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write(blob[i % 4096 : i % 4096 + size])
"""


def one_round(sess, setup_cmd: list[str], last: str, m: dict[str, list[float]]) -> None:
    from sandlot import Sandbox

    t0 = time.perf_counter()
    sb = Sandbox.create(timeout=600, session=sess)
    p = sb.exec(setup_cmd)
    if p.wait() != 0:
        raise SystemExit(f"setup failed: {p.stderr.read()}")
    m["scratch"].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    snap = sb.snapshot()
    m["capture_wall"].append(time.perf_counter() - t0)
    m["capture_frozen"].append(snap.capture_seconds or 0.0)
    sb.terminate()

    t0 = time.perf_counter()
    r = Sandbox.create(snapshot=snap, timeout=600, session=sess)
    rc = r.exec(["true"]).wait()
    m["restore"].append(time.perf_counter() - t0)
    assert rc == 0
    chk = r.exec(["test", "-s", last])
    assert chk.wait() == 0, "restored sandbox is missing the set-up files"
    r.terminate()
    snap.delete()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--storage", default="erofs,dir", help="comma-separated: erofs, dir")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import sandlot
    from _runner import start_runner
    from sandlot import Sandbox

    setup_cmd = ["python3", "-c", SETUP, str(a.files), str(a.mb * 1_000_000)]
    last = f"/srv/data/d{(a.files - 1) // 500:03d}/f{a.files - 1:05d}"
    storages = [x for x in a.storage.split(",") if x]
    runners, sessions, meas = {}, {}, {}
    try:
        for st in storages:
            runners[st] = start_runner("--snapshot-storage", st, prefix="sl-bench-snap-")
            sessions[st] = sandlot.Session(runners[st].url)
            meas[st] = {"scratch": [], "capture_wall": [], "capture_frozen": [], "restore": []}
            # Warm up the runner and the connection.
            with Sandbox.create(session=sessions[st]) as sb:
                sb.exec(["true"]).wait()
        for _ in range(a.rounds):
            for st in storages:
                one_round(sessions[st], setup_cmd, last, meas[st])
    finally:
        for st, runner in runners.items():
            sessions[st].close()
            # Captures whose tree changed during the unfrozen build were
            # built again while frozen: say so (and why) next to the figures.
            for line in runner.stop().splitlines():
                if "building again" in line:
                    print(f"[{st}] {line}")

    out = {"files": a.files, "mb": a.mb, "rounds": a.rounds, "storages": {}}
    for st in storages:
        m = meas[st]
        res = {k + "_s": statistics.median(v) for k, v in m.items()}
        res["speedup"] = res["scratch_s"] / res["restore_s"]
        res["all"] = {k: [round(x, 4) for x in v] for k, v in m.items()}
        out["storages"][st] = res
    save_plots(out)
    if a.json:
        print(json.dumps(out))
        return
    print(f"setup: {a.files} files / {a.mb} MB, {a.rounds} rounds, medians")
    for st in storages:
        res = out["storages"][st]
        print(f"--snapshot-storage {st}")
        print(f"  from scratch (create + setup)        {res['scratch_s'] * 1000:9.1f} ms")
        print(f"  restore (create(snapshot) + exec)    {res['restore_s'] * 1000:9.1f} ms")
        print(f"  speedup                              {res['speedup']:9.1f}x   (target >= 10x)")
        print(f"  capture, request wall time           {res['capture_wall_s'] * 1000:9.1f} ms   (target < 1000 ms)")
        print(f"  capture, sandbox frozen              {res['capture_frozen_s'] * 1000:9.1f} ms")
        for k, v in res["all"].items():
            print(f"    {k:15} {v}")
    del sandlot


def save_plots(out: dict) -> None:
    """bench/out/snapshot.json for bench/plot.py: medians per storage as bars,
    every round's capture and restore times as CDFs."""
    from _out import bars, cdf, save

    plots = []
    for key, title in (("capture_wall_s", "capture, request wall time (ms)"),
                       ("capture_frozen_s", "capture, sandbox frozen (ms)"),
                       ("restore_s", "restore: create(snapshot) + exec (ms)")):
        plots.append(bars(title, {st: r[key] * 1e3 for st, r in out["storages"].items() if key in r}, ylabel="ms"))
    for key in ("capture_wall", "restore"):
        plots.append(cdf(f"{key.replace('_', ' ')}, every round", {st: [x * 1e3 for x in r.get("all", {}).get(key, [])]
                                                                 for st, r in out["storages"].items()}, xlabel="ms"))
    save("snapshot", out, plots)


if __name__ == "__main__":
    main()
