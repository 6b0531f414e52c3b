"""Benchmark: sandlot through a 3-node local Ray cluster vs one runner, one run.

    python bench/cluster.py [--creates 20] [--n 10000] [--rounds 5]

Both sides run in the same process, on the same machine, with default settings:

* one runner: a private ``sandlotd`` on a unix socket (what a single-host
  user gets);
* the cluster: ``ray.cluster_utils.Cluster`` with a head and two more nodes
  (one CPU each), a ``sandlotd`` per node started by sandlot's Ray actors,
  reached through ``Session(cluster="ray")``.

Measured, alternating between the two sides round by round:

1. create latency: ``Sandbox.create(["sleep", "60"])`` returning (median
   and p90 of ``--creates`` creates, default 30; each sandbox is terminated afterwards,
   outside the timing). Target: cluster <= 1.5x one runner.
2. ``map`` of N trivial calls (``x + 1``), results collected as users do
   (``[r.result() for r in f.map(items)]``), on warm pools; median of
   ``--rounds``. Target: cluster throughput >= 0.8x one runner's.

All nodes share this machine's cores, so the cluster cannot be faster here;
the figures show the overhead of routing and of spreading over three pools.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import sandlot  # noqa: E402
from _runner import start_runner  # noqa: E402


def inc(x):
    return x + 1


def create_latency(sess: sandlot.Session, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = sandlot.Sandbox.create(["sleep", "60"], session=sess)
        out.append(time.perf_counter() - t0)
        sb.terminate()
    return out


def map_seconds(fn: sandlot.RemoteFunction, n: int) -> float:
    items = [(i,) for i in range(n)]
    t0 = time.perf_counter()
    res = [r.result() for r in fn.map(items)]
    dt = time.perf_counter() - t0
    assert res == [i + 1 for i in range(n)]
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=30)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        print('ray is not installed: pip install "sandlot[ray]"')
        return 2
    load0 = open("/proc/loadavg").read().strip()
    node = dict(num_cpus=1, object_store_memory=100 << 20, include_dashboard=False)
    single = start_runner()
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for _ in range(2):
        cluster.add_node(**node)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    state = tempfile.mkdtemp(prefix="sl-bench-cluster-", dir="/var/tmp")
    csess = None
    try:
        t0 = time.perf_counter()
        csess = sandlot.Session(cluster="ray", state_root=state)
        print(f"cluster: {len(csess.runners)} runners ready in {time.perf_counter() - t0:.1f} s "
              f"(after Ray's own start)")
        ssess = sandlot.Session(single.url)
        sides = {"one runner": ssess, "cluster": csess}
        fns = {k: sandlot.function(inc, session=s) for k, s in sides.items()}
        for f in fns.values():  # warm every pool
            map_seconds(f, 2000)
        create_latency(ssess, 3)
        create_latency(csess, 3)
        lat: dict[str, list[float]] = {k: [] for k in sides}
        maps: dict[str, list[float]] = {k: [] for k in sides}
        per = max(1, args.creates // args.rounds)
        for _ in range(args.rounds):
            for k, s in sides.items():
                lat[k] += create_latency(s, per)
                maps[k].append(map_seconds(fns[k], args.n))
        print(f"loadavg at start: {load0}")
        for k in sides:
            p50 = statistics.median(lat[k])
            p90 = sorted(lat[k])[int(0.9 * (len(lat[k]) - 1))]
            m = statistics.median(maps[k])
            print(f"{k:>10}: create p50 {p50 * 1e3:7.1f} ms  p90 {p90 * 1e3:7.1f} ms   "
                  f"map {args.n}: median {m:.3f} s ({args.n / m:,.0f} calls/s; all {', '.join(f'{x:.3f}' for x in maps[k])})")
        c50, s50 = statistics.median(lat["cluster"]), statistics.median(lat["one runner"])
        cm, sm = statistics.median(maps["cluster"]), statistics.median(maps["one runner"])
        print(f"ratios: create latency cluster/one = {c50 / s50:.2f}x (target <= 1.5x); "
              f"map throughput cluster/one = {sm / cm:.2f}x (target >= 0.8x)")
        print(f"loadavg at end: {open('/proc/loadavg').read().strip()}")
        for f in fns.values():
            f.delete()
    finally:
        if csess is not None:
            csess.shutdown(timeout=60)
        ray.shutdown()
        cluster.shutdown()
        single.stop()
        import shutil

        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("SANDLOT_URL", None)
    sys.exit(main())
