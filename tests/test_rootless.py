"""Rootless mode: the suite's core cases, run as an unprivileged user against a
runner that user starts.

Run as root (as CI does), this module creates the user ``sandlot-ci`` if it is
missing, copies the built package, the tests and pytest to a fresh directory
that user can read (the checkout and the venv's interpreter may sit where it
cannot, e.g. under /root), and runs, as that user through ``runuser``, pytest
on the cases listed in CORE_CASES (taken unchanged from the suite) plus
tests/rootless_cases.py. Their ``runner`` fixture (conftest.py) then starts
``sandlotd`` as that user: a rootless runner. Each case becomes one test here
that passes only if that case passed in the unprivileged run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sandlot
from conftest import sanitizer_env

USER = "sandlot-ci"
TESTS = Path(__file__).resolve().parent

#: The suite's own cases that must hold in rootless mode too. Left out, and
#: why: snapshots (they freeze through a cgroup freezer, which a runner
#: without a delegated cgroup lacks: a clear error), the setuid test (it
#: installs a binary in /usr/local/bin, which root inside may not write in
#: rootless mode), the global /proc modes test (it runs `unshare` on the host,
#: which needs root), the limits tests (nothing to enforce; rootless_cases.py
#: checks the refusal instead), and the client-interpreter test (it expects
#: the interpreter's prefix to be read-only, true for a venv under /root but
#: not for the system Python this run may have to use).
CORE_CASES = [
    "test_sandbox.py::test_entry_exit_code_and_output",
    "test_sandbox.py::test_exec_output_and_exit_codes",
    "test_sandbox.py::test_exec_shares_process_namespace_with_entry",
    "test_sandbox.py::test_env_and_workdir",
    "test_sandbox.py::test_missing_command_is_spawn_error_naming_it",
    "test_sandbox.py::test_terminate_kills_everything_and_is_idempotent",
    "test_sandbox.py::test_sandbox_timeout_kills",
    "test_sandbox.py::test_lookup_from_a_second_process",
    "test_sandbox.py::test_secrets_visible_inside_but_nowhere_else",
    "test_sandbox.py::test_volumes_persist_across_sandboxes",
    "test_sandbox.py::test_read_and_write_files",
    "test_sandbox.py::test_stdin_to_cat",
    "test_sandbox.py::test_image_from_directory",
    "test_isolation.py::test_pid1_is_sandlot_init_not_the_users_command",
    "test_isolation.py::test_host_processes_are_invisible",
    "test_isolation.py::test_only_loopback_network",
    "test_isolation.py::test_hostname_is_the_sandbox_not_the_host",
    "test_isolation.py::test_writes_inside_never_reach_the_host",
    "test_isolation.py::test_sandboxes_do_not_see_each_other",
    "test_isolation.py::test_privileges_are_dropped",
    "test_session.py::test_embedded_default_autostarts_and_outlives_the_client",
    "security/test_kernel_surface.py::test_capabilities_are_reduced_in_exec_processes",
    "security/test_kernel_surface.py::test_capabilities_are_reduced_in_the_entry_command",
    "security/test_kernel_surface.py::test_mount_is_refused_and_proc_sys_stays_read_only",
    "security/test_kernel_surface.py::test_unshare_and_namespaced_clone_are_refused",
    "security/test_kernel_surface.py::test_setns_into_init_host_and_own_namespaces_is_refused",
    "security/test_kernel_surface.py::test_sysrq_trigger_and_kernel_sysctls_are_read_only",
    "security/test_kernel_surface.py::test_kernel_memory_is_not_readable",
    "security/test_kernel_surface.py::test_device_nodes_cannot_be_created",
    "security/test_kernel_surface.py::test_kernel_modules_cannot_be_loaded_or_removed",
    "security/test_kernel_surface.py::test_file_handles_cannot_reach_the_host_filesystem",
    "security/test_kernel_surface.py::test_bpf_userfaultfd_perf_and_io_uring_are_refused",
    "security/test_kernel_surface.py::test_keyring_is_unreachable",
    "security/test_kernel_surface.py::test_clock_cannot_be_changed",
    "security/test_process_escape.py::test_ptrace_and_process_memory_access_are_refused",
    "security/test_process_escape.py::test_init_memory_environment_and_fds_are_out_of_reach",
    "security/test_process_escape.py::test_no_descriptors_leak_into_sandboxed_processes",
    "security/test_process_escape.py::test_kill_all_inside_only_kills_that_sandbox",
    "security/test_process_escape.py::test_other_sandboxes_processes_are_invisible_and_unsignalable",
    "security/test_process_escape.py::test_runner_socket_is_unreachable",
    "security/test_filesystem_escape.py::test_host_secrets_are_hidden",
    "security/test_filesystem_escape.py::test_home_is_empty_but_writable",
    "security/test_filesystem_escape.py::test_device_node_metadata_changes_never_reach_the_host",
    "security/test_filesystem_escape.py::test_writes_outside_the_root_leave_the_host_unchanged",
    "security/test_filesystem_escape.py::test_file_api_resolves_paths_inside_the_sandbox",
    "security/test_filesystem_escape.py::test_runtime_binaries_cannot_be_overwritten",
    "security/test_filesystem_escape.py::test_workdir_through_proc_fd_stays_inside",
    "security/test_filesystem_escape.py::test_volume_at_a_symlinked_path_is_refused",
    "security/test_filesystem_escape.py::test_volume_under_an_image_symlink_to_the_host_is_refused",
    "security/test_filesystem_escape.py::test_symlink_planted_in_a_volume_does_not_redirect_a_mount",
    "security/test_filesystem_escape.py::test_another_sandboxs_files_are_unreachable",
]


def _rootless_case_names() -> list[str]:
    tree = ast.parse((TESTS / "rootless_cases.py").read_text())
    return [
        f"rootless_cases.py::{n.name}"
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    ]


#: Cases that need a delegated cgroup: run in a second pass, inside one.
DELEGATED_CASES = [
    "rootless_cases.py::test_a_delegated_cgroup_holds_every_sandbox",
    "rootless_cases.py::test_snapshots_work_in_a_delegated_cgroup",
    "rootless_cases.py::test_snapshots_of_a_directory_image_work_in_a_delegated_cgroup",
]
ALL_CASES = CORE_CASES + [c for c in _rootless_case_names() if c not in DELEGATED_CASES]

#: Passed on to the unprivileged run (`./dev asan`).

#: Pure-Python modules the unprivileged pytest needs besides sandlot.
_MODULES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py", "pytest_timeout", "cloudpickle")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="creates and switches to an unprivileged user: run as root (CI does)"
)


@dataclass
class UnprivilegedRun:
    """The outcome of the unprivileged pytest run."""

    returncode: int
    output: str
    outcomes: dict[str, list[tuple[str, str]]]  # case -> [(outcome, message)] (several if parametrized)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", USER],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return pwd.getpwnam(USER)


def _copy_module(name: str, dst: Path) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        if name in ("py", "pytest_timeout"):
            return  # optional: pytest 8 vendors py, the timeout plugin is only a safety net
        raise RuntimeError(f"module {name} is missing from the test environment")
    if spec.submodule_search_locations:
        src = Path(list(spec.submodule_search_locations)[0])
        shutil.copytree(src, dst / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(spec.origin, dst)


def _runuser() -> str:
    # util-linux's runuser, in sbin (which a test's PATH may lack).
    for cand in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("runuser (util-linux) is missing")


def _as_user(argv: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([_runuser(), "-u", USER, "--", *argv], stdin=subprocess.DEVNULL, **kw)


def _interpreter() -> str:
    """A Python of this version the unprivileged user can run (ours may sit under /root)."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for cand in (sys.executable, "/usr/bin/python3", shutil.which("python3"), f"/usr/bin/python{want}"):
        if not cand:
            continue
        r = _as_user(
            [cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
        )
        if r.returncode == 0 and r.stdout.strip() == want:
            return cand
    raise RuntimeError(f"no Python {want} that user {USER} may run (tried {sys.executable} and /usr/bin/python3)")


def _parse_junit(path: Path) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        # classname "tests.security.test_kernel_surface", name "test_x[param]"
        mod = tc.get("classname", "").split(".")
        rel = "/".join(mod[1:]) + ".py" if mod and mod[0] == "tests" else "/".join(mod) + ".py"
        fn = tc.get("name", "").split("[")[0]
        outcome, msg = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = tc.find(kind)
            if el is not None:
                outcome, msg = kind, (el.get("message") or "") + "\n" + (el.text or "")
                break
        out.setdefault(f"{rel}::{fn}", []).append((outcome, msg))
    return out


@dataclass
class Prepared:
    """What the unprivileged runs share: a readable copy of everything, and how to start pytest."""

    work: Path
    env: dict[str, str]
    argv: list[str]  # the interpreter and pytest's options, without the cases

    def run(self, cases: list[str], extra_env: dict[str, str] | None = None, cgroup: Path | None = None) -> UnprivilegedRun:
        """Run cases as the user (with its processes in ``cgroup`` if given)."""
        junit = self.work / "junit.xml"
        junit.unlink(missing_ok=True)
        argv = [_runuser(), "-u", USER, "--", *self.argv, f"--junitxml={junit}", *("tests/" + c for c in cases)]
        if cgroup is not None:
            # Into the delegated cgroup before dropping root: the user may not
            # move itself there (that needs write access to the common parent).
            argv = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]
        env = {**self.env, **(extra_env or {})}
        r = subprocess.run(
            argv, cwd=self.work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800
        )
        outcomes = _parse_junit(junit) if junit.exists() else {}
        return UnprivilegedRun(r.returncode, r.stdout + r.stderr, outcomes)


