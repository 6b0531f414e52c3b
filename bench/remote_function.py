"""Benchmark: RemoteFunction against ProcessPoolExecutor and Ray, one run.

    python bench/remote_function.py [--seconds 3] [--n 10000] [--no-ray]

1. warm synchronous round trip of a trivial function, calls per second:
   ``f.remote(x).result()`` / ``pool.submit(f, x).result()`` / ``ray.get(f.remote(x))``;
2. ``map`` of N trivial calls, total seconds (ProcessPoolExecutor.map with the
   best of several chunksizes; Ray: ``ray.get([f.remote(x) for x in ...])``).

A private sandlotd is started (unless SANDLOT_URL is set) with its state in a
temp dir. Ray is optional: if it cannot be imported or started, that is
printed and the rest still runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import sandlot  # noqa: E402
from _runner import PrivateRunner, start_runner  # noqa: E402


def trivial(x):
    return x + 1


def runner_url() -> tuple[PrivateRunner | None, str]:
    """``$SANDLOT_URL`` if set, else a private runner started for this run."""
    if os.environ.get("SANDLOT_URL"):
        return None, os.environ["SANDLOT_URL"]
    runner = start_runner()
    return runner, runner.url


def rate(call, seconds: float) -> float:
    for _ in range(200):  # warm up
        call(1)
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(50):
            call(n)
            n += 1
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def bench_sandlot(url: str, seconds: float, n: int) -> tuple[float, float]:
    s = sandlot.Session(url)
    f = sandlot.RemoteFunction(trivial, session=s, min_workers=2)
    assert f.remote(1).result(timeout=60) == 2
    rt = rate(lambda x: f.remote(x).result(), seconds)
    items = [(i,) for i in range(n)]
    assert sandlot.results(f.map(items[:1000])) == [i + 1 for i in range(1000)]  # warm
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = sandlot.results(f.map(items))
        best = min(best, time.perf_counter() - t0)
        assert out[-1] == n
    f.delete()
    s.close()
    return rt, best


def bench_ppe(seconds: float, n: int) -> tuple[float, float, int]:
    workers = os.cpu_count() or 2
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        rt = rate(lambda x: pool.submit(trivial, x).result(), seconds)
        xs = list(range(n))
        best, best_cs = float("inf"), 1
        for cs in (1, 10, 100, 500, 1000, max(1, n // workers)):
            list(pool.map(trivial, xs[:1000], chunksize=cs))
            t0 = time.perf_counter()
            out = list(pool.map(trivial, xs, chunksize=cs))
            dt = time.perf_counter() - t0
            assert out[-1] == n
            if dt < best:
                best, best_cs = dt, cs
    return rt, best, best_cs


def bench_ray(seconds: float, n: int) -> tuple[float, float] | str:
    try:
        import ray
    except Exception as exc:  # noqa: BLE001
        return f"ray not importable: {exc}"
    try:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001
        return f"ray.init() failed: {exc}"
    try:
        rf = ray.remote(trivial)
        assert ray.get(rf.remote(1)) == 2
        rt = rate(lambda x: ray.get(rf.remote(x)), seconds)
        ray.get([rf.remote(i) for i in range(1000)])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = ray.get([rf.remote(i) for i in range(n)])
            best = min(best, time.perf_counter() - t0)
            assert out[-1] == n
        return rt, best
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    runner, url = runner_url()
    try:
        s_rt, s_map = bench_sandlot(url, a.seconds, a.n)
    finally:
        if runner is not None:
            runner.stop()
    p_rt, p_map, p_cs = bench_ppe(a.seconds, a.n)
    r = "skipped (--no-ray)" if a.no_ray else bench_ray(a.seconds, a.n)
    print(f"{'':34}{'sync calls/s':>14}{'map ' + str(a.n) + ' (s)':>16}")
    print(f"{'sandlot RemoteFunction':34}{s_rt:14.0f}{s_map:16.3f}")
    print(f"{'ProcessPoolExecutor (chunksize ' + str(p_cs) + ')':34}{p_rt:14.0f}{p_map:16.3f}")
    if isinstance(r, tuple):
        print(f"{'Ray ' + __import__('ray').__version__:34}{r[0]:14.0f}{r[1]:16.3f}")
        print(f"\nsync: {s_rt / r[0]:.2f}x Ray, {s_rt / p_rt:.2f}x PPE;  "
              f"map: {r[1] / s_map:.2f}x Ray's throughput, {p_map / s_map:.2f}x PPE's")
    else:
        print(f"Ray: {r}")
        print(f"\nsync: {s_rt / p_rt:.2f}x PPE;  map: {p_map / s_map:.2f}x PPE's throughput")


if __name__ == "__main__":
    main()
