"""Crash safety (issue 11): a runner killed with SIGKILL leaves nothing behind
once the next runner on its state dir has started, and never touches what
belongs to other runners on the machine.

Each test starts its own private runner (conftest.start_runner) in a fresh
directory, kills it with SIGKILL while sandboxes of every kind are alive, and
starts a new one on the same state dir.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot import Sandbox
from conftest import Runner, start_runner, stop

from test_s3 import Moto, moto  # noqa: F401  (the module-scoped moto server fixture)


def cgroup_bases() -> list[Path]:
    """``<mount><this process's cgroup>/sandlot`` in every cgroup hierarchy, as
    the runner computes them (tests and their runners share one cgroup)."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            own["" if hid == "0" else ctrls] = path
    bases = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, sfields = pre.split(), post.split()
            fstype, root, mnt = sfields[0], fields[3], fields[4]
            if fstype == "cgroup2":
                key = ""
            elif fstype == "cgroup":
                opts = set(sfields[2].split(","))
                key = next((k for k in own if k and set(k.split(",")) & opts), None)  # type: ignore[arg-type]
                if key is None:
                    continue
            else:
                continue
            if key not in own:
                continue
            path = own[key]
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            bases.append(Path(mnt + "/" + rel.strip("/")) / "sandlot")
    return bases


def cgroups_of(sid: str) -> list[Path]:
    return [b / sid for b in cgroup_bases() if (b / sid).is_dir()]


