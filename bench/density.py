"""Density: how many idle sandboxes one runner holds, and the host memory each costs.

Starts a private runner (its own socket and state dir under a temp dir, so no
user's runner is touched), creates N sandboxes each running ``sleep 3600``
through the public API, and measures, once they all run:

- system: the rise of MemTotal - MemAvailable (everything: runner, inits,
  sleeps, kernel objects) divided by N;
- the breakdown: the runner's RSS growth, each sandbox's init and sleep USS
  (private pages, from /proc/PID/smaps_rollup), and the kernel's share (rise of
  Slab, KernelStack, PageTables, Percpu and Shmem in /proc/meminfo);
- "beyond the program": per-sandbox cost minus what the ``sleep`` itself costs
  (its USS, page tables and one kernel stack), which is what the issue's
  target (< 1 MiB) is about.

In the same run the peer: N raw bubblewrap sandboxes (``bwrap --unshare-all
--die-with-parent --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp sleep
3600``), measured the same way, then torn down. Finally the sandlot sandboxes
are terminated and, once the kernel's deferred freeing is done, the memory that
did not come back is reported (a leak check).

Usage: python bench/density.py [--count 1000] [--json]
The machine is shared: other processes move MemAvailable too, so the breakdown
(which counts only this benchmark's processes, plus kernel totals) is printed
beside the system figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time

from _runner import start_runner

KERNEL_KEYS = ("Slab", "KernelStack", "PageTables", "Percpu", "Shmem")
DETAIL_KEYS = ("SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "Percpu", "Shmem")
KSTACK = 16 * 1024  # one x86_64 kernel stack per task


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def used(m: dict[str, int]) -> int:
    return m["MemTotal"] - m["MemAvailable"]


def kernel(m: dict[str, int]) -> int:
    return sum(m.get(k, 0) for k in KERNEL_KEYS)


def settle() -> dict[str, int]:
    """meminfo after reclaimable slab has had a moment (median of 3 reads)."""
    time.sleep(1.0)
    reads = []
    for _ in range(3):
        reads.append(meminfo())
        time.sleep(0.3)
    reads.sort(key=used)
    return reads[1]


def settle_after_teardown(limit: float = 60.0) -> dict[str, int]:
    """meminfo once the kernel has finished freeing: namespaces and mounts of
    dead sandboxes go in deferred work (cleanup_net, RCU), seconds later. Waits
    until MemTotal - MemAvailable stops falling (under 1 MiB in 2 s), at most
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    last = settle()
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = settle()
        if used(last) - used(now) < (1 << 20):
            return now
        last = now
    return last


