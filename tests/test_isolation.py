"""What a user relies on when running untrusted code: pid 1 is sandlot's init,
the host's processes and network are invisible, and writes never reach the host."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
import sandlot
from conftest import sanitizer_env
from sandlot import Sandbox


def sh(sb: Sandbox, cmd: str) -> str:
    p = sb.exec(["/bin/sh", "-c", cmd])
    out = p.stdout.read()
    assert p.wait() == 0, (cmd, out, p.stderr.read())
    return out


@pytest.fixture
def box(session):
    with Sandbox.create(["sleep", "120"], session=session) as sb:
        yield sb


def test_pid1_is_sandlot_init_not_the_users_command(box):
    # init is exec'd from a memfd, so comm may read "memfd:sandlot-i" (the memfd's
    # name, cut to 15 bytes); argv[0] is "sandlot-init". Either way it is ours.
    comm = sh(box, "cat /proc/1/comm").strip()
    assert "sandlot-i" in comm, comm
    argv0 = box.read_file("/proc/1/cmdline").split(b"\0")[0]
    assert argv0 == b"sandlot-init"
    # The entry command is a child of init, not pid 1.
    ps = sh(box, "ps -eo pid,ppid,args")
    sleep_rows = [r.split() for r in ps.splitlines() if r.split()[2:4] == ["sleep", "120"]]
    assert len(sleep_rows) == 1 and sleep_rows[0][0] != "1" and sleep_rows[0][1] == "1", ps


def test_host_processes_are_invisible(box):
    pids = [int(x) for x in sh(box, "ls /proc").split() if x.isdigit()]
    # init, the entry sleep, this shell and ls: a handful, not the host's hundreds.
    assert 1 in pids and len(pids) < 10, pids
    cmdlines = sh(box, r'for p in /proc/[0-9]*; do tr "\0" " " < $p/cmdline; echo; done')
    assert "pytest" not in cmdlines and "sandlotd" not in cmdlines, cmdlines
    # The test process's host pid does not exist inside (or is not this process).
    mine = os.getpid()
    if mine in pids:
        assert "python" not in box.read_file(f"/proc/{mine}/cmdline").decode(errors="replace")


def test_only_loopback_network(box):
    assert sh(box, "ls /sys/class/net").split() == ["lo"]
    devs = [line.split(":")[0].strip() for line in sh(box, "cat /proc/net/dev").splitlines()[2:]]
    assert devs == ["lo"]
    # Nothing outside is reachable: connecting to a host port fails.
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen(1)
    port = host.getsockname()[1]
    try:
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(2)\n"
            f"sys.exit(7 if s.connect_ex(('127.0.0.1',{port})) != 0 else 0)\n"
        )
        assert box.exec(["python3", "-c", code]).wait() == 7
    finally:
        host.close()


def test_hostname_is_the_sandbox_not_the_host(box):
    name = sh(box, "hostname").strip()
    assert name != socket.gethostname()


def test_writes_inside_never_reach_the_host(box):
    tag = uuid.uuid4().hex
    sh(box, f"echo inside > /etc/sandlot-test-{tag}")
    sh(box, f"mkdir -p /root/sandlot-test-{tag} && echo y > /root/sandlot-test-{tag}/f")
    sh(box, f"echo changed >> /etc/hostname.sandlot-{tag}; rm -f /etc/os-release")
    assert box.read_file(f"/etc/sandlot-test-{tag}") == b"inside\n"
    assert box.exec(["test", "-e", "/etc/os-release"]).wait() == 1
    assert not os.path.exists(f"/etc/sandlot-test-{tag}")
    assert not os.path.exists(f"/root/sandlot-test-{tag}")
    assert not os.path.exists(f"/etc/hostname.sandlot-{tag}")
    assert os.path.exists("/etc/os-release") or os.path.exists("/usr/lib/os-release")


def test_sandboxes_do_not_see_each_other(session, box):
    tag = uuid.uuid4().hex
    sh(box, f"echo mine > /tmp/{tag}; echo mine > /var/tmp/{tag}; echo mine > /opt-{tag} 2>/dev/null || true")
    with Sandbox.create(["sleep", "60"], session=session) as other:
        assert other.exec(["test", "-e", f"/tmp/{tag}"]).wait() == 1
        assert other.exec(["test", "-e", f"/var/tmp/{tag}"]).wait() == 1
        assert other.exec(["test", "-e", f"/opt-{tag}"]).wait() == 1
        ps = sh(other, "ps -eo args")
        assert "sleep 120" not in ps and "sleep 60" in ps


def test_privileges_are_dropped(box):
    inside = dict(line.split(":\t", 1) for line in sh(box, "cat /proc/self/status").splitlines() if ":\t" in line)
    cap_eff = int(inside["CapEff"], 16)
    for bit, name in ((21, "CAP_SYS_ADMIN"), (16, "CAP_SYS_MODULE"), (17, "CAP_SYS_RAWIO"), (25, "CAP_SYS_TIME")):
        assert not cap_eff & (1 << bit), f"{name} is still granted inside the sandbox"
    assert inside["NoNewPrivs"].strip() == "1"
    assert inside["Seccomp"].strip() == "2"  # a filter is installed
    assert box.exec(["mount", "-t", "tmpfs", "none", "/mnt"]).wait() != 0


def test_clients_own_python_and_sandlot_work_inside(session):
    # The host image promises the client's interpreter and sandlot inside,
    # even when they live under a directory sandboxes mask (/root, /home, /tmp).
    import sys

    with Sandbox.create(["sleep", "60"], session=session) as sb:
        # The client's import path as it has it (an installed sandlot needs
        # none; a source tree run with PYTHONPATH passes it on).
        pp = os.pathsep.join(os.path.abspath(x) for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x)
        env = ({"PYTHONPATH": pp} if pp else {}) | sanitizer_env() or None
        p = sb.exec([sys.executable, "-c", "import sys, sandlot; print(sys.version.split()[0], sandlot.__file__)"], env=env)
        out = p.stdout.read()
        assert p.wait() == 0, p.stderr.read()
        version, path = out.split()
        assert version == sys.version.split()[0]
        assert path == sandlot.__file__
        # The client's files cannot be changed from inside. Where they sit under
        # a masked dir they are bound read-only, so the write fails; elsewhere
        # (e.g. a checkout under /srv) the host image is read-only under the
        # sandbox's writable layer, so the write lands in that layer. Either
        # way the host's copy never changes.
        probe = os.path.join(sys.prefix, "sandlot-probe")
        assert not os.path.exists(probe)
        w = sb.exec(["sh", "-c", f"touch {probe} && echo written"])
        wrote = w.wait() == 0
        if wrote:
            assert w.stdout.read().strip() == "written"
        assert not os.path.exists(probe), "a write inside the sandbox reached the client's interpreter on the host"
    if not wrote:
        return
    # The write was visible only inside that sandbox: a new one sees the original.
    with Sandbox.create(["sleep", "60"], session=session) as sb2:
        assert sb2.exec(["test", "-e", probe]).wait() != 0