def mounts_under(path: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == str(path) or mp.startswith(str(path) + "/"):
                out.append(mp)
    return out


def veths(prefix: str = "sl") -> set[str]:
    text = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {m.group(1) for m in re.finditer(r"^\d+: (sl[0-9a-f]{12})[@:]", text, re.M)}


def s3fs_pids_for(path: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"s3fs") and any(str(path).encode() in c for c in cmd):
            pids.append(int(p.name))
    return pids


def wait_for(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sl-crash-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def kill9(r: Runner) -> None:
    os.kill(r.proc.pid, signal.SIGKILL)
    r.proc.wait(10)


def test_next_runner_removes_everything_a_killed_runner_left(base: Path, session: sandlot.Session, moto: Moto) -> None:  # noqa: F811
    # A sandbox of another runner (the session's) that must come through untouched.
    other = Sandbox.create(timeout=300, session=session, resources={"memory": "64Mi"})
    try:
        other_cgroups = cgroups_of(other.sandbox_id)
        assert other_cgroups, "the other runner's sandbox has no cgroup to protect"
        r1 = start_runner(base)
        s1 = sandlot.Session(r1.url)
        try:
            snap_src = Sandbox.create(timeout=300, session=s1)
            snap_src.exec(["sh", "-c", "echo hi > /srv/crash-f"]).wait()
            snap = snap_src.snapshot()
            kinds = {
                "plain": dict(),
                "entry": dict(cmd=["sleep", "600"]),
                "limits": dict(resources={"memory": "64Mi", "pids": 64, "cpu": 0.5}),
                "disk": dict(resources={"disk": "32Mi"}),
                "network": dict(network={"egress": "all"}, ports=[8080]),
                "volume": dict(volumes={"/data": sandlot.Volume.from_name("v1", session=s1)}),
                "snapshot": dict(snapshot=snap),
                "s3": dict(s3_mounts={"/s3": moto.spec()}),
            }
            boxes = {k: Sandbox.create(timeout=300, session=s1, **kw) for k, kw in kinds.items()}
            ids = [b.sandbox_id for b in boxes.values()] + [snap_src.sandbox_id]
            sbdir = r1.state_dir / "sandboxes"
            # What a crash leaves when nothing sweeps: the test would pass
            # without the sweep otherwise.
            for sid in ids:
                assert cgroups_of(sid), f"{sid} has no cgroup"
            assert len(cgroups_of(boxes["limits"].sandbox_id)) >= len(cgroups_of(boxes["plain"].sandbox_id))
            assert mounts_under(sbdir / boxes["disk"].sandbox_id)
            assert mounts_under(sbdir / boxes["s3"].sandbox_id)
            veth = "sl" + boxes["network"].sandbox_id[3:15]
            assert veth in veths()
        finally:
            s1.close()
        kill9(r1)
        # The sandboxes die with their runner (PR_SET_PDEATHSIG); their host
        # state stays until the next runner starts.
        wait_for(lambda: veth not in veths(), "the veth pair outlived its sandbox's network namespace")
        assert all(cgroups_of(sid) for sid in ids)
        assert mounts_under(sbdir)

        # Without a pool of its own, so that an empty sandboxes dir means the
        # sweep also took r1's pre-set-up shells (pool.c), not only ids.
        r2 = start_runner(base, ["--pool", "0"])
        try:
            for sid in ids:
                assert cgroups_of(sid) == [], f"cgroup of {sid} left behind"
            assert mounts_under(sbdir) == []
            assert list(sbdir.iterdir()) == []
            wait_for(lambda: not s3fs_pids_for(sbdir), "s3fs of a swept mount still runs")
            log = r2.log_file.read_text()
            m = re.search(r"swept (\d+) sandbox\(es\) of an earlier runner", log)
            assert m and int(m.group(1)) >= len(ids), log[-2000:]
            # The acknowledged snapshot and volume are still there.
            s2 = sandlot.Session(r2.url)
            try:
                with Sandbox.create(timeout=60, session=s2, snapshot=snap) as sb:
                    p = sb.exec(["cat", "/srv/crash-f"])
                    assert p.wait() == 0 and p.stdout.read() == "hi\n"
                assert "v1" in [v.name for v in sandlot.Volume.list(session=s2)]
            finally:
                s2.close()
        finally:
            stop(r2)
        # The other runner's sandbox and cgroups were not touched.
        assert cgroups_of(other.sandbox_id) == other_cgroups
        p = other.exec(["echo", "alive"])
        assert p.wait() == 0 and p.stdout.read() == "alive\n"
    finally:
        other.terminate()


def test_an_oversized_entry_command_is_refused_before_anything_is_built(session: sandlot.Session,
                                                                        runner: Runner) -> None:
    sbdir = runner.state_dir / "sandboxes"
    before = set(sbdir.iterdir())
    created = runner.log_file.read_text().count(" created (image ")
    big = {f"V{i}": "x" * 1000 for i in range(300)}  # ~300 KB: more than one spawn message holds
    with pytest.raises(sandlot.InvalidArgumentError, match="byte limit of a spawn"):
        Sandbox.create(["true"], env=big, timeout=30, session=session)
    # Nothing was built: no new dir, and the log never saw a sandbox being made.
    assert set(sbdir.iterdir()) - before == set()
    assert runner.log_file.read_text().count(" created (image ") == created


# ---- durable stores: a crash at every step of a store ----------------------

FAULTS = {
    # point: (what the request does, whether the object exists after the crash)
    "snapshot-meta-written": ("snapshot", False),
    "snapshot-synced": ("snapshot", False),
    "snapshot-renamed": ("snapshot", True),
    "volume-created": ("volume", True),
    "image-synced": ("image", False),
}


def leftovers(state: Path) -> list[str]:
    """In-flight names (".tmp-*", ".trash-*") under the stores."""
    out = []
    for sub in ("snapshots", "images", "volumes"):
        d = state / sub
        if d.is_dir():
            out += [f"{sub}/{p.name}" for p in d.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    return out


@pytest.mark.parametrize("point", sorted(FAULTS))
def test_a_crash_at_each_step_of_a_store_leaves_it_whole_or_absent(base: Path, point: str) -> None:
    kind, exists = FAULTS[point]
    src = base / "imgsrc"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello").write_text("hi\n")
    r1 = start_runner(base, env={"SANDLOT_TEST_FAULT": point})
    s1 = sandlot.Session(r1.url)
    try:
        with pytest.raises(sandlot.RunnerUnavailableError):
            if kind == "snapshot":
                sb = Sandbox.create(timeout=60, session=s1)
                sb.exec(["sh", "-c", "echo kept > /srv/crash-f"]).wait()
                sb.snapshot()
            elif kind == "volume":
                sandlot.Volume.from_name("vol-crash", session=s1)
            else:
                s1.request("POST", "/v1/images", {"name": "img-crash", "source": str(src)}).result()
        assert r1.proc.wait(20) == 86  # the fault hook, not some other death
    finally:
        s1.close()
    r2 = start_runner(base)
    s2 = sandlot.Session(r2.url)
    try:
        assert leftovers(r2.state_dir) == []
        if kind == "snapshot":
            snaps = sandlot.SandboxSnapshot.list(session=s2)
            assert len(snaps) == (1 if exists else 0)
            for snap in snaps:  # whole: it starts and has the file
                with Sandbox.create(timeout=60, session=s2, snapshot=snap) as sb:
                    p = sb.exec(["cat", "/srv/crash-f"])
                    assert p.wait() == 0 and p.stdout.read() == "kept\n"
        elif kind == "volume":
            assert ("vol-crash" in [v.name for v in sandlot.Volume.list(session=s2)]) == exists
        else:
            names = [i["name"] for i in s2.request("GET", "/v1/images").result()["images"]]
            assert "img-crash" not in names
            # The name is free again, and a registration now works.
            s2.request("POST", "/v1/images", {"name": "img-crash", "source": str(src)}).result()
    finally:
        s2.close()
        stop(r2)


def test_kill9_under_load_loses_nothing_acknowledged(base: Path) -> None:
    """Rounds of: snapshots and volumes made from two threads, the runner
    killed with SIGKILL at a random moment, a new runner on the same state dir.
    Everything acknowledged before the kill is there and whole afterwards;
    nothing half-written is left. SANDLOT_CRASH_ROUNDS sets the rounds (3)."""
    import random
    import threading

    rounds = int(os.environ.get("SANDLOT_CRASH_ROUNDS", "3"))
    acked_snaps: list[str] = []
    acked_vols: list[str] = []
    for rnd in range(rounds):
        r = start_runner(base)
        s = sandlot.Session(r.url)
        stop_flag = threading.Event()

        def snapper() -> None:
            try:
                sb = Sandbox.create(timeout=120, session=s)
                i = 0
                while not stop_flag.is_set():
                    sb.exec(["sh", "-c", f"echo {rnd}-{i} > /srv/crash-f"]).wait()
                    acked_snaps.append(sb.snapshot().snapshot_id)
                    i += 1
            except sandlot.SandboxError:
                pass  # the runner died under us: what was acknowledged counts

        def voller() -> None:
            i = 0
            try:
                while not stop_flag.is_set():
                    name = f"v{rnd}-{i}"
                    sandlot.Volume.from_name(name, session=s)
                    acked_vols.append(name)
                    i += 1
            except sandlot.SandboxError:
                pass

        threads = [threading.Thread(target=f) for f in (snapper, voller)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.5, 2.5))
        kill9(r)
        stop_flag.set()
        for t in threads:
            t.join(60)
        s.close()
    r = start_runner(base)
    s = sandlot.Session(r.url)
    try:
        assert leftovers(r.state_dir) == []
        have = {x.snapshot_id for x in sandlot.SandboxSnapshot.list(session=s)}
        assert set(acked_snaps) <= have, f"lost snapshots: {set(acked_snaps) - have}"
        vols = {v.name for v in sandlot.Volume.list(session=s)}
        assert set(acked_vols) <= vols, f"lost volumes: {set(acked_vols) - vols}"
        assert acked_snaps and acked_vols  # the load really ran
        # Every snapshot there (acknowledged or not) is whole: it starts.
        for sid in sorted(have):
            with Sandbox.create(timeout=60, session=s, snapshot=sandlot.SandboxSnapshot.lookup(sid, session=s)) as sb:
                assert sb.exec(["test", "-s", "/srv/crash-f"]).wait() == 0
    finally:
        s.close()
        stop(r)


def test_an_oversized_function_environment_is_refused_at_registration(session: sandlot.Session) -> None:
    big = {f"V{i}": "x" * 1000 for i in range(300)}
    fn = sandlot.RemoteFunction(abs, session=session, environment_variables=big)
    with pytest.raises(sandlot.InvalidArgumentError, match="byte limit of a spawn"):
        fn.remote(-1)