def uss(pid: int) -> int:
    """Private (unshared) bytes of a process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total = 0
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
    except OSError:
        return 0


def status_field(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


def bench_sandlot(n: int) -> tuple[dict, object, list]:
    import sandlot

    runner = start_runner(prefix="sl-density-")
    proc, session = runner.proc, sandlot.Session(runner.url)
    # Warm up: first sandbox, cgroup parents, connection pool.
    with sandlot.Sandbox.create(["true"], session=session) as sb:
        sb.wait()
    before = settle()
    rss0 = status_field(proc.pid, "VmRSS")

    def one(_: int) -> sandlot.Sandbox:
        return sandlot.Sandbox.create(["sleep", "3600"], session=session, timeout=3600)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(4) as ex:
        boxes = list(ex.map(one, range(n)))
    create_s = time.perf_counter() - t0
    alive = sum(1 for sb in boxes if sb.poll() is None)
    after = settle()
    rss1 = status_field(proc.pid, "VmRSS")
    inits = children(proc.pid)
    sleeps = [c for i in inits for c in children(i)]
    init_uss = sum(uss(p) for p in inits)
    sleep_uss = sum(uss(p) for p in sleeps)
    sleep_pte = sum(status_field(p, "VmPTE") for p in sleeps)
    res = {
        "count": n,
        "alive": alive,
        "create_seconds": create_s,
        "creates_per_second": n / create_s,
        "system_per_box": (used(after) - used(before)) / n,
        "kernel_per_box": (kernel(after) - kernel(before)) / n,
        "runner_rss_per_box": (rss1 - rss0) / n,
        "init_uss_per_box": init_uss / max(1, len(inits)),
        "sleep_uss_per_box": sleep_uss / max(1, len(sleeps)),
        "program_per_box": (sleep_uss + sleep_pte) / max(1, len(sleeps)) + KSTACK,
        "processes": {"inits": len(inits), "sleeps": len(sleeps)},
        "kernel_detail_per_box": {k: (after.get(k, 0) - before.get(k, 0)) / n for k in DETAIL_KEYS},
    }
    res["accounted_per_box"] = (
        res["kernel_per_box"] + res["runner_rss_per_box"] + res["init_uss_per_box"] + res["sleep_uss_per_box"]
    )
    for k in ("system", "accounted"):
        res[f"{k}_beyond_program_per_box"] = res[f"{k}_per_box"] - res["program_per_box"]
    return res, (runner, session, before), boxes


def teardown_sandlot(state, boxes: list) -> dict:
    runner, _session, before = state
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda sb: sb.terminate(), boxes))
    term_s = time.perf_counter() - t0
    after = settle_after_teardown()
    runner.stop()
    return {
        "terminate_seconds": term_s,
        "left_after_terminate_per_box": (used(after) - used(before)) / len(boxes),
        "kernel_left_after_terminate_per_box": (kernel(after) - kernel(before)) / len(boxes),
        "unreclaimable_left_after_terminate_per_box": (after["SUnreclaim"] - before["SUnreclaim"]) / len(boxes),
    }


def bench_bwrap(n: int) -> dict:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SystemExit("bwrap not found: apt-get install bubblewrap")
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
           "--dev", "/dev", "--tmpfs", "/tmp", "sleep", "3600"]
    before = settle()
    procs = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        # bwrap is ready once its sandboxed sleep exists.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = [c for p in procs for c in children(p.pid)]
            if len(tasks) >= n:
                break
            time.sleep(0.1)
        create_s = time.perf_counter() - t0
        after = settle()
        # bwrap --unshare-pid: bwrap -> bwrap (pid 1 inside) -> sleep.
        outer = [p.pid for p in procs]
        inner = [c for p in outer for c in children(p)]
        sleeps = [c for p in inner for c in children(p)]
        helper_uss = sum(uss(p) for p in outer + inner)
        sleep_uss = sum(uss(p) for p in sleeps)
        sleep_pte = sum(status_field(p, "VmPTE") for p in sleeps)
        res = {
            "count": n,
            "create_seconds": create_s,
            "system_per_box": (used(after) - used(before)) / n,
            "kernel_per_box": (kernel(after) - kernel(before)) / n,
            "bwrap_uss_per_box": helper_uss / n,
            "sleep_uss_per_box": sleep_uss / max(1, len(sleeps)),
            "program_per_box": (sleep_uss + sleep_pte) / max(1, len(sleeps)) + KSTACK,
        }
        res["accounted_per_box"] = res["kernel_per_box"] + res["bwrap_uss_per_box"] + res["sleep_uss_per_box"]
        for k in ("system", "accounted"):
            res[f"{k}_beyond_program_per_box"] = res[f"{k}_per_box"] - res["program_per_box"]
        return res
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def kib(x: float) -> str:
    return f"{x / 1024:8.0f} KiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the runner creates cgroups and namespaces)")
    s, state, boxes = bench_sandlot(args.count)
    try:
        b = bench_bwrap(args.count)  # while the sandlot boxes still run: same machine state
    finally:
        s.update(teardown_sandlot(state, boxes))
    res = {"sandlot": s, "bwrap": b, "ratio_beyond_program": s["accounted_beyond_program_per_box"]
           / max(1.0, b["accounted_beyond_program_per_box"])}
    save_plots(res)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{args.count} idle sandboxes (sleep 3600); sandlot alive: {s['alive']}/{args.count}")
    print(f"  create: sandlot {s['create_seconds']:.1f} s ({s['creates_per_second']:.0f}/s, 4 threads), "
          f"bwrap {b['create_seconds']:.1f} s")
    print(f"  {'per sandbox':32}{'sandlot':>14}{'bwrap':>14}")
    for key, label in (("system_per_box", "system (MemAvailable drop)"),
                       ("accounted_per_box", "accounted (breakdown sum)"),
                       ("kernel_per_box", "  kernel (slab, stacks, ptes)"),
                       ("program_per_box", "  the sleep itself"),
                       ("system_beyond_program_per_box", "beyond the program, system"),
                       ("accounted_beyond_program_per_box", "beyond the program, accounted")):
        print(f"  {label:32}{kib(s[key]):>14}{kib(b[key]):>14}")
    print(f"  sandlot runner RSS {kib(s['runner_rss_per_box'])}, init USS {kib(s['init_uss_per_box'])}; "
          f"bwrap helpers USS {kib(b['bwrap_uss_per_box'])}")
    print("  kernel detail (sandlot): " + ", ".join(f"{k} {v / 1024:.0f} KiB"
                                                   for k, v in s["kernel_detail_per_box"].items()))
    print(f"  after terminate: {kib(s['left_after_terminate_per_box'])} per box not returned "
          f"(kernel {kib(s['kernel_left_after_terminate_per_box'])}, of it unreclaimable slab "
          f"{kib(s['unreclaimable_left_after_terminate_per_box'])}); terminate took {s['terminate_seconds']:.1f} s")


def save_plots(res: dict) -> None:
    """bench/out/density.json for bench/plot.py: memory per sandbox against
    bwrap as bars; a density curve from ``res["curve"]`` when present
    (``{"series name": [[live sandboxes, value], ...]}``, e.g. create p50 ms
    or runner RSS at 1k / 5k / 10k live)."""
    from _out import bars, curve, save

    keys = ("system_per_box", "accounted_per_box", "kernel_per_box", "accounted_beyond_program_per_box")
    plots = [bars(f"{k.replace('_', ' ')} (KiB)", {side: res[side][k] / 1024 for side in ("sandlot", "bwrap")
                                                   if k in res.get(side, {})}, ylabel="KiB") for k in keys]
    if isinstance(res.get("curve"), dict):
        plots.insert(0, curve("density", res["curve"], xlabel="live sandboxes"))
    save("density", res, plots)


if __name__ == "__main__":
    sys.exit(main())
