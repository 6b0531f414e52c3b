"""Attacks on other processes from inside a sandbox: ptrace and friends,
kill -9 -1, init's memory and fds, another sandbox's processes, the runner's
socket, and descriptors leaked from the runtime. Each must fail, and the host's
processes, the runner and other sandboxes must carry on."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sandlot import Sandbox, Session
from conftest import start_runner, stop
from _attack import EPERM, attack, host_tmp_base, run, sh


# Prefix of every script that signals "everything": it only goes on when it
# runs under sandlot-init in a pid namespace of its own, so that a broken
# sandbox fails the test instead of killing every process on the machine.
IN_PIDNS = (
    '[ "$(tr "\\0" " " < /proc/1/cmdline)" = "sandlot-init " ] && '
    '[ "$(ls -d /proc/[0-9]* | wc -l)" -lt 30 ] || { echo "not in a sandbox pid namespace"; exit 99; }; '
)


def wait_pid(proc, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pid = proc.info().pid
        if pid or time.monotonic() > deadline:
            return pid
        time.sleep(0.02)


def test_ptrace_and_process_memory_access_are_refused(sandbox):
    victim = sandbox.exec(["sleep", "300"])
    pid = wait_pid(victim)
    assert pid
    r = attack(
        sandbox,
        r"""
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_SEIZE = 0, 16, 0x4206
for target in (%d, 1):
    report('attach %%d' %% target, sys_('ptrace', PTRACE_ATTACH, target, 0, 0))
    report('seize %%d' %% target, sys_('ptrace', PTRACE_SEIZE, target, 0, 0))
    buf = ctypes.create_string_buffer(64)
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
    remote = (ctypes.c_void_p * 2)(0x400000, 64)
    report('process_vm_readv %%d' %% target, sys_('process_vm_readv', target, local, 1, remote, 1, 0))
    report('process_vm_writev %%d' %% target, sys_('process_vm_writev', target, local, 1, remote, 1, 0))
    report('kcmp %%d' %% target, sys_('kcmp', os.getpid(), target, 0, 0, 0))
    pidfd = libc.syscall(L(NR['pidfd_open']), L(target), L(0))
    if pidfd >= 0:
        report('pidfd_getfd %%d' %% target, sys_('pidfd_getfd', pidfd, 0, 0))
report('traceme', sys_('ptrace', PTRACE_TRACEME, 0, 0, 0))
"""
        % pid,
    )
    assert r and all(v == EPERM for v in r.values()), r
    # strace / gdb need ptrace: refused too.
    code, _, _ = run(sandbox, f"strace -p {pid} -o /dev/null || gdb -p {pid} -batch")
    assert code != 0
    assert victim.poll() is None  # untouched


def test_init_memory_environment_and_fds_are_out_of_reach(sandbox):
    r = attack(
        sandbox,
        r"""
for f in ('mem', 'environ', 'fd/0', 'fd/3', 'cwd', 'root/etc/hostname', 'exe', 'ns/mnt', 'stack', 'syscall'):
    try:
        fd = os.open('/proc/1/' + f, os.O_RDONLY)
        try:
            os.read(fd, 64)  # stack and syscall check at read time
        finally:
            os.close(fd)
        report(f, 0)
    except OSError as e:
        report(f, e.errno)
