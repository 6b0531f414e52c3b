"""Density at scale: create latency and the runner's own memory at 1k / 5k / 10k
idle sandboxes, in one runner, with default settings.

A private runner (default flags, but ``--max-sandboxes`` above the largest
step) is filled with idle sandboxes (``Sandbox.create()``, no command: init
waiting) by 4 client threads. At each step it measures, with that many live:

- p50 / p90 create latency: ROUNDS sequential ``Sandbox.create()`` ->
  ``terminate()`` of one more sandbox (create timed alone, results collected
  as users do), so the count stays at the step;
- the runner's RSS (VmRSS of sandlotd) and its growth per sandbox;
- MemAvailable of the host.

Issue 12's target: create p50 at 10k <= 2x create p50 at 1k (no O(n) work on
the request path). The peer in the same run is the 1k step itself (the ratio
is printed), and raw bubblewrap's cost for one sandbox at the same moment
(``bwrap ... true``), so machine load shows.

The machine is shared: the run stops early (and says so) when MemAvailable
falls below --min-avail-gib, and everything is torn down at the end
(the runner's SIGTERM kills and reaps every sandbox and removes its state dir).

Usage: python bench/density_scale.py [--steps 1000,5000,10000] [--rounds 50]
                                     [--min-avail-gib 6] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import shutil
import statistics
import subprocess
import sys
import time

from _runner import start_runner


def avail_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1)))))]


def bwrap_ms(n: int = 10) -> float:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return float("nan")
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
           "--dev", "/dev", "--tmpfs", "/tmp", "true"]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        if subprocess.run(cmd, stderr=subprocess.DEVNULL).returncode == 0:
            out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3 if out else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="1000,5000,10000")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--min-avail-gib", type=float, default=6.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    steps = sorted(int(s) for s in args.steps.split(","))
    import sandlot

    runner = start_runner("--max-sandboxes", str(steps[-1] + 100), prefix="sl-density-scale-")
    session = sandlot.Session(runner.url)
    boxes: list[sandlot.Sandbox] = []
    rows = []
    stopped = None
    load0 = open("/proc/loadavg").read().split()[0]
    t_start = time.monotonic()
    try:
        # Warm up (the pool learns this client's mount set).
        sandlot.Sandbox.create(session=session).terminate()
        rss0 = rss_mib(runner.proc.pid)
        with cf.ThreadPoolExecutor(4) as ex:
            for step in steps:
                while len(boxes) < step:
                    if avail_gib() < args.min_avail_gib:
                        stopped = f"MemAvailable below {args.min_avail_gib} GiB at {len(boxes)} sandboxes"
                        break
                    n = min(200, step - len(boxes))
                    boxes += list(ex.map(lambda _: sandlot.Sandbox.create(session=session, timeout=3600), range(n)))
                if stopped:
                    break
                lat = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    sb = sandlot.Sandbox.create(session=session)
                    lat.append(time.perf_counter() - t0)
                    sb.terminate()
                row = {
                    "live": len(boxes),
                    "create_p50_ms": pct(lat, 50) * 1e3,
                    "create_p90_ms": pct(lat, 90) * 1e3,
                    "runner_rss_mib": rss_mib(runner.proc.pid),
                    "runner_kib_per_sandbox": (rss_mib(runner.proc.pid) - rss0) * 1024 / max(1, len(boxes)),
                    "bwrap_p50_ms": bwrap_ms(),
                    "mem_avail_gib": avail_gib(),
                    "loadavg": float(open("/proc/loadavg").read().split()[0]),
                    "elapsed_s": time.monotonic() - t_start,
                }
                rows.append(row)
                if not args.json:
                    print(f"  {row['live']:6d} live: create p50 {row['create_p50_ms']:6.2f} ms  "
                          f"p90 {row['create_p90_ms']:6.2f} ms  runner RSS {row['runner_rss_mib']:7.1f} MiB "
                          f"({row['runner_kib_per_sandbox']:.2f} KiB/sandbox)  bwrap p50 {row['bwrap_p50_ms']:.2f} ms  "
                          f"MemAvailable {row['mem_avail_gib']:.1f} GiB  load {row['loadavg']}", flush=True)
    finally:
        t0 = time.monotonic()
        runner.stop(timeout=600)
        teardown = time.monotonic() - t0
    res = {"steps": rows, "stopped_early": stopped, "loadavg_start": float(load0), "teardown_s": teardown}
    if len(rows) >= 2:
        res["p50_ratio_last_to_first"] = rows[-1]["create_p50_ms"] / rows[0]["create_p50_ms"]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    if stopped:
        print(f"  stopped early: {stopped}")
    if "p50_ratio_last_to_first" in res:
        print(f"  create p50 at {rows[-1]['live']} / at {rows[0]['live']}: "
              f"{res['p50_ratio_last_to_first']:.2f}x (target <= 2x)")
    print(f"  teardown (runner SIGTERM: kill, reap, remove all): {teardown:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
