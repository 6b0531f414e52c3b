"""The embedded default runner: where it lives, how it is started and stopped.

With neither ``SANDLOT_URL`` nor an explicit ``base_url``, sandlot talks to a
runner of the current user on a unix socket inside the *runtime directory*:

* ``$XDG_RUNTIME_DIR/sandlot`` when ``XDG_RUNTIME_DIR`` is set and writable,
* otherwise ``/tmp/sandlot-<uid>``.

The directory is created with mode 0700 and refused when it is owned by someone
else or is group/world-writable (another user could then swap the socket).
Inside it::

    sandlotd.sock   the runner's unix socket
    sandlotd.pid    its pid file
    sandlotd.log    its log
    state/          images, volumes, per-sandbox directories
    start.lock      flock(2)ed while a client starts the runner, so that
                    concurrent clients start exactly one

The runner binary is ``sandlot/_bin/sandlotd`` inside the installed package,
or ``$SANDLOT_RUNNER_BIN``. It runs as a daemon in its own session and outlives
the client that started it, so that other processes can ``Sandbox.lookup`` the
sandboxes it holds.

Example:
    >>> paths = runtime_paths("/tmp/sandlot-doc-example")
    >>> paths.socket.name, paths.url.startswith("unix:///tmp/sandlot-doc-example/")
    ('sandlotd.sock', True)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = [
    "RuntimePaths",
    "runtime_dir",
    "runtime_paths",
    "runner_binary",
    "start_runner",
    "stop_runner",
    "read_pid",
]

log = logging.getLogger("sandlot")

#: Environment variables passed on to a runner started by a client. Everything
#: else (cloud credentials, tokens, ...) stays out of the long-lived daemon.
_SOCK_PATH_MAX = 107

_RUNNER_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "XDG_RUNTIME_DIR", "TZ")


@dataclass(frozen=True)
class RuntimePaths:
    """Files of the embedded runner inside one runtime directory."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "sandlotd.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_file(self) -> Path:
        return self.root / "sandlotd.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "sandlotd.pid"

    @property
    def lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def _secure_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 if needed; refuse one others could tamper with."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(
            f"sandlot runtime dir {path} is not a directory (a symlink or file is in the way); "
            "remove it, or set XDG_RUNTIME_DIR or SANDLOT_URL"
        )
    if st.st_uid != os.geteuid():
        raise PermissionError(
            f"sandlot runtime dir {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
            "refusing to use it: remove it, or set XDG_RUNTIME_DIR or SANDLOT_URL"
        )
    if st.st_mode & 0o022:
        raise PermissionError(
            f"sandlot runtime dir {path} has mode {stat.S_IMODE(st.st_mode):04o} (group/world-writable); "
            f"refusing to use it: `chmod 700 {path}` or remove it"
        )


