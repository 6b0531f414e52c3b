"""Soak: mixed traffic from several client processes while the runner is
killed (SIGKILL) and restarted (SIGTERM + start) under it, issue 11.

Each client is a separate Python process on the embedded default runner (a
private runtime dir here), so the runner it loses is started again by the
clients themselves. Traffic: create + exec + read output, snapshots,
RemoteFunction.remote and .map. Reported: work created and completed, calls
interrupted by a restart (they fail with RunnerExitedError or, for a sandbox
of the old runner, "was lost"), failures of any other kind (must be 0), lost
acknowledged snapshots (must be 0), and after the last runner stopped and
the next one swept: leaked cgroups, mounts and runner fds (must be 0), and
the runner's RSS over time.

    .venv/bin/python bench/soak.py                 # 60 s, 3 clients, a restart every 8 s
    .venv/bin/python bench/soak.py --seconds 600   # longer
    SANDLOT_SOAK_SECONDS=30 .venv/bin/python -m pytest tests/test_soak.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sandlot
from sandlot._runtime import read_pid, runtime_paths, stop_runner

HERE = Path(__file__).resolve().parent


def runner_binary() -> str:
    return os.environ.get("SANDLOT_RUNNER_BIN") or str(Path(sandlot.__file__).resolve().parent / "_bin" / "sandlotd")


# ---- one client process -------------------------------------------------------

def client(seconds: float, tag: str) -> dict[str, Any]:
    """Loop over the traffic mix until the deadline; never stops on an error."""
    sess = sandlot.Session()
    fn = sandlot.RemoteFunction(abs, session=sess)
    st: dict[str, Any] = {"created": 0, "completed": 0, "interrupted": 0, "failed": [], "snapshots": [],
                          "sandboxes": []}
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        kind = i % 4
        try:
            if kind in (0, 3):
                sb = sandlot.Sandbox.create(timeout=120, session=sess)
                st["created"] += 1
                st["sandboxes"].append(sb.sandbox_id)
                try:
                    word = f"{tag}-{i}"
                    p = sb.exec(["sh", "-c", f"echo {word} | tee /srv/soak"])
                    assert p.wait() == 0, "exec failed"
                    assert p.stdout.read() == word + "\n", "wrong output"
                    if kind == 3:
                        st["snapshots"].append(sb.snapshot().snapshot_id)
                finally:
                    try:
                        sb.terminate()
                    except sandlot.SandboxError:
                        pass
            elif kind == 1:
                st["created"] += 1
                assert fn.remote(-i).result() == i, "wrong remote result"
            else:
                st["created"] += 1
                assert [r.result() for r in fn.map([(-k,) for k in range(i, i + 20)])] == list(range(i, i + 20))
            st["completed"] += 1
        except sandlot.RunnerUnavailableError:  # RunnerExitedError included: cut by a restart
            st["interrupted"] += 1
        except sandlot.WorkerCrashedError:
            # A call on a direct channel (_direct.py) whose worker died with
            # the killed runner reads as a worker crash: cut by a restart too.
            # Saying "the runner exited" there instead is still to do.
            st["interrupted"] += 1
        except sandlot.NotFoundError as exc:
            if "was lost" in str(exc) or "function" in str(exc):
                st["interrupted"] += 1
            else:
                st["failed"].append(repr(exc))
        except Exception as exc:  # noqa: BLE001 - counted, shown, and the soak goes on
            st["failed"].append(repr(exc))
    sess.close()
    return st


# ---- the harness --------------------------------------------------------------

def cgroup_bases() -> list[Path]:
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            own["" if hid == "0" else ctrls] = path
    bases = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, sf = pre.split(), post.split()
            if sf[0] == "cgroup2":
                key: str | None = ""
            elif sf[0] == "cgroup":
                opts = set(sf[2].split(","))
                key = next((k for k in own if k and set(k.split(",")) & opts), None)
            else:
                continue
            if key is None or key not in own:
                continue
            root, mnt, path = fields[3], fields[4], own[key]
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            bases.append(Path(mnt + "/" + rel.strip("/")) / "sandlot")
    return bases


def mounts_under(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4].startswith(str(path) + "/"))


def proc_stat(pid: int) -> tuple[int, int]:
    """(RSS KiB, open fds) of pid, (0, 0) if gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0


