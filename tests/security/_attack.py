"""Helpers for the attack tests: run a command or a small Python attack program
inside a sandbox and collect what the kernel answered.

Attack programs use raw syscalls through ctypes (``python3`` of the host image
runs them), so what is tested is the kernel's verdict on the syscall itself,
not a library's wrapper. Each program prints ``name errno`` lines (``0`` when
the call succeeded); :func:`attack` returns them as a dict.
"""

from __future__ import annotations

import errno
import hashlib
import os
import platform
from typing import Dict, Optional, Sequence, Tuple, Union

import pytest

from sandlot import Sandbox

def host_tmp_base() -> str:
    """Where tests make directories on the host's root filesystem (which sandboxes
    on the host image see through the overlay, unlike /tmp): /var/lib, or
    ``$SANDLOT_TEST_HOST_DIR``, which tests/test_rootless.py points at a
    directory its unprivileged user may write."""
    return os.environ.get("SANDLOT_TEST_HOST_DIR") or "/var/lib"


EPERM = errno.EPERM
ENOSYS = errno.ENOSYS
SIGSYS = 31

# Syscall numbers of the attacks (x86_64; the sandbox runs the host's
# architecture). Other architectures skip the raw-syscall tests.
NR_X86_64 = {
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "unshare": 272,
    "setns": 308,
    "clone": 56,
    "clone3": 435,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "reboot": 169,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "settimeofday": 164,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "adjtimex": 159,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "iopl": 172,
    "ioperm": 173,
    "swapon": 167,
    "swapoff": 168,
    "personality": 135,
    "acct": 163,
    "syslog": 103,
    "io_uring_setup": 425,
    "fsopen": 430,
    "open_tree": 428,
    "move_mount": 429,
    "fsmount": 432,
    "mount_setattr": 442,
    "getpid": 39,
}


def syscall_numbers() -> Dict[str, int]:
    if platform.machine() != "x86_64":
        pytest.skip("the attack programs carry x86_64 syscall numbers")
    return NR_X86_64


PRELUDE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
NR = %(nr)r

def arg(a):
    return L(a) if isinstance(a, int) else a

def sys_(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(L(NR[name]), *[arg(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()

def call(fn, *args):
    ctypes.set_errno(0)
    r = fn(*[arg(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()

def report(name, err):
    print(name, err, flush=True)

def try_os(name, fn, *args):
    try:
        fn(*args)
        report(name, 0)
    except OSError as e:
        report(name, e.errno)
"""


def run(
    sb: Sandbox,
    cmd: Union[str, Sequence[str]],
    workdir: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    timeout: float = 60,
) -> Tuple[int, str, str]:
    """Run cmd to completion inside sb: (exit code, stdout, stderr)."""
    p = sb.exec(list(cmd) if not isinstance(cmd, str) else ["/bin/sh", "-c", cmd], env=env, workdir=workdir)
    code = p.wait(timeout)
    return code, p.stdout.read(), p.stderr.read()


def sh(sb: Sandbox, script: str) -> str:
    """Run a shell script that must succeed; its stdout."""
    code, out, err = run(sb, script)
    assert code == 0, (script, code, out, err)
    return out


def attack(sb: Sandbox, body: str, expect_code: int = 0) -> Dict[str, int]:
    """Run PRELUDE + body with python3 inside sb; the reported errnos by name."""
    code = PRELUDE % {"nr": syscall_numbers()} + body
    rc, out, err = run(sb, ["python3", "-c", code])
    assert rc == expect_code, (rc, out, err)
    result: Dict[str, int] = {}
    for line in out.splitlines():
        name, _, value = line.rpartition(" ")
        result[name] = int(value)
    return result


def file_digest(path: str) -> Tuple[int, int, str]:
    """(size, mode, sha256) of a host file, to show it was not changed."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return st.st_size, st.st_mode, h.hexdigest()