""",
    )
    assert r and all(v != 0 for v in r.values()), r
    # init holds exactly 0-2, the control channel and its signalfd: nothing of
    # the runner's (the numbers are listable, the files behind them are not).
    # (The sleep: right after our exec, init may still hold our stdio fds.)
    assert sh(sandbox, "sleep 0.3; ls /proc/1/fd | tr '\\n' ' '") == "0 1 2 3 4 "


def test_no_descriptors_leak_into_sandboxed_processes(session):
    with Sandbox.create(["sleep", "300"], session=session) as sb:
        out = sh(
            sb,
            "ls /proc/self/fd | tr '\\n' ' '; echo; for f in /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2; "
            "do readlink $f; done",
        )
        first, *links = out.splitlines()
        assert first.split() == ["0", "1", "2", "3"], out  # 3: ls's own directory
        for link in links:
            assert link.startswith(("pipe:", "socket:", "/dev/null")), link
        r = attack(sb, "report(' '.join(sorted(os.listdir('/proc/self/fd'), key=int)), 0)\n")
        assert list(r) == ["0 1 2 3"], r
        # The entry command's descriptors too.
        entry_pid = sb.processes()[0].pid
        assert sh(sb, f"ls /proc/{entry_pid}/fd | tr '\\n' ' '") == "0 1 2 "


def test_kill_all_inside_only_kills_that_sandbox(session, runner):
    canary = subprocess.Popen(["sleep", "300"])  # a host process
    try:
        with Sandbox.create(timeout=120, session=session) as a, Sandbox.create(["sleep", "300"], session=session) as b:
            victim = a.exec(["sleep", "300"])
            wait_pid(victim)
            for cmd in ("kill -9 -1; echo done", "kill -9 1; kill -9 0; echo done", "kill -9 -1"):
                code, out, _ = run(a, IN_PIDNS + cmd)
                assert code != 99, out
            assert victim.wait(30) == -signal.SIGKILL
            # The sandbox's init survived (pid 1 ignores signals from inside)...
            assert a.poll() is None and run(a, "true")[0] == 0
            # ...and everything outside it is untouched.
            assert canary.poll() is None
            assert runner.proc.poll() is None and session.health()["ok"]
            assert b.poll() is None and run(b, "true")[0] == 0
            assert "sleep 300" in sh(b, "ps -eo args")
    finally:
        canary.kill()
        canary.wait()


def test_other_sandboxes_processes_are_invisible_and_unsignalable(session):
    tag = str(40000 + int(uuid.uuid4().int % 20000))
    with Sandbox.create(["sleep", tag], session=session) as a, Sandbox.create(timeout=120, session=session) as b:
        a_init = a.info().pid
        assert tag not in sh(b, "ps -eo args; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
        # a's init host pid means nothing inside b (at most some process of b's).
        code, out, _ = run(b, IN_PIDNS + f"kill -9 {a_init}; kill -9 -{a_init}; pkill -9 sleep; kill -9 -1")
        assert code != 99, out
        assert a.poll() is None and "sleep " + tag in sh(a, "ps -eo args")


def test_runner_socket_is_unreachable(session, runner):
    # The test runner's socket and a second runner whose socket, state and log
    # live on the host's root filesystem (visible through the overlay unless
    # masked).
    base = Path(tempfile.mkdtemp(prefix="sandlot-sec-", dir=host_tmp_base()))
    second = start_runner(base)
    try:
        with Session(second.url) as s2:
            for sess, r in ((session, runner), (s2, second)):
                with Sandbox.create(timeout=120, session=sess) as sb:
                    out = attack(
                        sb,
                        r"""
import socket
for path in (%r, %r):
    s = socket.socket(socket.AF_UNIX)
    try_os('connect ' + path, s.connect, path)
    s.close()
report('listing ' + str(len(os.listdir(%r)) if os.path.isdir(%r) else 0), 0)
"""
                        % (str(r.socket), str(r.dir / "sandlotd.sock"), str(r.dir), str(r.dir)),
                    )
                    assert out.pop("listing 0", None) == 0, out
                    assert out and all(v != 0 for v in out.values()), out
                    # Nor through the state dir of the runner.
                    assert sh(sb, f"ls -A {r.state_dir} 2>/dev/null | wc -l") == "0\n"
                    # Unix sockets (abstract ones included) belong to the network
                    # namespace: the runner's is not in this one.
                    assert str(r.socket) not in sh(sb, "cat /proc/net/unix")
    finally:
        stop(second)
        shutil.rmtree(base, ignore_errors=True)