def soak(seconds: float = 60.0, clients: int = 3, restart_every: float = 8.0) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sl-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env.update(XDG_RUNTIME_DIR=str(root), SANDLOT_RUNNER_BIN=runner_binary(),
               PYTHONPATH=str(Path(sandlot.__file__).resolve().parent.parent))
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "SANDLOT_URL", "SANDLOT_RUNNER_BIN")}
    os.environ.update(XDG_RUNTIME_DIR=str(root), SANDLOT_RUNNER_BIN=runner_binary())
    os.environ.pop("SANDLOT_URL", None)
    paths = runtime_paths(root / "sandlot")
    rss: list[tuple[float, int]] = []
    restarts = {"kill9": 0, "sigterm": 0}
    try:
        probe = sandlot.Session()
        probe.health()
        t0 = time.monotonic()
        procs = [subprocess.Popen([sys.executable, __file__, "--client", str(seconds), f"c{n}"], env=env,
                                  stdout=subprocess.PIPE, text=True) for n in range(clients)]
        next_restart = t0 + restart_every
        n = 0
        while any(p.poll() is None for p in procs):
            pid = read_pid(paths)
            kib = proc_stat(pid)[0] if pid else 0
            if kib:  # 0: between a runner's death and the next one's start
                rss.append((round(time.monotonic() - t0, 1), kib))
            if time.monotonic() >= next_restart and time.monotonic() < t0 + seconds - 2 and pid:
                n += 1
                if n % 2:
                    os.kill(pid, signal.SIGKILL)  # the clients start the next one
                    restarts["kill9"] += 1
                else:
                    stop_runner(pid)
                    restarts["sigterm"] += 1
                next_restart = time.monotonic() + restart_every
            time.sleep(0.5)
        results = [json.loads(p.stdout.read() or "{}") for p in procs]
        # Acknowledged snapshots are all there (on whichever runner is up now).
        probe.health()
        have = {s.snapshot_id for s in sandlot.SandboxSnapshot.list(session=probe)}
        acked = [s for r in results for s in r.get("snapshots", [])]
        # Runner fds when idle after the load, against a fresh runner's, idle:
        # the clients' function pools (live workers hold fds) go first.
        for f in probe.request("GET", "/v1/functions").result().get("functions", []):
            probe.request("POST", f"/v1/functions/{f['function_id']}/delete").result()
        pid = read_pid(paths)
        fds_after, deadline = -1, time.monotonic() + 15
        while pid and time.monotonic() < deadline:  # workers end asynchronously
            time.sleep(1.0)
            now = proc_stat(pid)[1]
            if now == fds_after:
                break
            fds_after = now
        stop_runner(pid) if pid else None
        probe.health()  # a fresh runner: it sweeps what the last one left
        time.sleep(1.0)
        pid = read_pid(paths)
        fds_fresh = proc_stat(pid)[1] if pid else 0
        probe.close()
        stop_runner(pid) if pid else None
        ids = [s for r in results for s in r.get("sandboxes", [])]
        bases = cgroup_bases()
        leaked_cg = sum(1 for sid in ids for b in bases if (b / sid).exists())
        out = {
            "seconds": seconds,
            "clients": clients,
            "restarts": restarts,
            "created": sum(r.get("created", 0) for r in results),
            "completed": sum(r.get("completed", 0) for r in results),
            "interrupted": sum(r.get("interrupted", 0) for r in results),
            "failed": [f for r in results for f in r.get("failed", [])],
            "snapshots_acknowledged": len(acked),
            "lost": len(set(acked) - have),
            "leaked_cgroups": leaked_cg,
            "leaked_mounts": mounts_under(root),
            "leaked_fds": max(0, fds_after - fds_fresh),
            "runner_rss_kib": rss,
        }
        return out
    finally:
        pid = read_pid(paths)
        if pid:
            stop_runner(pid)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SANDLOT_SOAK_SECONDS", "60")))
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--restart-every", type=float, default=8.0)
    ap.add_argument("--client", nargs=2, metavar=("SECONDS", "TAG"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        print(json.dumps(client(float(a.client[0]), a.client[1])))
        return
    r = soak(a.seconds, a.clients, a.restart_every)
    series = r.pop("runner_rss_kib")
    print(json.dumps(r, indent=1))
    step = max(1, len(series) // 12)
    print("runner RSS over time (s: MiB): " + ", ".join(f"{t:g}: {kib / 1024:.1f}" for t, kib in series[::step]))
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