@pytest.fixture(scope="module")
def prepared() -> Iterator[Prepared]:
    user = _ensure_user()
    work = Path(tempfile.mkdtemp(prefix="sandlot-rootless-"))
    # On the host's root filesystem (not /tmp: a tmpfs inside sandboxes), for
    # the tests that need host files a sandbox can see. Owned by the user and
    # right below /var/lib (the top of one of the host image's overlays), so
    # writing below it copies up no directory of another owner, which the
    # kernel cannot do in a user namespace (rootless_cases.py shows that).
    host = Path(tempfile.mkdtemp(prefix="sandlot-rootless-", dir="/var/lib"))
    try:
        py = work / "py"
        py.mkdir()
        shutil.copytree(
            Path(sandlot.__file__).resolve().parent, py / "sandlot", ignore=shutil.ignore_patterns("__pycache__")
        )
        for m in _MODULES:
            _copy_module(m, py)
        shutil.copytree(TESTS, work / "tests", ignore=shutil.ignore_patterns("__pycache__", "c", "*.pyc"))
        (work / "pytest.ini").write_text("[pytest]\naddopts = -ra -p no:cacheprovider\n")
        # Readable by the user, writable only where it must write (the junit
        # report): the package it runs cannot be changed by it.
        for p in [work, *work.rglob("*")]:
            if not p.is_symlink():
                mode = p.stat().st_mode
                p.chmod(mode | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if mode & 0o100 else 0))
        os.chown(work, user.pw_uid, user.pw_gid)
        work.chmod(0o755)
        os.chown(host, user.pw_uid, user.pw_gid)
        host.chmod(0o755)
        probe = host / "root-only"
        probe.write_bytes(b"root's secret\n")
        probe.chmod(0o600)
        # A directory of the user's below one of root's, for the copy-up case.
        nested = host / "root-dir"
        nested.mkdir(mode=0o755)
        (nested / "user-dir").mkdir(mode=0o755)
        os.chown(nested / "user-dir", user.pw_uid, user.pw_gid)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(py),
            "PYTHONDONTWRITEBYTECODE": "1",
            "CI": "true",
            "SANDLOT_TEST_HOST_DIR": str(host),
            "SANDLOT_ROOTLESS_PROBE": str(probe),
        }
        # Under `./dev asan` the extension needs the sanitizer runtime preloaded.
        env.update(sanitizer_env())
        plugins = ["-p", "pytest_timeout", "--timeout", "300"] if (py / "pytest_timeout.py").exists() else []
        yield Prepared(work, env, [_interpreter(), "-m", "pytest", "-q", *plugins])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(host, ignore_errors=True)


