"""MicroVM tier vs container tier, in one run on one private runner.

Measures, as a user sees them (Python client, default settings):
  1. cold create -> first exec output, p50/p99 (microvm and container);
  2. memory snapshot capture time and size of a guest with 256 MiB touched;
  3. restore from that snapshot -> first exec output, p50/p99;
  4. a workload whose setup takes ~2 s (imports + an in-memory table),
     resumed from a memory snapshot vs done again (microvm cold, and in a
     container, the peer whose snapshots hold files only);
  5. host memory per idle microVM (PSS of QEMU + its monitor).
Targets (issue 8): cold p50 <= 250 ms, restore p50 <= 150 ms, resumed vs redone
>= 10x. Anchors: Firecracker boot <= 125 ms, E2B resume ~1 s.

    .venv/bin/python bench/microvm.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sandlot  # noqa: E402
from _runner import start_runner  # noqa: E402
from sandlot import Sandbox  # noqa: E402

SETUP = r"""
import time
t0 = time.time()
import json, decimal, fractions, statistics, email.parser, http.client, xml.dom.minidom, sqlite3, asyncio
table = {i: (str(i) * 3, i * i) for i in range(%(n)d)}
h = 0
for i in range(%(spin)d):  # the CPU part of a setup (parsing, warming caches)
    h = (h * 31 + i) & 0xFFFFFFFF
table[-1] = (str(h), h)
open("/run/setup.secs", "w").write(str(time.time() - t0))
open("/run/ready", "w").write("1")
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7001)); s.listen(4)
while True:
    c, _ = s.accept(); c.sendall(f"{len(table)} {table[12345][1]}\n".encode()); c.close()
"""
SPIN = 8_000_000
ASK = ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7001 && cat <&3"]
TOUCH = "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nopen('/run/touched','w').write('1')\nimport time; time.sleep(3600)"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def fmt(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs) * 1000:8.1f} ms  p99 {pct(xs, 99) * 1000:8.1f} ms  (n={len(xs)})"


def wait_file(sb: Sandbox, path: str, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while sb.exec(["test", "-e", path]).wait(timeout=120) != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear in {sb.sandbox_id}")
        time.sleep(0.05)


def cold_first_exec(s: sandlot.Session, isolation: str) -> float:
    t = time.perf_counter()
    sb = Sandbox.create(isolation=isolation, session=s)
    out = sb.exec(["echo", "hi"]).stdout.read()
    dt = time.perf_counter() - t
    assert out == "hi\n"
    sb.terminate()
    return dt


def setup_redone(s: sandlot.Session, isolation: str, n: int) -> tuple[float, str]:
    t = time.perf_counter()
    sb = Sandbox.create(isolation=isolation, session=s)
    sb.exec(["python3", "-c", SETUP % {"n": n, "spin": SPIN}])
    wait_file(sb, "/run/ready")
    out = sb.exec(ASK).stdout.read()
    dt = time.perf_counter() - t
    inner = sb.read_file("/run/setup.secs").decode()
    sb.terminate()
    return dt, f"{out.strip()} (table build alone {float(inner):.2f} s)"


def vm_pss_kib(sb: Sandbox) -> int:
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 .*{sb.sandbox_id}/"], capture_output=True, text=True)
    total = 0
    for pid in out.stdout.split():
        ppid = Path(f"/proc/{pid}/stat").read_text().split()[3]
        for p in (pid, ppid):  # QEMU and its monitor
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--table", type=int, default=200_000, help="entries of the setup workload's table")
    ap.add_argument("--spin", type=int, default=8_000_000, help="loop iterations of the setup (~2 s natively with the table)")
    a = ap.parse_args()
    global SPIN
    SPIN = a.spin
    r = start_runner()
    s = sandlot.Session(r.url)
    try:
        mv = s.health()["microvm"]
        if not mv.get("available"):
            print(f"microVMs not available: {mv.get('note')}")
            return 1
        print(f"microvm accel: {mv['accel']}" + (f"  ({mv['note']})" if mv.get("note") else ""))
        print(f"load: {Path('/proc/loadavg').read_text().strip()}")

        print("\n1. cold create -> first exec output")
        res = {}
        for iso in ("container", "microvm"):
            res[iso] = [cold_first_exec(s, iso) for _ in range(a.rounds)]
            print(f"   {iso:9s} {fmt(res[iso])}")
        print(f"   microvm / container p50: {statistics.median(res['microvm']) / statistics.median(res['container']):.1f}x")

        print("\n2. memory snapshot of a guest with 256 MiB touched (guest RAM 512 MiB)")
        big = Sandbox.create(isolation="microvm", resources={"memory": 512}, session=s)
        big.exec(["python3", "-c", TOUCH])
        wait_file(big, "/run/touched")
        t = time.perf_counter()
        snap = big.snapshot()
        cap = time.perf_counter() - t
        print(f"   capture {cap * 1000:.0f} ms (runner: {snap.capture_seconds * 1000:.0f} ms), size {snap.size / 2**20:.1f} MiB")
        big.terminate()

        print("\n3. restore -> first exec output (from the 256 MiB-touched snapshot)")
        rest = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            c = Sandbox.create(snapshot=snap, session=s)
            out = c.exec(["echo", "hi"]).stdout.read()
            rest.append(time.perf_counter() - t)
            assert out == "hi\n"
            c.terminate()
        print(f"   microvm   {fmt(rest)}")
        snap.delete()

        print("\n4. ~2 s setup workload: resumed from a memory snapshot vs redone")
        redo_c, info_c = setup_redone(s, "container", a.table)
        print(f"   container, redone: {redo_c:6.2f} s   answer {info_c}")
        redo_v, info_v = setup_redone(s, "microvm", a.table)
        print(f"   microvm, redone:   {redo_v:6.2f} s   answer {info_v}")
        base = Sandbox.create(isolation="microvm", session=s)
        base.exec(["python3", "-c", SETUP % {"n": a.table, "spin": SPIN}])
        wait_file(base, "/run/ready")
        wsnap = base.snapshot()
        base.terminate()
        resumed = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            c = Sandbox.create(snapshot=wsnap, session=s)
            out = c.exec(ASK).stdout.read()
            resumed.append(time.perf_counter() - t)
            assert out.split()[0] == str(a.table + 1), out
            c.terminate()
        med = statistics.median(resumed)
        print(f"   microvm, resumed:  {fmt(resumed)}")
        print(f"   resumed vs redone: {redo_v / med:.1f}x (microvm redone), {redo_c / med:.1f}x (container redone)")
        wsnap.delete()

        print("\n5. host memory per idle microVM (PSS of QEMU + monitor, 3 VMs)")
        vms = [Sandbox.create(isolation="microvm", session=s) for _ in range(3)]
        time.sleep(2)
        pss = [vm_pss_kib(v) for v in vms]
        print(f"   {statistics.mean(pss) / 1024:.1f} MiB each (guest RAM 256 MiB, touched pages only)")
        for v in vms:
            v.terminate()
        print(f"\nload at end: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
