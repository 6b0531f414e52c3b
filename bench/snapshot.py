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

Usage: python bench/snapshot.py [--files 20000] [--mb 200] [--rounds 3] [--json]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import sandlot
    from sandlot import Sandbox

    setup_cmd = ["python3", "-c", SETUP, str(a.files), str(a.mb * 1_000_000)]
    last = f"/srv/data/d{(a.files - 1) // 500:03d}/f{a.files - 1:05d}"
    # Warm up the runner and the connection.
    with Sandbox.create() as sb:
        sb.exec(["true"]).wait()

    scratch, capture_wall, capture_frozen, restore = [], [], [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        sb = Sandbox.create(timeout=600)
        p = sb.exec(setup_cmd)
        if p.wait() != 0:
            raise SystemExit(f"setup failed: {p.stderr.read()}")
        scratch.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        snap = sb.snapshot()
        capture_wall.append(time.perf_counter() - t0)
        capture_frozen.append(snap.capture_seconds or 0.0)
        sb.terminate()

        t0 = time.perf_counter()
        r = Sandbox.create(snapshot=snap, timeout=600)
        rc = r.exec(["true"]).wait()
        restore.append(time.perf_counter() - t0)
        assert rc == 0
        chk = r.exec(["test", "-s", last])
        assert chk.wait() == 0, "restored sandbox is missing the set-up files"
        r.terminate()
        snap.delete()

    res = {
        "files": a.files,
        "mb": a.mb,
        "rounds": a.rounds,
        "scratch_s": statistics.median(scratch),
        "capture_wall_s": statistics.median(capture_wall),
        "capture_frozen_s": statistics.median(capture_frozen),
        "restore_s": statistics.median(restore),
    }
    res["speedup"] = res["scratch_s"] / res["restore_s"]
    if a.json:
        print(json.dumps(res))
        return
    print(f"setup: {a.files} files / {a.mb} MB, {a.rounds} rounds, medians")
    print(f"  from scratch (create + setup)        {res['scratch_s'] * 1000:9.1f} ms")
    print(f"  restore (create(snapshot) + exec)    {res['restore_s'] * 1000:9.1f} ms")
    print(f"  speedup                              {res['speedup']:9.1f}x   (target >= 10x)")
    print(f"  capture, request wall time           {res['capture_wall_s'] * 1000:9.1f} ms")
    print(f"  capture, sandbox frozen              {res['capture_frozen_s'] * 1000:9.1f} ms   (target < 1000 ms)")
    print(f"  all: scratch {[round(x, 3) for x in scratch]} restore {[round(x, 4) for x in restore]}")
    print(f"       capture wall {[round(x, 3) for x in capture_wall]} frozen {[round(x, 3) for x in capture_frozen]}")
    del sandlot


if __name__ == "__main__":
    main()
