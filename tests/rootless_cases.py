"""Rootless-mode cases: run by tests/test_rootless.py as an unprivileged user,
against a runner that user starts (the ``runner`` fixture of conftest.py, which
then runs without root). Not collected by the normal suite (the file name does
not start with ``test_``): run as root these would test nothing.

What they show: root inside is the runner's uid outside and nothing more;
limits that cannot be enforced without a delegated cgroup are reported as
such and refused; timeouts and terminate still kill everything.

Environment (set by tests/test_rootless.py):
    SANDLOT_ROOTLESS_PROBE      a root-owned 0600 file on the host image
    SANDLOT_TEST_HOST_DIR       a directory on the host image this user owns
    SANDLOT_ROOTLESS_DELEGATED  (second pass only) the cgroup2 directory given
                                to this user, which the run was started in
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sandlot
from sandlot import Sandbox, Volume

from conftest import client_env


def sh(sb: Sandbox, cmd: str) -> tuple[int, str, str]:
    """Run cmd with /bin/sh in sb: (exit code, stdout, stderr)."""
    p = sb.exec(["/bin/sh", "-c", cmd])
    out, err = p.stdout.read(), p.stderr.read()
    return p.wait(), out, err


@pytest.fixture(autouse=True)
def _unprivileged() -> None:
    assert os.geteuid() != 0, "rootless cases must run as an unprivileged user (tests/test_rootless.py)"


def test_health_says_rootless_and_which_limits_are_enforced(session):
    h = session.health()
    assert h["rootless"] is True and h["uid"] == os.geteuid()
    lim = h["limits"]
    # The disk cap is a tmpfs the runner mounts on the host: never without root.
    assert lim["disk"] is False and lim["gpu"] is False
    if not os.environ.get("SANDLOT_ROOTLESS_DELEGATED"):
        # No cgroup of this user is writable here: nothing can be limited.
        assert (lim["memory"], lim["pids"], lim["cpu"]) == (False, False, False), lim


def test_limits_that_are_not_enforced_are_refused(session):
    lim = session.health()["limits"]
    asks = {"memory": "64Mi", "pids": 32, "cpu": 0.5, "disk": "16Mi"}
    refused = [k for k in asks if not lim[k]]
    assert "disk" in refused
    before = len(Sandbox.list(session=session))
    for key in refused:
        with pytest.raises(sandlot.InvalidArgumentError, match=f"resources.{key}.*cannot enforce"):
            Sandbox.create(["true"], resources={key: asks[key]}, session=session)
    # A refusal is made before anything is created.
    assert len(Sandbox.list(session=session)) == before


def _one() -> int:
    return 1


def test_a_function_asking_for_an_unenforced_limit_is_refused_at_registration(session):
    from sandlot.function import RemoteFunction

    fn = RemoteFunction(_one, session=session, resources={"memory": "64Mi"})
    with pytest.raises(sandlot.InvalidArgumentError, match="options.resources.memory.*cannot enforce"):
        fn.remote().result(timeout=60)
    # Without the limit the same function runs in a rootless worker.
    assert RemoteFunction(_one, session=session).remote().result(timeout=120) == 1


def test_runner_status_cli_says_what_is_not_enforced(runner):
    env = client_env(runner)
    out = subprocess.run(
        [sys.executable, "-m", "sandlot", "runner", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"rootless (user namespace: uid 0 inside = uid {os.geteuid()} outside)" in out.stdout
    assert "disk NOT enforced" in out.stdout
    assert "is refused" in out.stdout


def test_network_needs_a_root_runner_and_says_so(session):
    net = session.health()["network"]
    assert net["available"] is False and "rootless" in net["reason"], net
    for ask in ({"network": {"egress": "all"}}, {"ports": [8000]}):
        with pytest.raises(sandlot.InvalidArgumentError, match="cannot give sandboxes a network .a rootless runner") as ei:
            Sandbox.create(["true"], session=session, **ask)
        assert "sandlot runner status" in str(ei.value)
    # The default, only lo, is not affected.
    with Sandbox.create(["sh", "-c", "ls /sys/class/net"], session=session) as sb:
        assert sb.wait() == 0 and sb.stdout.read().split() == ["lo"]


def test_root_inside_is_the_runner_user_outside(session, runner):
    uid, gid = os.geteuid(), os.getegid()
    vol = Volume.from_name(f"rl-{uuid.uuid4().hex[:8]}", create_if_missing=True, session=session)
    # The volume stays: it lives in this run's own state dir.
    with Sandbox.create(["sleep", "60"], volumes={"/data": vol}, session=session) as sb:
        code, out, _ = sh(sb, "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map")
        assert code == 0
        lines = out.split("\n")
        assert lines[:2] == ["0", "0"]
        assert lines[2].split() == ["0", str(uid), "1"] and lines[3].split() == ["0", str(gid), "1"]
        tag = uuid.uuid4().hex
        assert sh(sb, f"echo hi > /data/{tag} && stat -c '%u %g' /data/{tag}")[1] == "0 0\n"
        # On the host the file belongs to the runner's user, not to root.
        found = list(runner.state_dir.rglob(tag))
        assert len(found) == 1, found
        st = found[0].stat()
        assert (st.st_uid, st.st_gid) == (uid, gid)
        # The sandbox's init is a process of this user too.
        pid = sb.info().pid
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status


def test_root_inside_cannot_do_what_the_user_cannot(sandbox):
    probe = os.environ["SANDLOT_ROOTLESS_PROBE"]
    # The user cannot read the root-only file on the host...
    with pytest.raises(PermissionError):
        open(probe, "rb").read()
    # ...and neither can root in the sandbox, which sees it (owned by the
    # unmapped host root: the overflow uid) through the host image.
    code, out, err = sh(sandbox, f"stat -c '%u %a' {probe}; cat {probe}")
    assert code != 0 and "Permission denied" in err, (out, err)
    assert out.split() == ["65534", "600"], out
    # Host directories of other owners stay closed: no file in /usr/bin, no
    # change of /etc/passwd, no chown to an id outside the map.
    for cmd in (f"touch /usr/bin/sl-{uuid.uuid4().hex}", "echo x >> /etc/passwd", "chown 1234 /tmp"):
        code, _, err = sh(sandbox, cmd)
        assert code != 0, (cmd, err)


def test_a_write_that_needs_a_copy_up_of_roots_directory_fails_closed(sandbox):
    # Known limit of rootless mode (docs/security.md): the user's directory
    # below a directory of root's is writable on the host, but in the sandbox a
    # write there has to copy root's directory up into the sandbox's layer,
    # which needs CAP_CHOWN on the host. It fails (EOVERFLOW) and the host
    # does not change.
    user_dir = Path(os.environ["SANDLOT_TEST_HOST_DIR"]) / "root-dir" / "user-dir"
    tag = uuid.uuid4().hex
    (user_dir / "host-file").write_text("host\n")  # the user itself can write there
    code, _, err = sh(sandbox, f"echo x > {user_dir}/{tag}")
    assert code != 0 and "Value too large" in err, err
    assert sorted(os.listdir(user_dir)) == ["host-file"]
    assert sh(sandbox, f"cat {user_dir}/host-file")[1] == "host\n"


def test_a_snapshot_without_a_delegated_cgroup_says_why_it_cannot_be_made(sandbox):
    with pytest.raises(sandlot.SandboxError, match="rootless runner freezes through a delegated cgroup"):
        sandbox.snapshot()


def test_without_user_namespaces_the_runner_says_so_at_start(tmp_path):
    # bubblewrap's --disable-userns leaves this user no user namespace to
    # give (user.max_user_namespaces=1 in its own): the runner must refuse
    # to start with the reason, not fail every create later.
    import shutil

    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is installed by ./dev"
    sandlotd = str(Path(sandlot.__file__).resolve().parent / "_bin" / "sandlotd")
    argv = [bwrap, "--dev-bind", "/", "/", "--unshare-user", "--disable-userns", "--", sandlotd]
    argv += ["--socket", str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "state")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "cannot run rootless: the kernel refuses this user a user namespace" in r.stderr, r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_a_terminated_sandbox_leaves_nothing_in_the_state_dir(session, runner):
    # Deleting a host file makes overlayfs use its work dir, whose "work"
    # subdir it leaves at mode 000: the runner, without CAP_DAC_OVERRIDE,
    # must still remove it all.
    sb = Sandbox.create(["sleep", "60"], session=session)
    assert sh(sb, "rm /etc/hostname && echo x > /etc/new && mkdir /var/lib/sl-new")[0] == 0
    box_dir = runner.state_dir / "sandboxes" / sb.sandbox_id
    assert box_dir.is_dir()
    sb.terminate()
    for _ in range(1000):
        if not box_dir.exists():
            break
        time.sleep(0.01)
    assert not box_dir.exists(), sorted(str(p) for p in box_dir.rglob("*"))
    assert "background removal" not in runner.log_file.read_text()


def test_kill_and_timeout_work_without_a_cgroup(session):
    # No cgroup: terminate and the timeout kill init, and the pid namespace
    # takes every other process with it.
    tag = f"{uuid.uuid4().int % 10**6}.{os.getpid()}"
    sb = Sandbox.create(["sh", "-c", f"sleep {tag} & sleep {tag} & wait"], timeout=3, session=session)
    host = []
    for _ in range(500):
        host = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep {tag}"]
        if len(host) == 2:
            break
        time.sleep(0.01)
    assert len(host) == 2, host
    assert sb.wait(timeout=60) == -9
    assert sb.info().status == "timeout"
    for _ in range(500):
        if not any(_cmdline(p) == f"sleep {tag}" for p in host):
            break
        time.sleep(0.01)
    assert not any(_cmdline(p) == f"sleep {tag}" for p in host)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_a_delegated_cgroup_holds_every_sandbox(session):
    # Run by tests/test_rootless.py inside a cgroup2 directory it gave this
    # user (SANDLOT_ROOTLESS_DELEGATED): the runner then puts each sandbox in
    # a cgroup of its own below it and kills through it.
    delegated = Path(os.environ["SANDLOT_ROOTLESS_DELEGATED"])
    sb = Sandbox.create(["sh", "-c", "sleep 1000 & sleep 1000 & wait"], timeout=120, session=session)
    try:
        pid = sb.info().pid
        line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if x.startswith("0::"))
        own = delegated / "sandlot" / sb.sandbox_id
        assert line.endswith(f"/{delegated.name}/sandlot/{sb.sandbox_id}"), line
        assert own.is_dir() and own.stat().st_uid == os.geteuid()
        for _ in range(500):
            members = (own / "cgroup.procs").read_text().split()
            if len(members) >= 4:  # init, sh and the two sleeps
                break
            time.sleep(0.01)
        assert len(members) >= 4, members
        # Inside, the cgroup namespace is rooted at the sandbox's cgroup.
        assert sh(sb, "cat /proc/self/cgroup")[1].strip().endswith("0::/")
        # What the health says is what the runner does: an enforced limit
        # takes, one that is not is refused.
        lim = session.health()["limits"]
        for key, ask in (("memory", "64Mi"), ("pids", 32), ("cpu", 0.5)):
            if lim[key]:
                with Sandbox.create(["true"], resources={key: ask}, session=session) as limited:
                    assert limited.wait(timeout=60) == 0
            else:
                with pytest.raises(sandlot.InvalidArgumentError, match="cannot enforce"):
                    Sandbox.create(["true"], resources={key: ask}, session=session)
    finally:
        sb.terminate()
    for _ in range(500):
        if not own.exists():
            break
        time.sleep(0.01)
    assert not own.exists(), "the sandbox's cgroup outlived it"


def test_snapshots_work_in_a_delegated_cgroup(session):
    # The capture freezes the sandbox through its cgroup (cgroup.freeze): with
    # a delegated cgroup a rootless runner has one. The layer is restored by
    # the same per-directory overlays as the host image itself.
    tag = uuid.uuid4().hex
    with Sandbox.create(["sleep", "60"], session=session) as sb:
        assert sh(sb, f"echo {tag} > /etc/sl-{tag} && mkdir /top-{tag} && echo top > /top-{tag}/f")[0] == 0
        snap = sb.snapshot()
    with Sandbox.create(["sleep", "60"], snapshot=snap, session=session) as restored:
        code, out, err = sh(restored, f"cat /etc/sl-{tag} /top-{tag}/f; ls /usr/bin/sh")
        assert code == 0, err
        assert out == f"{tag}\ntop\n/usr/bin/sh\n"
    assert not os.path.exists(f"/etc/sl-{tag}") and not os.path.exists(f"/top-{tag}")


def test_snapshots_of_a_directory_image_work_in_a_delegated_cgroup(session, tmp_path):
    # A directory image is one overlay (no host mounts below it), stacked on
    # a read-only base overlay when restored from a snapshot: both carry
    # userxattr in a user namespace.
    import shutil

    busybox = shutil.which("busybox") or "/bin/busybox"
    assert os.access(busybox, os.X_OK), "busybox-static is installed by ./dev"
    root = tmp_path / "rootfs"
    for d in ("bin", "etc", "opt", "tmp", "proc", "dev", "sys", "run", "var/tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for tool in ("sh", "cat", "rm", "mkdir", "ls", "sleep", "test", "echo"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc" / "gone").write_text("image\n")
    image = sandlot.Image.from_directory(str(root))
    with Sandbox.create(["/bin/sleep", "60"], image=image, session=session) as sb:
        assert sh(sb, "echo added > /etc/added && rm /etc/gone && mkdir -p /opt/new")[0] == 0
        snap = sb.snapshot()
    with Sandbox.create(["/bin/sleep", "60"], snapshot=snap, session=session) as restored:
        code, out, err = sh(restored, "cat /etc/added; test -e /etc/gone || echo gone; ls -d /opt/new")
        assert (code, out) == (0, "added\ngone\n/opt/new\n"), err
    assert (root / "etc" / "gone").read_text() == "image\n" and not (root / "etc" / "added").exists()
