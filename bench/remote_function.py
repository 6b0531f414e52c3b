"""Benchmark: RemoteFunction against ProcessPoolExecutor, default settings.

    python bench/remote_function.py [--runs 7] [--calls 1000] [--n 10000] [--no-tuned] [--ray]

Headline, exactly what the issue (12) measures, with DEFAULT settings on both
sides (``sandlot.function()`` with no options on a runner started with no
flags, as the embedded runner is) and results collected as users do:

1. sync: ``--calls`` sequential ``f.remote(i).result()`` against
   ``ProcessPoolExecutor(1).submit(f, i).result()``;
2. map: ``[r.result() for r in f.map([(i,) for i in range(n)])]`` against
   ``list(ProcessPoolExecutor(2).map(f, range(n), chunksize=500))``.

Each is repeated ``--runs`` times, sandlot and the peer alternating so that
the shared machine's noise hits both; printed: min/median/max of each side
and of the per-pair ratio (sandlot throughput / peer throughput; the targets
are >= 2x for sync and >= 1.5x for map), the load average before and after,
and the cold figures a user also meets with defaults (first call of a new
function: the pool starts empty; first map: the pool grows from one worker).
The peer's pools are warm (created before timing); the literal expression of
the issue, pool start included, is printed beside it.

Beside the headline, not instead of it: a tuned configuration
(``min_workers=2``) unless ``--no-tuned``; Ray with ``--ray`` if importable.
A private sandlotd (no flags: the embedded runner's configuration) is started
with its state in a temp dir, unless SANDLOT_URL is set. ``SANDLOT_DIRECT=0``
measures every call through the runner's HTTP API instead of direct calls to
leased workers (written to bench/out/remote_function_nodirect.json).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import sandlot  # noqa: E402
from _out import bars, cdf, loadavg, save  # noqa: E402
from _runner import PrivateRunner, start_runner  # noqa: E402


def trivial(x):
    return x + 1


def runner_url() -> tuple[PrivateRunner | None, str]:
    """``$SANDLOT_URL`` if set, else a private runner (no flags) started for this run."""
    if os.environ.get("SANDLOT_URL"):
        return None, os.environ["SANDLOT_URL"]
    runner = start_runner()
    return runner, runner.url


def mmm(xs: list[float]) -> list[float]:
    return [min(xs), statistics.median(xs), max(xs)]


def fmt(xs: list[float], unit: str = "", prec: int = 0) -> str:
    lo, med, hi = mmm(xs)
    return f"{med:.{prec}f}{unit} ({lo:.{prec}f}..{hi:.{prec}f})"


def sync_run(call: Callable[[int], Any], calls: int, lat: list[float]) -> float:
    """calls/s of ``calls`` sequential round trips; per-call ms appended to lat."""
    pc = time.perf_counter
    t_start = pc()
    for i in range(calls):
        t0 = pc()
        assert call(i) == i + 1
        lat.append((pc() - t0) * 1e3)
    return calls / (pc() - t_start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--no-tuned", action="store_true", help="skip the min_workers=2 figures")
    ap.add_argument("--ray", action="store_true", help="also measure Ray (if importable)")
    a = ap.parse_args()
    load0 = loadavg()
    print(f"remote_function: default settings, {a.runs} runs, median (min..max); load average {load0}")
    runner, url = runner_url()
    res: dict[str, Any] = {"runs": a.runs, "calls": a.calls, "n": a.n}
    s_lat: list[float] = []
    p_lat: list[float] = []
    s_sync, p_sync, s_map, p_map = [], [], [], []
    items = [(i,) for i in range(a.n)]
    xs = list(range(a.n))
    try:
        sess = sandlot.Session(url)
        f = sandlot.function(session=sess)(trivial)  # defaults: no options at all
        t0 = time.perf_counter()
        assert f.remote(1).result() == 2
        res["cold_first_call_s"] = time.perf_counter() - t0  # registration + first worker start
        t0 = time.perf_counter()
        assert [r.result() for r in f.map(items)][-1] == a.n
        res["first_map_s"] = time.perf_counter() - t0  # the pool has one worker; a second one starts
        pool_issue_t0 = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(2) as pool2:
            out = list(pool2.map(trivial, xs, chunksize=500))
            res["ppe_map_with_pool_start_s"] = time.perf_counter() - pool_issue_t0
        assert out[-1] == a.n
        with concurrent.futures.ProcessPoolExecutor(1) as pool1, concurrent.futures.ProcessPoolExecutor(2) as pool2:
            pool1.submit(trivial, 0).result()
            list(pool2.map(trivial, xs[:1000], chunksize=500))
            for _ in range(100):  # both sides warm
                f.remote(0).result()
                pool1.submit(trivial, 0).result()
            for _ in range(a.runs):
                s_sync.append(sync_run(lambda i: f.remote(i).result(), a.calls, s_lat))
                p_sync.append(sync_run(lambda i: pool1.submit(trivial, i).result(), a.calls, p_lat))
                t0 = time.perf_counter()
                out = [r.result() for r in f.map(items)]
                s_map.append(time.perf_counter() - t0)
                assert out[-1] == a.n
                t0 = time.perf_counter()
                out = list(pool2.map(trivial, xs, chunksize=500))
                p_map.append(time.perf_counter() - t0)
                assert out[-1] == a.n
        res["pool_after"] = [w.get("state") for w in f.info().get("workers", [])]
        f.delete()
        tuned = None
        if not a.no_tuned:
            g = sandlot.function(session=sess, min_workers=2)(trivial)
            g.remote(1).result()
            time.sleep(1.0)  # let the second worker start
            t_sync, t_map, t_lat = [], [], []
            for _ in range(a.runs):
                t_sync.append(sync_run(lambda i: g.remote(i).result(), a.calls, t_lat))
                t0 = time.perf_counter()
                out = [r.result() for r in g.map(items)]
                t_map.append(time.perf_counter() - t0)
            g.delete()
            tuned = {"sync_calls_per_s": mmm(t_sync), "map_s": mmm(t_map)}
        sess.close()
    finally:
        if runner is not None:
            runner.stop()
    sync_ratio = [s / p for s, p in zip(s_sync, p_sync)]
    map_ratio = [p / s for s, p in zip(s_map, p_map)]
    res.update({
        "sync_calls_per_s": {"sandlot": mmm(s_sync), "ppe1": mmm(p_sync)},
        "sync_ratio": mmm(sync_ratio),
        "sync_latency_ms_p50_p99": {"sandlot": [statistics.median(s_lat), sorted(s_lat)[int(len(s_lat) * 0.99)]],
                                    "ppe1": [statistics.median(p_lat), sorted(p_lat)[int(len(p_lat) * 0.99)]]},
        "map_s": {"sandlot": mmm(s_map), "ppe2_chunksize500": mmm(p_map)},
        "map_ratio": mmm(map_ratio),
        "tuned_min_workers_2": tuned,
    })
    print(f"sync, {a.calls} sequential calls, calls/s:")
    print(f"  sandlot f.remote(i).result()                   {fmt(s_sync)}")
    print(f"  ProcessPoolExecutor(1).submit(f, i).result()   {fmt(p_sync)}")
    print(f"  ratio {fmt(sync_ratio, 'x', 2)}   (target >= 2x)")
    print(f"  per call p50/p99: sandlot {res['sync_latency_ms_p50_p99']['sandlot'][0] * 1e3:.0f}/"
          f"{res['sync_latency_ms_p50_p99']['sandlot'][1] * 1e3:.0f} us, "
          f"PPE {res['sync_latency_ms_p50_p99']['ppe1'][0] * 1e3:.0f}/{res['sync_latency_ms_p50_p99']['ppe1'][1] * 1e3:.0f} us")
    print(f"map of {a.n} trivial calls, results collected, ms:")
    print(f"  sandlot [r.result() for r in f.map(items)]      {fmt([x * 1e3 for x in s_map], '', 1)}")
    print(f"  list(ProcessPoolExecutor(2).map(chunksize=500)) {fmt([x * 1e3 for x in p_map], '', 1)}")
    print(f"  ratio (throughput) {fmt(map_ratio, 'x', 2)}   (target >= 1.5x)")
    print(f"  the issue's literal PPE expression, pool start included: {res['ppe_map_with_pool_start_s'] * 1e3:.1f} ms")
    print(f"cold, defaults: first call {res['cold_first_call_s'] * 1e3:.0f} ms (registration + first worker), "
          f"first map {res['first_map_s'] * 1e3:.0f} ms; pool after the runs: {res['pool_after']}")
    if tuned:
        print(f"tuned (min_workers=2), beside the headline: sync {fmt(t_sync)} calls/s, "
              f"map {fmt([x * 1e3 for x in t_map], ' ms', 1)}")
    if a.ray:
        print("ray:", bench_ray(a.calls, a.n))
    print(f"load average: {load0} -> {loadavg()}")
    plots = [
        cdf("sync round trip, per call (defaults)", {"sandlot remote().result()": s_lat,
                                                     "ProcessPoolExecutor(1)": p_lat}, xlabel="ms"),
        bars(f"sync calls/s (ratio {statistics.median(sync_ratio):.2f}x, target 2x)",
             {"sandlot": mmm(s_sync), "PPE(1)": mmm(p_sync),
              **({"sandlot min_workers=2": tuned["sync_calls_per_s"]} if tuned else {})}, ylabel="calls/s"),
        bars(f"map {a.n}: calls/s (ratio {statistics.median(map_ratio):.2f}x, target 1.5x)",
             {"sandlot": mmm([a.n / x for x in s_map]), "PPE(2) cs=500": mmm([a.n / x for x in p_map]),
              **({"sandlot min_workers=2": mmm([a.n / x for x in t_map])} if tuned else {})}, ylabel="calls/s"),
    ]
    # SANDLOT_DIRECT=0 (every call through the runner's HTTP API) is the
    # before/after comparison; it must not overwrite the headline's figures.
    direct = os.environ.get("SANDLOT_DIRECT", "1") != "0"
    res["direct_calls"] = direct
    save("remote_function" if direct else "remote_function_nodirect", res, plots)


def bench_ray(calls: int, n: int) -> str:
    try:
        import ray
    except Exception as exc:  # noqa: BLE001
        return f"not importable: {exc}"
    try:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001
        return f"ray.init() failed: {exc}"
    try:
        rf = ray.remote(trivial)
        ray.get(rf.remote(1))
        lat: list[float] = []
        rate = sync_run(lambda i: ray.get(rf.remote(i)), calls, lat)
        t0 = time.perf_counter()
        ray.get([rf.remote(i) for i in range(n)])
        return f"sync {rate:.0f} calls/s, map {(time.perf_counter() - t0) * 1e3:.0f} ms"
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
