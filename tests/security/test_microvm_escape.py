"""The container tier's core escape cases, against the microVM tier, and the
confinement of its VMM (docs/security.md, "MicroVM tier").

Inside a microVM the attacker is root of its own kernel, so the claims are
about what that kernel can reach: the host's secrets are not in its root
image, writes land in guest RAM, its block device is read-only, it has no
network device, the runner's file API goes through the guest, secrets do not
appear in any host process, and QEMU itself runs unprivileged (uid nobody,
no capabilities, seccomp, its own namespaces, chrooted into the sandbox's
directory). One VM boots for the module; the rest are resumed copies.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot import Sandbox, Secret
from _attack import file_digest, host_tmp_base


def sh(sb: Sandbox, script: str) -> tuple[int, str, str]:
    p = sb.exec(["/bin/sh", "-c", script])
    out, err = p.stdout.read(), p.stderr.read()
    return p.wait(timeout=120), out, err


@pytest.fixture(scope="module")
def vm(session: sandlot.Session) -> Iterator[Sandbox]:
    mv = session.health().get("microvm") or {}
    if not mv.get("available"):
        pytest.skip(f"microVMs not available on this host: {mv.get('note')}")
    sb = Sandbox.create(isolation="microvm", timeout=600, session=session)
    try:
        yield sb
    finally:
        sb.terminate()


def qemu_pid(sb: Sandbox) -> int:
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 .*{sb.sandbox_id}/"], capture_output=True, text=True)
    pids = out.stdout.split()
    assert len(pids) == 1, out
    return int(pids[0])


def test_host_secrets_and_runner_state_are_not_in_the_guest(vm: Sandbox, runner) -> None:
    code, out, _ = sh(
        vm,
        "for p in /etc/shadow /etc/gshadow /root /home /work /etc/ssl/private "
        f"{runner.state_dir} {runner.socket}; do test -e $p && echo FOUND $p; done; "
        "ls /etc/ssh/*_key 2>/dev/null; echo done",
    )
    assert code == 0 and out.strip() == "done", out
    # the file API resolves inside the guest too, with root's privileges there
    with pytest.raises(sandlot.NotFoundError):
        vm.read_file("/../../../etc/shadow")


def test_writes_land_in_the_guest_and_the_image_is_read_only(vm: Sandbox) -> None:
    host_dir = Path(tempfile.mkdtemp(prefix="sandlot-sec-vm-", dir=host_tmp_base()))
    try:
        (host_dir / "f").write_text("host")
        before = file_digest("/usr/bin/env")
        code, out, err = sh(
            vm,
            f"mkdir -p {host_dir} && echo pwned > {host_dir}/f && echo pwned > /usr/bin/env && echo wrote; "
            # the root image's block device: writing it must fail
            "dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=notrunc 2>&1; echo dd=$?; "
            "blockdev --getro /dev/vda",
        )
        assert "wrote" in out, (out, err)
        assert "dd=0" not in out and out.strip().endswith("1"), out
        assert (host_dir / "f").read_text() == "host"
        assert file_digest("/usr/bin/env") == before
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def test_guest_has_no_network_device(vm: Sandbox) -> None:
    code, out, _ = sh(vm, "ls /sys/class/net")
    assert code == 0 and out.split() == ["lo"]
    code, out, _ = sh(vm, "exec 3<>/dev/tcp/10.0.2.2/22 && echo connected || echo refused")
    assert "connected" not in out


def test_another_vms_files_are_unreachable(vm: Sandbox, session: sandlot.Session) -> None:
    vm.write_file("/mine.txt", b"only in vm")
    snap = vm.snapshot()
    try:
        copy = Sandbox.create(snapshot=snap, session=session)
        try:
            copy.write_file("/copy-only.txt", b"copy")
            assert sh(vm, "test -e /copy-only.txt")[0] == 1
            assert sh(copy, f"ls /proc/*/root 2>/dev/null | grep -c {vm.sandbox_id}")[1].strip() == "0"
        finally:
            copy.terminate()
    finally:
        snap.delete()


def test_secrets_do_not_reach_host_processes(session: sandlot.Session, vm: Sandbox) -> None:
    value = "sl-vm-secret-" + secrets.token_hex(12)
    snap = vm.snapshot()
    sb = Sandbox.create(["sleep", "300"], snapshot=snap, secrets=[Secret.from_dict({"SL_PROBE": value})], session=session)
    try:
        p = sb.exec(["/bin/sh", "-c", 'printf %s "$SL_PROBE"'])
        assert p.stdout.read() == value
        needle = value.encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for what in ("environ", "cmdline"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                assert needle not in data, f"secret in /proc/{pid}/{what}"
    finally:
        sb.terminate()
        snap.delete()


def test_vmm_is_confined(vm: Sandbox, runner) -> None:
    pid = qemu_pid(vm)
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    nobody = 65534
    assert [int(x) for x in fields["Uid"].split()] == [nobody] * 4
    assert int(fields["CapEff"].strip(), 16) == 0 and int(fields["CapPrm"].strip(), 16) == 0
    assert fields["Seccomp"].strip() == "2"  # QEMU's -sandbox filter
    for ns in ("net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # chrooted into its sandbox's own directory: nothing else of the host
    assert os.readlink(f"/proc/{pid}/root") == str(runner.state_dir / "sandboxes" / vm.sandbox_id)
    # its open files: the VM's own RAM, disk image, sockets and logs, /dev/kvm
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("/") and not target.startswith("/dev/"):
            assert (
                vm.sandbox_id in target or target.endswith("hostroot.erofs") or target.startswith("/proc/")
            ), target
