"""Sandbox start-up latency: sandlot vs raw bubblewrap, side by side in one run.

sandlot round: Sandbox.create() -> exec("true") -> wait -> terminate, through the
public Python API against the local runner (created on demand). Every sandbox is
hardened (seccomp profile, reduced capabilities, no_new_privs, masks); a second
sandlot side also sets every resource limit (cgroup cpu/memory/pids and a
size-capped writable layer), so "hardening and limits on" is measured too.
bwrap round: `bwrap --unshare-all --die-with-parent --ro-bind / / --proc /proc
--dev /dev --tmpfs /tmp true`, the floor for "new namespaces + run a process".

Default settings throughout: the runner as ``sandlotd`` starts by default
(``--pool 2``: default creates are served by pre-set-up sandboxes, docs/architecture.md)
and ``Sandbox.create()`` with no arguments, results collected as users do
(``exec(...).wait()``).

Usage: python bench/sandbox_latency.py [--rounds 200] [--repeat 3] [--json]
Prints p50/p99 for sandlot, sandlot with limits and bwrap, the ratios to bwrap's
p50 (issue 12 target: <= 1.0x, and sandlot p99 <= 2x its own p50), then the same
sandlot round with ``network={"egress": "all"}`` (veth pair, address, nftables
elements; no packet is sent). With --repeat N the whole measurement runs N
times and the ratios are summarised as min/median/max, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


# The "limits on" side: every cgroup limit and the size-capped writable layer.
LIMITS = {"cpu": 1.0, "memory": "256Mi", "pids": 256, "disk": "256Mi"}


def bench_sandlot(rounds: int, **create: object) -> list[float]:
    import sandlot

    # Warm up: start the runner and the connection.
    with sandlot.Sandbox.create(**create) as sb:
        sb.exec(["true"]).wait()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sb = sandlot.Sandbox.create(**create)
        rc = sb.exec(["true"]).wait()
        sb.terminate()
        out.append(time.perf_counter() - t0)
        assert rc == 0, rc
    return out


def bench_bwrap(rounds: int) -> list[float]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SystemExit("bwrap not found: apt-get install bubblewrap")
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
           "--dev", "/dev", "--tmpfs", "/tmp", "true"]
    for _ in range(5):  # warm-up, retried like the timed runs below
        if subprocess.run(cmd).returncode == 0:
            break
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        # bwrap --ro-bind / / fails when a mount under / vanishes while it
        # copies the tree (a disk-limited sandbox's tmpfs going away, another
        # helper's mounts): such a run is dropped, not timed.
        if subprocess.run(cmd).returncode != 0:
            continue
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # A private runner unless SANDLOT_URL names one: never the user's own.
    runner = None
    if not os.environ.get("SANDLOT_URL"):
        from _runner import start_runner

        runner = start_runner(prefix="sl-bench-lat-")
        os.environ["SANDLOT_URL"] = runner.url
    runs = []
    try:
        for i in range(args.repeat):
            load = open("/proc/loadavg").read().split()[0]
            res = measure(args.rounds)
            res["loadavg"] = float(load)
            runs.append(res)
            report(res, args.json)
    finally:
        if runner is not None:
            runner.stop()
    if len(runs) > 1:
        summary(runs, args.json)
    # Raw seconds of every run, for the CDFs (not printed).
    last = {k: v for k, v in runs[-1].items() if k != "_samples"}
    save_plots(last | {"samples": {k: sum((r["_samples"][k] for r in runs), []) for k in runs[-1]["_samples"]}})


def summary(runs: list[dict], as_json: bool) -> None:
    def mmm(key: str) -> tuple[float, float, float]:
        xs = [r[key] for r in runs]
        return min(xs), statistics.median(xs), max(xs)

    keys = ["ratio_p50", "p99_over_p50", "limits_ratio_p50", "sandlot_p50_ms", "bwrap_p50_ms"]
    if as_json:
        print(json.dumps({k: mmm(k) for k in keys} | {"runs": len(runs)}, indent=2))
        return
    print(f"summary over {len(runs)} runs (min / median / max), load average at start "
          f"{', '.join(str(r['loadavg']) for r in runs)}:")
    for k, label, target in (("ratio_p50", "sandlot p50 / bwrap p50", "target <= 1.0"),
                             ("p99_over_p50", "sandlot p99 / own p50", "target <= 2.0"),
                             ("limits_ratio_p50", "with limits / bwrap p50", ""),
                             ("sandlot_p50_ms", "sandlot p50 ms", ""),
                             ("bwrap_p50_ms", "bwrap p50 ms", "")):
        lo, med, hi = mmm(k)
        print(f"  {label:26s} {lo:7.2f} {med:7.2f} {hi:7.2f}  {target}")


def save_plots(res: dict) -> None:
    """bench/out/sandbox_latency.json for bench/plot.py: p50/p99 bars, and
    CDFs when ``res["samples"]`` holds the raw seconds per side."""
    from _out import bars, cdf, save

    sides = sorted({k[: -len("_p50_ms")] for k in res if k.endswith("_p50_ms")})
    plots = [bars(f"{q} latency, ms (create -> exec true -> wait -> terminate)",
                  {s: res[f"{s}_{q}_ms"] for s in sides if f"{s}_{q}_ms" in res}, ylabel="ms")
             for q in ("p50", "p99")]
    if isinstance(res.get("samples"), dict):
        plots.insert(0, cdf("create -> exec true -> wait -> terminate",
                            {k: [x * 1e3 for x in v] for k, v in res["samples"].items()}, xlabel="ms"))
    save("sandbox_latency", res, plots)


def measure(rounds: int) -> dict:
    # Interleave in blocks so machine noise hits both sides alike.
    s, lim, b, net = [], [], [], []
    block = max(1, rounds // 10)
    while len(s) < rounds:
        n = min(block, rounds - len(s))
        s += bench_sandlot(n)
        lim += bench_sandlot(n, resources=LIMITS)
        b += bench_bwrap(n)
        net += bench_sandlot(n, network={"egress": "all"})
    res = {
        "rounds": rounds,
        "sandlot_p50_ms": pct(s, 50) * 1e3,
        "sandlot_p99_ms": pct(s, 99) * 1e3,
        "sandlot_mean_ms": statistics.mean(s) * 1e3,
        "limits_p50_ms": pct(lim, 50) * 1e3,
        "limits_p99_ms": pct(lim, 99) * 1e3,
        "bwrap_p50_ms": pct(b, 50) * 1e3,
        "bwrap_p99_ms": pct(b, 99) * 1e3,
        "bwrap_mean_ms": statistics.mean(b) * 1e3,
        "egress_all_p50_ms": pct(net, 50) * 1e3,
        "egress_all_p99_ms": pct(net, 99) * 1e3,
    }
    res["ratio_p50"] = res["sandlot_p50_ms"] / res["bwrap_p50_ms"]
    res["p99_over_p50"] = res["sandlot_p99_ms"] / res["sandlot_p50_ms"]
    res["limits_ratio_p50"] = res["limits_p50_ms"] / res["bwrap_p50_ms"]
    res["_samples"] = {"sandlot": s, "sandlot+limits": lim, "bwrap": b}
    return res


def report(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in res.items() if k != "_samples"}, indent=2))
        return
    print(f"sandbox latency, {res['rounds']} rounds (create -> exec true -> wait -> terminate)")
    print(f"  sandlot  p50 {res['sandlot_p50_ms']:7.2f} ms   p99 {res['sandlot_p99_ms']:7.2f} ms")
    print(f"  +limits  p50 {res['limits_p50_ms']:7.2f} ms   p99 {res['limits_p99_ms']:7.2f} ms   ({LIMITS})")
    print(f"  bwrap    p50 {res['bwrap_p50_ms']:7.2f} ms   p99 {res['bwrap_p99_ms']:7.2f} ms")
    print(f"  ratio sandlot/bwrap p50: {res['ratio_p50']:.2f}x (target <= 1.0x), with limits "
          f"{res['limits_ratio_p50']:.2f}x; sandlot p99/p50 {res['p99_over_p50']:.2f} (target <= 2)")
    print(f"  limits add {res['limits_p50_ms'] - res['sandlot_p50_ms']:+.2f} ms to p50")
    print(f"  sandlot with egress='all'  p50 {res['egress_all_p50_ms']:7.2f} ms   p99 {res['egress_all_p99_ms']:7.2f} ms")


if __name__ == "__main__":
    main()
