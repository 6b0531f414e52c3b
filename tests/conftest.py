"""Shared fixtures: a private sandlot runner for the whole test session.

The runner is the real ``sandlotd`` from the built package (or
``$SANDLOT_RUNNER_BIN``), started in the foreground on a unix socket inside a
fresh 0700 temp directory, with its own state dir. ``SANDLOT_URL`` points at it
for the whole session, so ``sandlot.default_session()``, subprocesses and the
CLI all talk to it, never to the user's own runner.

Nothing starts unless a test asks for the ``runner`` fixture (directly or via
``session`` / ``sandbox``), so C-only test modules stay fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sandlot

PYTHON_DIR = str(Path(sandlot.__file__).resolve().parent.parent)


def runner_binary() -> str:
    env = os.environ.get("SANDLOT_RUNNER_BIN")
    if env:
        return env
    return str(Path(sandlot.__file__).resolve().parent / "_bin" / "sandlotd")


@dataclass
class Runner:
    """A sandlotd started for the tests."""

    dir: Path
    socket: Path
    state_dir: Path
    log_file: Path
    proc: subprocess.Popen
    url: str

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def start_runner(base: Path, extra: list[str] | None = None, env: dict[str, str] | None = None) -> Runner:
    """Start sandlotd in the foreground with everything under ``base``
    (``env``: variables set for the runner on top of the tests' own)."""
    sock = base / "sandlotd.sock"
    state = base / "state"
    log_file = base / "sandlotd.log"
    cmd = [runner_binary(), "--socket", str(sock), "--state-dir", str(state), "--log-file", str(log_file)]
    cmd += extra or []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")} | (env or {})
    # stderr (where sanitizer reports go) is appended to the same log file.
    with open(log_file, "ab") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    url = f"unix://{sock}"
    r = Runner(base, sock, state, log_file, proc, url)
    probe = sandlot.Session(url)
    deadline = time.monotonic() + 20
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sandlotd exited with {proc.returncode} at start:\n{r.log_tail()}")
            try:
                probe.health()
                return r
            except sandlot.RunnerUnavailableError as exc:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"sandlotd did not answer within 20 s:\n{r.log_tail()}") from exc
                time.sleep(0.02)
    finally:
        probe.close()


def stop(r: Runner) -> None:
    if r.proc.poll() is None:
        r.proc.send_signal(signal.SIGTERM)
        try:
            r.proc.wait(20)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


@pytest.fixture(autouse=True)
def _sandlot_error_mapper(request: pytest.FixtureRequest) -> None:
    """Reinstall sandlot's error mapper before every test that uses the runner.

    Low-level _core tests install their own mapper and reset it to None when
    done; the sandlot layer relies on the one installed at import.
    """
    if "runner" in request.fixturenames:
        sandlot._core.set_error_mapper(sandlot.error_from_response)


@pytest.fixture(scope="session")
def runner() -> Iterator[Runner]:
    base = Path(tempfile.mkdtemp(prefix="sl-test-"))  # mkdtemp: mode 0700
    r = start_runner(base)
    old = {k: os.environ.get(k) for k in ("SANDLOT_URL", "SANDLOT_TOKEN")}
    os.environ["SANDLOT_URL"] = r.url
    os.environ.pop("SANDLOT_TOKEN", None)
    try:
        yield r
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(r)
        log = r.log_file.read_text(errors="replace") if r.log_file.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
    # A runner built with SANDLOT_SANITIZE=1 writes its reports to its log: a
    # report anywhere in the session fails the run, and so does an unclean exit.
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in log, f"sandlotd reported a sanitizer error:\n{log[-4000:]}"
    assert r.proc.returncode == 0, f"sandlotd exited with {r.proc.returncode} on SIGTERM:\n{log[-4000:]}"


@pytest.fixture(scope="session")
def session(runner: Runner) -> Iterator[sandlot.Session]:
    s = sandlot.Session(runner.url)
    yield s
    s.close()


@pytest.fixture
def sandbox(session: sandlot.Session) -> Iterator[sandlot.Sandbox]:
    """An idle sandbox (no entry command), terminated after the test."""
    sb = sandlot.Sandbox.create(timeout=120, session=session)
    try:
        yield sb
    finally:
        sb.terminate()


#: What ``./dev asan`` sets to run the suite under the sanitizers.
SANITIZER_ENV = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")


def sanitizer_env() -> dict[str, str]:
    """The sanitizer settings of this run, for a Python inside a sandbox that
    imports this (then ASan-built) extension; empty in a normal run."""
    return {k: v for k, v in os.environ.items() if k in SANITIZER_ENV}


def host_tool_env() -> dict[str, str]:
    """This environment without the sanitizer preload, for host tools the
    tests run (ip, nft): ASan would report their bugs, not ours."""
    return {k: v for k, v in os.environ.items() if k not in SANITIZER_ENV}


def client_env(runner: Runner | None = None, **extra: str) -> dict[str, str]:
    """Environment for a Python subprocess that imports this sandlot build."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env["PYTHONPATH"] = PYTHON_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if runner is not None:
        env["SANDLOT_URL"] = runner.url
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "sandlot", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw
    )
