"""MicroVM sandboxes (isolation="microvm") and their memory snapshots, on real VMs.

Every test here boots or resumes real QEMU microVMs through the test runner.
They skip, with the runner's reason, where the host cannot run microVMs
(no qemu-system-x86, guest not built, not root); on this project's machine
they run. Boots are shared: one original VM per module, and restores from
its memory snapshot (cheap) for everything that ends a VM.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sandlot
from sandlot import Sandbox, SandboxSnapshot
from sandlot.errors import NotFoundError, SandboxError

from conftest import Runner, client_env, run_cli, start_runner, stop

# A process that keeps state only in memory: a random number, a counter
# that a thread increments, and a TCP port that reports both.
SERVER = r"""
import random, socket, threading, time
secret = random.randrange(10**12)
count = 0
def tick():
    global count
    while True:
        count += 1
        time.sleep(0.05)
threading.Thread(target=tick, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000)); s.listen(8)
open("/run/server.ready", "w").write("1")
while True:
    c, _ = s.accept()
    c.sendall(f"{secret} {count}\n".encode()); c.close()
"""

# Ask the server from inside the guest (bash's /dev/tcp: no second Python).
ASK = ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7000 && cat <&3"]


def ask(sb: Sandbox) -> tuple[int, int]:
    p = sb.exec(ASK)
    out = p.stdout.read()
    assert p.wait(timeout=60) == 0, (out, p.stderr.read())
    secret, count = out.split()
    return int(secret), int(count)


@pytest.fixture(scope="module")
def vm_session(session: sandlot.Session) -> sandlot.Session:
    mv = session.health().get("microvm") or {}
    if not mv.get("available"):
        pytest.skip(f"microVMs not available on this host: {mv.get('note')}")
    return session


def heavy_under_tcg(sess: sandlot.Session) -> None:
    """Skip the tests that run several restored guests at once where microVMs
    run under QEMU's emulator (TCG: this CI host's KVM boots only PVM guest
    kernels). There, on 2 shared cores, a guest can take tens of seconds to
    answer and these tests fail by timeout, not by a wrong answer. They run
    with SANDLOT_MICROVM_HEAVY=1, and always where KVM is used."""
    mv = sess.health().get("microvm") or {}
    if mv.get("accel") == "tcg" and not os.environ.get("SANDLOT_MICROVM_HEAVY"):
        pytest.skip("several concurrent TCG guests on this host time out under load; "
                    "run with SANDLOT_MICROVM_HEAVY=1 (they pass on a quiet machine)")


@pytest.fixture(scope="module")
def original(vm_session: sandlot.Session) -> Iterator[Sandbox]:
    """One booted microVM running SERVER, with a file written before any snapshot."""
    sb = Sandbox.create(isolation="microvm", timeout=600, session=vm_session)
    try:
        sb.write_file("/before.txt", b"written before the snapshot\n")
        sb.exec(["/usr/bin/python3", "-c", SERVER])
        deadline = time.monotonic() + 60
        while sb.exec(["test", "-e", "/run/server.ready"]).wait(timeout=60) != 0:
            assert time.monotonic() < deadline, "the server in the guest did not start"
            time.sleep(0.2)
        yield sb
    finally:
        sb.terminate()


@pytest.fixture(scope="module")
def memsnap(original: Sandbox) -> SandboxSnapshot:
    return original.snapshot()


def test_microvm_exec_streams_stdin_env_workdir_and_files(original: Sandbox) -> None:
    assert original.info().isolation == "microvm"
    # its own kernel: Debian's, not the host's
    p = original.exec(["uname", "-r"])
    assert p.stdout.read().strip() != os.uname().release
    # env and workdir
    p = original.exec(["sh", "-c", 'echo "$GREETING from $(pwd)"; echo oops >&2; exit 7'], env={"GREETING": "hello"}, workdir="/usr")
    assert p.wait(timeout=60) == 7
    assert p.stdout.read() == "hello from /usr\n"
    assert p.stderr.read() == "oops\n"
    # stdin, streamed back line by line as it arrives
    p = original.exec(["cat"])
    p.stdin.write("line one\n")
    it = iter(p.stdout)
    assert next(it) == "line one\n"
    p.stdin.write(b"line two\n")
    p.stdin.close()
    assert next(it) == "line two\n"
    assert p.wait(timeout=60) == 0
    # a process that never reads its stdin does not wedge the guest's init
    stuck = original.exec(["sleep", "600"])
    stuck.stdin.write(b"x" * (1 << 20))
    assert original.exec(["echo", "alive"]).stdout.read() == "alive\n"
    stuck.stdin.close()
    # files in and out (binary-safe), and a clear error for a missing one
    blob = bytes(range(256)) * 300
    assert original.write_file("/tmp/blob.bin", blob, mode=0o600) == len(blob)
    assert original.read_file("/tmp/blob.bin") == blob
    assert original.exec(["stat", "-c", "%a", "/tmp/blob.bin"]).stdout.read().strip() == "600"
    with pytest.raises(NotFoundError):
        original.read_file("/no/such/file")
    # a missing program is the exec's error
    with pytest.raises(SandboxError):
        original.exec(["/no/such/program"])


def test_microvm_resources_are_vcpus_and_guest_ram(vm_session: sandlot.Session, memsnap: SandboxSnapshot) -> None:
    # A resumed copy keeps the original's 256 MiB / 1 vCPU (the defaults).
    sb = Sandbox.create(snapshot=memsnap, session=vm_session)
    try:
        mem_kb = int(sb.exec(["awk", "/MemTotal/ {print $2}", "/proc/meminfo"]).stdout.read())
        assert 150 * 1024 < mem_kb <= 256 * 1024
        assert sb.exec(["nproc"]).stdout.read().strip() == "1"
    finally:
        sb.terminate()


def test_memory_snapshot_resumes_running_processes_twice_concurrently(
    vm_session: sandlot.Session, original: Sandbox, memsnap: SandboxSnapshot
) -> None:
    heavy_under_tcg(vm_session)
    assert memsnap.kind == "memory"
    assert memsnap.size and memsnap.size > 1 << 20
    secret, count_before = ask(original)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        copies = list(ex.map(lambda _: Sandbox.create(snapshot=memsnap, session=vm_session), range(2)))
    try:
        answers = [ask(c) for c in copies]
        for s, n in answers:
            assert s == secret  # the same process, with its memory
            assert n >= count_before // 2 and n > 0  # the counter went on, not from zero
        # it keeps counting in each copy
        time.sleep(1)
        assert all(ask(c)[1] > n for c, (_, n) in zip(copies, answers))
        # the files written before the snapshot came along
        assert [c.read_file("/before.txt") for c in copies] == [b"written before the snapshot\n"] * 2
        # each copy is independent: a write in one is not in the other or the original
        copies[0].write_file("/only-in-copy0", b"x")
        assert copies[1].exec(["test", "-e", "/only-in-copy0"]).wait(timeout=60) == 1
        assert original.exec(["test", "-e", "/only-in-copy0"]).wait(timeout=60) == 1
        # terminating one copy leaves the other and the original running
        copies[0].terminate()
        assert ask(copies[1])[0] == secret
        s, n = ask(original)
        assert s == secret and n > count_before
        assert original.poll() is None
    finally:
        for c in copies:
            c.terminate()


def test_memory_snapshot_is_listed_with_kind_and_size(runner: Runner, memsnap: SandboxSnapshot) -> None:
    env = client_env(runner)
    out = run_cli(["snapshot", "ls"], env)
    line = next(ln for ln in out.stdout.splitlines() if memsnap.snapshot_id in ln)
    assert line.split()[1:3] == ["memory", "vm"]
    assert line.split()[3].endswith("M")
    status = run_cli(["runner", "status"], env).stdout
    assert "microvm:   available" in status
    got = SandboxSnapshot.lookup(memsnap.snapshot_id)
    assert got.kind == "memory" and got.storage == "vm" and got.size == memsnap.size


def test_bad_memory_snapshots_give_clear_errors(runner: Runner, vm_session: sandlot.Session, original: Sandbox) -> None:
    heavy_under_tcg(vm_session)
    snap = original.snapshot()
    sdir = runner.state_dir / "snapshots" / snap.snapshot_id
    # truncated RAM image
    ram = sdir / "ram"
    size = ram.stat().st_size
    os.truncate(ram, size // 2)
    with pytest.raises(SandboxError, match="corrupt"):
        Sandbox.create(snapshot=snap, session=vm_session)
    os.truncate(ram, size)
    # a foreign device state (not a QEMU migration stream)
    (sdir / "state").write_bytes(os.urandom(4096))
    with pytest.raises(SandboxError, match="resumed"):
        Sandbox.create(snapshot=snap, session=vm_session)
    # deleted
    snap.delete()
    with pytest.raises(NotFoundError):
        Sandbox.create(snapshot=snap, session=vm_session)
    # and the runner keeps serving
    assert ask(original)[0] > 0
    with Sandbox.create(["echo", "still serving"], session=vm_session) as c:
        assert c.wait(timeout=60) == 0


def _qemu_pid(sb: Sandbox) -> int:
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 .*{sb.sandbox_id}/"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out
    return pids[0]


def test_guest_panic_and_killed_vmm_end_the_sandbox(vm_session: sandlot.Session, memsnap: SandboxSnapshot) -> None:
    panicking = Sandbox.create(snapshot=memsnap, session=vm_session)
    killed = Sandbox.create(snapshot=memsnap, session=vm_session)
    try:
        panicking.exec(["sh", "-c", "echo c > /proc/sysrq-trigger"])
        os.kill(_qemu_pid(killed), signal.SIGKILL)
        for sb in (panicking, killed):
            code = sb.wait(timeout=60)  # reported as ended, not hung
            assert code != 0
            assert sb.info().status == "failed"
    finally:
        panicking.terminate()
        killed.terminate()


def test_microvm_timeout_kills_it(vm_session: sandlot.Session, memsnap: SandboxSnapshot) -> None:
    sb = Sandbox.create(snapshot=memsnap, timeout=2, session=vm_session)
    try:
        assert sb.wait(timeout=60) == -9
        assert sb.info().status == "timeout"
    finally:
        sb.terminate()


def _qemu_pids(sandbox_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 .*{sandbox_id}/"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_terminate_leaves_no_qemu_behind(vm_session: sandlot.Session, memsnap: SandboxSnapshot) -> None:
    """QEMU drops the parent-death signal when it changes uid (-runas), so only
    the sandbox's cgroup reaches it once its monitor is gone: a terminated or
    timed-out microVM must leave no QEMU running (each burns CPU under TCG)."""
    boxes = [Sandbox.create(snapshot=memsnap, session=vm_session),
             Sandbox.create(snapshot=memsnap, timeout=2, session=vm_session)]
    ids = [b.sandbox_id for b in boxes]
    assert all(_qemu_pids(i) for i in ids)
    boxes[0].terminate()
    assert boxes[1].wait(timeout=60) == -9
    boxes[1].terminate()
    deadline = time.monotonic() + 20
    while any(_qemu_pids(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [i for i in ids if _qemu_pids(i)] == []


def test_unavailable_microvm_is_a_clear_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = Path(tempfile.mkdtemp(prefix="sl-novm-", dir="/tmp"))
    empty = base / "no-guest"
    empty.mkdir()
    # A runner whose default is microvm, on a host where microVMs cannot run.
    r = start_runner(base, extra=["--microvm-dir", str(empty), "--default-isolation", "microvm"])
    try:
        s = sandlot.Session(r.url)
        mv = s.health()["microvm"]
        assert mv["available"] is False and "not built" in mv["note"]
        assert mv["default_isolation"] == "microvm"
        with pytest.raises(SandboxError, match="microvm.*not available.*not built"):
            Sandbox.create(isolation="microvm", session=s)
        with pytest.raises(SandboxError, match="microvm.*not available"):
            Sandbox.create(["true"], session=s)  # the runner-wide default applies
        with pytest.raises(ValueError):
            Sandbox.create(isolation="vm", session=s)
        status = run_cli(["runner", "status"], client_env(r)).stdout
        assert "microvm:   unavailable" in status and "not built" in status
        with Sandbox.create(["true"], isolation="container", session=s) as sb:  # containers still work
            assert sb.wait(timeout=60) == 0
            assert sb.info().isolation == "container"
    finally:
        stop(r)
