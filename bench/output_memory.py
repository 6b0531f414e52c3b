"""Runner memory against unread output (issue 11): 24 execs in one sandbox
(memory limit 256 MiB) each write 20 MB that nobody reads; the runner's RSS
is read before and after. This build's runner spools output to files in the
sandbox dir; a baseline runner (``--baseline /path/to/older/sandlotd``, e.g.
main's before issue 11) kept up to 8 MiB per stream in its own memory.
Both run side by side in the same invocation; the ratio is printed.

    .venv/bin/python bench/output_memory.py [--baseline BIN]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import sandlot
from _runner import start_runner

EXECS, BYTES = 24, 20_000_000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(binary: str | None) -> tuple[int, int, float]:
    """(RSS KiB before, after, seconds) for one runner binary (None: this build's)."""
    old = os.environ.get("SANDLOT_RUNNER_BIN")
    if binary:
        os.environ["SANDLOT_RUNNER_BIN"] = binary
    try:
        r = start_runner(prefix="sl-outmem-")
    finally:
        if binary:
            if old is None:
                os.environ.pop("SANDLOT_RUNNER_BIN", None)
            else:
                os.environ["SANDLOT_RUNNER_BIN"] = old
    s = sandlot.Session(r.url)
    try:
        with sandlot.Sandbox.create(timeout=600, session=s, resources={"memory": "256Mi"}) as sb:
            before = rss_kib(r.proc.pid)
            t = time.perf_counter()
            procs = [sb.exec(["sh", "-c", f"head -c {BYTES} /dev/zero"]) for _ in range(EXECS)]
            assert [p.wait() for p in procs] == [0] * EXECS
            secs = time.perf_counter() - t
            time.sleep(0.5)
            after = rss_kib(r.proc.pid)
        return before, after, secs
    finally:
        s.close()
        r.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="another sandlotd binary to measure side by side")
    a = ap.parse_args()
    rows = [("this build", measure(None))]
    if a.baseline:
        rows.append((f"baseline {a.baseline}", measure(a.baseline)))
    print(f"{EXECS} execs x {BYTES / 1e6:g} MB unread output, sandbox memory limit 256 MiB")
    for name, (b, aft, secs) in rows:
        print(f"  {name}: runner RSS {b / 1024:.1f} -> {aft / 1024:.1f} MiB (+{(aft - b) / 1024:.1f} MiB), "
              f"execs done in {secs:.2f} s")
    if len(rows) == 2:
        g0, g1 = rows[0][1][1] - rows[0][1][0], rows[1][1][1] - rows[1][1][0]
        print(f"  RSS growth: this build {g0 / 1024:.1f} MiB vs baseline {g1 / 1024:.1f} MiB "
              f"({g1 / max(g0, 1):.0f}x less)")
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
