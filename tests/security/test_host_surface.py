"""Attacks on what a default sandbox shares with the host: terminals to inject
into, raw sockets, services listening on the host's loopback (TCP and abstract
unix sockets, the containerd-shim CVE-2020-15257 pattern), and secrets leaking
into the environment of processes outside the sandbox."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time

from _attack import EPERM, attack, run
from sandlot import Sandbox, Secret


def test_terminal_injection_is_refused(sandbox):
    # TIOCSTI pushes bytes into a terminal's input queue: with a terminal shared
    # with the host it types commands into the host's shell (CVE-2017-5226).
    out = attack(
        sandbox,
        r"""
import errno, fcntl, termios
report("session_leader", 0 if os.getsid(0) == os.getpid() else 1)
try_os("open_dev_tty", os.open, "/dev/tty", os.O_RDWR)
m = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
libc.grantpt(m); libc.unlockpt(m)
libc.ptsname.restype = ctypes.c_char_p
s = os.open(libc.ptsname(m).decode(), os.O_RDWR | os.O_NOCTTY)
try_os("tiocsti_pty", fcntl.ioctl, s, termios.TIOCSTI, b"x")
try_os("tiocsti_stdout", fcntl.ioctl, 1, termios.TIOCSTI, b"x")
try_os("tioclinux", fcntl.ioctl, s, 0x541C, b"\x06")
""",
    )
    assert out["session_leader"] == 0, "each sandboxed process must lead its own session"
    assert out["open_dev_tty"] != 0, "a sandboxed process has no controlling terminal"
    assert out["tiocsti_pty"] == EPERM, out
    assert out["tiocsti_stdout"] != 0, out
    assert out["tioclinux"] == EPERM, out


def test_raw_sockets_and_host_loopback_services_are_unreachable(sandbox):
    # Services on the host's loopback: a TCP listener and an abstract unix
    # socket (abstract names are per network namespace; containerd-shim's API
    # was one, CVE-2020-15257). Neither may be reachable, and neither may see a
    # connection attempt.
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    port = tcp.getsockname()[1]
    abstract = "sandlot-test-" + secrets.token_hex(8)
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uds.bind("\0" + abstract)
    uds.listen(8)
    accepted: list[str] = []

    def watch(sock: socket.socket, name: str) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(name)
            conn.close()

    stop = threading.Event()
    threads = [threading.Thread(target=watch, args=(s, n), daemon=True) for s, n in ((tcp, "tcp"), (uds, "unix"))]
    for t in threads:
        t.start()
    try:
        # The probe itself works on the host: the test can fail.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        host_unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host_unix.connect("\0" + abstract)
        host_unix.close()
        out = attack(
            sandbox,
            r"""
import socket
def conn(name, fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr); report(name, 0)
    except OSError as e:
        report(name, e.errno or 110)
    finally:
        s.close()
try_os("raw_icmp", socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
try_os("raw_tcp", socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
try_os("packet", socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
conn("tcp_host_loopback", socket.AF_INET, ("127.0.0.1", %d))
conn("abstract_unix", socket.AF_UNIX, "\0%s")
"""
            % (port, abstract),
        )
        time.sleep(0.5)  # let the watchers see anything that did arrive
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        tcp.close()
        uds.close()
    assert out["raw_icmp"] == EPERM and out["raw_tcp"] == EPERM and out["packet"] == EPERM, out
    assert out["tcp_host_loopback"] != 0, "the sandbox reached a service on the host's loopback"
    assert out["abstract_unix"] != 0, "the sandbox reached the host's abstract unix socket"
    # Only the host's own two probes were accepted.
    assert sorted(accepted) == ["tcp", "unix"], accepted


def test_secrets_never_reach_host_process_environments(session, runner):
    value = "sl-secret-" + secrets.token_hex(12)
    with Sandbox.create(["sleep", "300"], secrets=[Secret.from_dict({"SL_PROBE": value})], session=session) as sb:
        # It is there inside ...
        code, out, _ = run(sb, 'printf %s "$SL_PROBE"')
        assert code == 0 and out == value
        # The sandbox's own processes, told apart by their cgroup (named after the id).
        def in_sandbox(pid: str) -> bool:
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    return sb.sandbox_id in f.read()
            except OSError:
                return False

        inside = [pid for pid in filter(str.isdigit, os.listdir("/proc")) if in_sandbox(pid)]
        assert len(inside) >= 2, "init and the entry command are in the sandbox's cgroup"
        # ... and in no process outside the sandbox: not the runner, not its
        # helpers, not this client (environment and command line alike).
        needle = value.encode()
        scanned = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if pid in inside:
                continue
            for what in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{what}", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                scanned += 1
                assert needle not in data, f"the secret is in /proc/{pid}/{what} outside the sandbox"
        assert scanned > 10
        # Nor in listings or the CLI.
        ps = subprocess.run([sys.executable, "-m", "sandlot", "ps"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SANDLOT_URL": runner.url})
        assert ps.returncode == 0, ps.stderr
        assert sb.sandbox_id in ps.stdout and value not in ps.stdout + ps.stderr
        assert value not in repr(sb.info())
    assert value.encode() not in runner.log_file.read_bytes()