@pytest.fixture(scope="module")
def unprivileged_run(prepared: Prepared) -> UnprivilegedRun:
    return prepared.run(ALL_CASES)


def _cgroup2_own_dir() -> Path | None:
    """This process's own directory in the cgroup2 hierarchy (pure v2 or hybrid), or None."""
    mnt = root = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[:1] == ["cgroup2"]:
                fields = pre.split()
                root, mnt = fields[3], fields[4]
                break
    if mnt is None or root is None:
        return None
    with open("/proc/self/cgroup") as f:
        own = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    if own is None or not (own == root or own.startswith(root.rstrip("/") + "/") or root == "/"):
        return None
    rel = own[len(root) :] if root != "/" else own
    return Path(mnt) / rel.lstrip("/")


@pytest.fixture(scope="module")
def delegated_run(prepared: Prepared) -> Iterator[UnprivilegedRun]:
    base = _cgroup2_own_dir()
    if base is None:
        pytest.skip("no cgroup2 hierarchy on this host to delegate a subtree from")
    user = pwd.getpwnam(USER)
    cg = base / f"sandlot-rootless-{os.getpid()}"
    try:
        cg.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup to delegate ({cg}: {exc.strerror})")
    try:
        # Delegation as systemd does it: the directory and its process and
        # subtree files belong to the user.
        for p in (cg, cg / "cgroup.procs", cg / "cgroup.threads", cg / "cgroup.subtree_control"):
            if p.exists():
                os.chown(p, user.pw_uid, user.pw_gid)
        yield prepared.run(DELEGATED_CASES, {"SANDLOT_ROOTLESS_DELEGATED": str(cg)}, cgroup=cg)
    finally:
        # Leaves first; the runner removed each sandbox's own cgroup.
        for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            cg.rmdir()
        except OSError:
            pass


def test_the_unprivileged_run_passed_every_case(unprivileged_run: UnprivilegedRun) -> None:
    tail = unprivileged_run.output[-6000:]
    assert unprivileged_run.returncode == 0, tail
    missing = [c for c in ALL_CASES if c not in unprivileged_run.outcomes]
    assert not missing, f"cases that did not run: {missing}\n{tail}"


def _assert_passed(run: UnprivilegedRun, case: str, where: str) -> None:
    results = run.outcomes.get(case)
    assert results, f"{case} did not run (status {run.returncode}):\n{run.output[-3000:]}"
    bad = [(o, m) for o, m in results if o != "passed"]
    assert not bad, f"{case} as {USER}{where}: {bad[0][0]}\n{bad[0][1][-3000:]}"


@pytest.mark.parametrize("case", ALL_CASES)
def test_case_passes_as_an_unprivileged_user(unprivileged_run: UnprivilegedRun, case: str) -> None:
    _assert_passed(unprivileged_run, case, "")


@pytest.mark.parametrize("case", DELEGATED_CASES)
def test_case_passes_in_a_delegated_cgroup(delegated_run: UnprivilegedRun, case: str) -> None:
    _assert_passed(delegated_run, case, " in a delegated cgroup")
