"""Clients recover by themselves from a runner that was killed (issue 11).

An embedded-default session (no SANDLOT_URL: the client starts its own
runner in a private runtime dir here) meets a runner killed with SIGKILL:
the next request starts a new runner and goes through, a RemoteFunction
registers itself again, a call that was running says the runner exited, and
a sandbox of the dead runner is reported as lost, with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot import Sandbox
from sandlot._runtime import read_pid, runtime_paths, stop_runner
from conftest import runner_binary


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> Iterator[sandlot.Session]:
    """An embedded-default session whose runtime dir is private to the test."""
    root = Path(tempfile.mkdtemp(prefix="slr-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(root))
    monkeypatch.delenv("SANDLOT_URL", raising=False)
    monkeypatch.delenv("SANDLOT_TOKEN", raising=False)
    monkeypatch.setenv("SANDLOT_RUNNER_BIN", runner_binary())
    sess = sandlot.Session()
    assert sess.embedded
    try:
        yield sess
    finally:
        sess.close()
        pid = read_pid(runtime_paths(root / "sandlot"))
        if pid is not None:
            stop_runner(pid)
        shutil.rmtree(root, ignore_errors=True)


def kill_runner(sess: sandlot.Session) -> int:
    """SIGKILL the session's embedded runner; returns its pid once it is gone."""
    assert sess.runtime_paths is not None
    pid = read_pid(sess.runtime_paths)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return pid


def test_first_request_after_a_crash_starts_a_new_runner(embedded: sandlot.Session) -> None:
    sb = Sandbox.create(timeout=60, session=embedded)
    first = embedded.health()
    kill_runner(embedded)
    # The very first call after the crash: no RunnerUnavailableError.
    boxes = Sandbox.list(session=embedded)
    assert boxes == []
    second = embedded.health()
    assert second["runner_id"] != first["runner_id"] and second["pid"] != first["pid"]
    # The dead runner's sandbox is reported as lost, with the reason.
    with pytest.raises(sandlot.NotFoundError, match="lost.*runner.*exited"):
        Sandbox.lookup(sb.sandbox_id, session=embedded)
    with pytest.raises(sandlot.NotFoundError, match="lost"):
        sb.exec(["true"])
    # And the new runner works.
    with Sandbox.create(timeout=60, session=embedded) as sb2:
        p = sb2.exec(["echo", "ok"])
        assert p.wait() == 0 and p.stdout.read() == "ok\n"


def test_a_request_that_never_reached_the_runner_is_resent_once(embedded: sandlot.Session) -> None:
    embedded.health()
    # As for a runner this client cannot watch (another pid namespace, TCP):
    # the crash is only seen when a request cannot connect.
    embedded._drop_pidfd()
    kill_runner(embedded)
    assert Sandbox.list(session=embedded) == []
    assert embedded.health()["ok"]


def test_a_function_keeps_its_id_or_registers_again_with_the_new_runner(embedded: sandlot.Session) -> None:
    fn = sandlot.RemoteFunction(abs, session=embedded)
    assert fn.remote(-3).result() == 3
    old_id = fn.function_id
    kill_runner(embedded)
    assert fn.remote(-4).result() == 4  # remote() itself starts the runner
    # The new runner kept the registration (fn_persist.c): same id.
    assert fn.function_id == old_id
    assert embedded.request("GET", f"/v1/functions/{old_id}").result()["function"]["name"] == "abs"
    # A runner that lost it (its store removed while none ran): registered again.
    kill_runner(embedded)
    assert embedded.runtime_paths is not None
    shutil.rmtree(embedded.runtime_paths.state_dir / "functions")
    assert [r.result() for r in fn.map([(-1,), (-2,), (5,)])] == [1, 2, 5]
    assert fn.function_id != old_id


def test_a_call_running_when_the_runner_dies_says_so(embedded: sandlot.Session) -> None:
    sleep = sandlot.RemoteFunction(time.sleep, session=embedded)
    assert sleep.remote(0).result() is None
    ref = sleep.remote(60)
    refs = sleep.map([(60,), (60,)], chunksize=2)
    time.sleep(1.0)  # both are running in their workers now
    threading.Thread(target=kill_runner, args=(embedded,)).start()
    with pytest.raises(sandlot.RunnerExitedError, match="the runner exited while this call was running"):
        ref.result(timeout=60)
    for r in refs:
        with pytest.raises(sandlot.SandboxError, match="the runner exited while this call was running"):
            r.result(timeout=60)
    # The next call works on a new runner.
    assert sleep.remote(0).result() is None


def test_a_direct_call_running_when_the_runner_dies_says_so(embedded: sandlot.Session) -> None:
    """Calls sent straight to a leased worker (_direct.py) say the same as
    calls through the runner when the runner dies under them."""
    sleep = sandlot.RemoteFunction(time.sleep, session=embedded)
    deadline = time.monotonic() + 30
    while sleep._direct.channel is None:  # the first calls start a worker; later ones lease it
        assert sleep.remote(0).result() is None
        assert time.monotonic() < deadline, "no worker was ever leased"
    ref = sleep.remote(60)
    assert sleep._direct.channel is not None and not sleep._direct.channel.idle  # it went direct
    time.sleep(0.5)
    threading.Thread(target=kill_runner, args=(embedded,)).start()
    with pytest.raises(sandlot.RunnerExitedError, match="the runner exited while this call was running"):
        ref.result(timeout=60)
    assert sleep.remote(0).result() is None


def test_a_wait_in_flight_when_the_runner_dies_says_so(embedded: sandlot.Session) -> None:
    sb = Sandbox.create(timeout=60, session=embedded)
    p = sb.exec(["sleep", "60"])
    threading.Timer(1.0, kill_runner, args=(embedded,)).start()
    with pytest.raises(sandlot.RunnerExitedError, match="the runner exited while this call was running"):
        p.wait()


def test_a_configured_url_is_never_started_by_the_client(tmp_path: Path) -> None:
    """Only the embedded default is auto-started: a configured runner that is
    gone stays an error that says so."""
    s = sandlot.Session(f"unix://{tmp_path}/none.sock")
    with pytest.raises(sandlot.RunnerUnavailableError, match="cannot connect"):
        Sandbox.list(session=s)
    assert not (tmp_path / "none.sock").exists()


def test_runner_restart_with_sandboxes_and_pools_busy(embedded: sandlot.Session) -> None:
    """`sandlot runner restart` while a sandbox runs a command and a function
    pool runs a call: the CLI says what ended, the call says why it failed,
    and the same objects work again on the new runner."""
    import subprocess
    import sys

    from conftest import client_env

    sb = Sandbox.create(["sleep", "600"], timeout=600, session=embedded)
    sleep = sandlot.RemoteFunction(time.sleep, session=embedded, min_workers=2)
    ref = sleep.remote(60)
    time.sleep(1.0)
    old = embedded.health()
    env = client_env(None, XDG_RUNTIME_DIR=os.environ["XDG_RUNTIME_DIR"], SANDLOT_RUNNER_BIN=runner_binary())
    out = subprocess.run([sys.executable, "-m", "sandlot", "runner", "restart"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"pid {old['pid']} -> " in out.stdout and "sandbox(es) of the old runner ended" in out.stdout
    with pytest.raises(sandlot.RunnerExitedError, match="the runner exited while this call was running"):
        ref.result(timeout=60)
    assert sleep.remote(0).result() is None  # registered again, on the new runner
    assert embedded.health()["runner_id"] != old["runner_id"]
    with pytest.raises(sandlot.NotFoundError, match="was lost: the runner it ran under exited"):
        sb.wait()