def runtime_dir(create: bool = True) -> Path:
    """Return the runtime directory of the embedded runner (created 0700 if ``create``).

    ``$XDG_RUNTIME_DIR/sandlot`` if that is usable (set, an absolute writable
    directory, short enough for a unix socket path), else ``/tmp/sandlot-<uid>``.

    Raises PermissionError when an existing directory is unsafe to use.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR") or ""
    usable = os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK)
    # A unix socket path must fit in sockaddr_un (107 bytes + NUL).
    if usable and len(os.fsencode(os.path.join(xdg, "sandlot", "sandlotd.sock"))) <= _SOCK_PATH_MAX:
        root = Path(xdg) / "sandlot"
    else:
        root = Path("/tmp") / f"sandlot-{os.geteuid()}"
    if create:
        _secure_dir(root)
    return root


def runtime_paths(root: str | os.PathLike[str] | None = None, create: bool = False) -> RuntimePaths:
    """Paths of the embedded runner under ``root`` (default: :func:`runtime_dir`)."""
    if root is None:
        return RuntimePaths(runtime_dir(create=create))
    path = Path(root)
    if create:
        _secure_dir(path)
    return RuntimePaths(path)


def runner_binary() -> str:
    """Path of the ``sandlotd`` executable: ``$SANDLOT_RUNNER_BIN`` or the packaged one.

    Raises FileNotFoundError saying how to get one.
    """
    env = os.environ.get("SANDLOT_RUNNER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise FileNotFoundError(f"SANDLOT_RUNNER_BIN={env} is not an executable file")
        return env
    path = Path(__file__).resolve().parent / "_bin" / "sandlotd"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"the sandlot runner binary is missing ({path}); reinstall sandlot with `pip install .` "
            "(it builds sandlotd), or point SANDLOT_RUNNER_BIN at one"
        )
    return str(path)


def read_pid(paths: RuntimePaths) -> int | None:
    """The pid in the runner's pid file, or None if there is none."""
    try:
        text = paths.pidfile.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _is_running_sandlotd(pid: int) -> bool:
    """True if pid is a live (not zombie) process whose name is sandlotd."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    # "pid (comm) S ..." - comm may contain spaces and parentheses: split at the last ')'.
    lpar, rpar = raw.find(b"("), raw.rfind(b")")
    comm, state = raw[lpar + 1 : rpar], raw[rpar + 2 : rpar + 3]
    return comm == b"sandlotd" and state not in (b"Z", b"X")


def _runner_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _RUNNER_ENV_KEEP}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def start_runner(paths: RuntimePaths, healthy: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Start the embedded runner unless one already answers; wait until it does.

    ``healthy()`` must return True when a runner answers ``GET /v1/health`` on
    ``paths.socket``. Runs under an exclusive flock on ``paths.lock`` so that
    concurrent clients (threads or processes) start one runner between them.
    Returns True if this call started it.

    Raises RunnerUnavailableError (with the runner's own error output and the
    log path) if it does not come up within ``timeout`` seconds.
    """
    from .errors import RunnerUnavailableError

    _secure_dir(paths.root)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if healthy():
            return False  # someone else started it while we waited for the lock
        binary = runner_binary()
        cmd = [
            binary,
            "--daemon",
            "--socket",
            str(paths.socket),
            "--state-dir",
            str(paths.state_dir),
            "--log-file",
            str(paths.log_file),
            "--pidfile",
            str(paths.pidfile),
        ]
        log.info("starting the sandlot runner: %s", " ".join(cmd))
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd="/",
                env=_runner_env(),
                start_new_session=True,
                close_fds=True,
            )
            deadline = time.monotonic() + timeout
            delay = 0.005
            while True:
                rc = proc.poll()
                if rc is not None and rc != 0:
                    err.seek(0)
                    text = err.read().decode("utf-8", "replace").strip()
                    raise RunnerUnavailableError(
                        f"sandlotd exited with status {rc} while starting"
                        + (f": {text}" if text else "")
                        + f" (command: {' '.join(cmd)}; log: {paths.log_file})",
                        code="unavailable",
                    )
                if healthy():
                    log.info("sandlot runner started (socket %s, log %s)", paths.socket, paths.log_file)
                    # The --daemon parent exits right after the daemon reported that
                    # it listens; reap it so no zombie is left behind.
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        log.warning("sandlotd --daemon did not detach within 10 s (pid %d)", proc.pid)
                    return True
                if time.monotonic() > deadline:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    raise RunnerUnavailableError(
                        f"sandlotd did not answer on {paths.socket} within {timeout:g} s; see its log {paths.log_file}",
                        code="unavailable",
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
    finally:
        os.close(fd)  # releases the flock


def stop_runner(pid: int, timeout: float = 15.0) -> bool:
    """Send SIGTERM to the runner ``pid`` and wait until it is gone.

    Sends SIGKILL if it is still alive after ``timeout`` seconds. Returns False
    if ``pid`` is not a running sandlotd (nothing was signalled).
    """
    if not _is_running_sandlotd(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while _is_running_sandlotd(pid):
        if time.monotonic() > deadline:
            log.warning("sandlotd (pid %d) ignored SIGTERM for %g s; sending SIGKILL", pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
    return True
