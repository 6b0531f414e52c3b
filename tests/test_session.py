"""Session, the embedded default runner, runtime-dir safety, errors and logging."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sandlot
from conftest import client_env, run_cli, run_python
from sandlot import Sandbox, Session
from sandlot.errors import error_from_response


def test_session_health(session):
    h = session.health()
    assert h["ok"] is True
    assert h["runner_id"].startswith("rn-")
    assert h["cgroup"] in ("v1", "v2", "hybrid", "none")
    assert isinstance(h["pid"], int) and isinstance(h["sandboxes"], int)


def test_default_session_follows_sandlot_url(runner):
    s = sandlot.default_session()
    assert s is sandlot.default_session()
    assert s.base_url == runner.url and not s.embedded
    with Sandbox.create(["true"]) as sb:  # no session=: the default one
        assert sb.wait() == 0


def test_session_url_forms_and_validation(runner):
    assert Session(str(runner.socket)).base_url == runner.url
    assert Session(runner.url).health()["ok"]
    assert Session("http://127.0.0.1:9/").base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="absolute"):
        Session("unix://relative.sock")
    with pytest.raises(ValueError, match="unsupported"):
        Session("ftp://x")
    with pytest.raises(TypeError):
        Session(42)  # type: ignore[arg-type]
    s = Session(runner.url, token="tok-secret-123")
    assert "tok-secret-123" not in repr(s)


def test_unreachable_runner_says_how_to_fix(tmp_path):
    s = Session(f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(sandlot.RunnerUnavailableError) as ei:
        Sandbox.create(["true"], session=s)
    assert "sandlot runner start" in str(ei.value) and "SANDLOT_URL" in str(ei.value)
    assert ei.value.status == 0 and isinstance(ei.value, ConnectionError)


def test_error_mapping():
    cases = {
        "not_found": sandlot.NotFoundError,
        "bad_request": sandlot.InvalidArgumentError,
        "payload_too_large": sandlot.InvalidArgumentError,
        "unsupported_media_type": sandlot.InvalidArgumentError,
        "conflict": sandlot.SandboxNotRunningError,
        "spawn_failed": sandlot.SpawnError,
        "unavailable": sandlot.RunnerUnavailableError,
        "unauthorized": sandlot.AuthenticationError,
        "internal": sandlot.SandboxError,
        "something_new": sandlot.SandboxError,
    }
    for code, cls in cases.items():
        e = error_from_response(400, code, "msg")
        assert type(e) is cls and e.code == code and e.status == 400
    t = error_from_response(0, "timeout", "took too long")
    assert isinstance(t, TimeoutError) and isinstance(t, sandlot.SandboxError)
    assert issubclass(sandlot.InvalidArgumentError, ValueError)
    import pickle

    e2 = pickle.loads(pickle.dumps(error_from_response(404, "not_found", "gone")))
    assert type(e2) is sandlot.NotFoundError and e2.status == 404 and str(e2) == "gone"


def test_request_logging_never_shows_bodies(session, caplog):
    caplog.set_level(logging.DEBUG, logger="sandlot")
    with Sandbox.create(["sleep", "30"], env={"VISIBLE": "body-value-xyz"}, session=session) as sb:
        sb.write_file("/tmp/f", b"file-content-xyz")
    assert "POST /v1/sandboxes" in caplog.text
    assert f"/v1/sandboxes/{sb.sandbox_id}/files/write" in caplog.text
    assert "body-value-xyz" not in caplog.text and "file-content-xyz" not in caplog.text


# -- runtime dir safety ---------------------------------------------------------------
def test_runtime_dir_under_xdg_and_refusals(monkeypatch, tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.delenv("SANDLOT_URL", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    s = Session()
    assert s.embedded and s.base_url == f"unix://{xdg}/sandlot/sandlotd.sock"
    assert (xdg / "sandlot").stat().st_mode & 0o777 == 0o700
    os.chmod(xdg / "sandlot", 0o777)
    with pytest.raises(PermissionError, match="world-writable|group"):
        Session()
    os.chmod(xdg / "sandlot", 0o700)
    os.chown(xdg / "sandlot", 65534, 65534)
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        Session()
    # Unusable XDG_RUNTIME_DIR: fall back to /tmp/sandlot-<uid>.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    from sandlot._runtime import runtime_dir

    assert runtime_dir(create=False) == Path(f"/tmp/sandlot-{os.geteuid()}")
    # One too long for a unix socket path: the same fallback.
    long_dir = tmp_path / ("d" * 100)
    long_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_dir))
    assert runtime_dir(create=False) == Path(f"/tmp/sandlot-{os.geteuid()}")


def test_missing_runner_binary_message(monkeypatch, tmp_path):
    monkeypatch.setenv("SANDLOT_RUNNER_BIN", str(tmp_path / "nope"))
    from sandlot._runtime import runner_binary

    with pytest.raises(FileNotFoundError, match="SANDLOT_RUNNER_BIN"):
        runner_binary()


# -- the embedded default ---------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] not in (b"Z", b"X")


@pytest.fixture
def xdg_env():
    """A client environment with a fresh XDG_RUNTIME_DIR and no SANDLOT_URL.

    Stops any runner the test started there, whatever happens.
    """
    d = Path(tempfile.mkdtemp(prefix="sl-xdg-"))
    env = client_env(XDG_RUNTIME_DIR=str(d))
    yield d, env
    pidfile = d / "sandlot" / "sandlotd.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().strip() or 0)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_embedded_default_autostarts_and_outlives_the_client(xdg_env):
    d, env = xdg_env
    code = (
        "import sandlot\n"
        "sb = sandlot.Sandbox.create(['sleep', '300'])\n"
        "sb.write_file('/tmp/note', 'kept')\n"
        "print(sb.sandbox_id, sandlot.default_session().health()['pid'])\n"
    )
    r = run_python(code, env)
    assert r.returncode == 0, r.stderr
    sid, pid_s = r.stdout.split()
    pid = int(pid_s)
    rt = d / "sandlot"
    assert (rt / "sandlotd.sock").exists()
    assert (rt / "state").is_dir() and (rt / "sandlotd.log").exists()
    assert int((rt / "sandlotd.pid").read_text()) == pid
    assert rt.stat().st_mode & 0o777 == 0o700
    # The client is gone; the runner is not, and a new client finds the sandbox.
    assert _alive(pid)
    r2 = run_python(f"import sandlot; print(sandlot.Sandbox.lookup({sid!r}).read_file('/tmp/note').decode())", env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.strip() == "kept"
    st = run_cli(["runner", "status"], env)
    assert st.returncode == 0 and str(pid) in st.stdout and "sandboxes: 1" in st.stdout
    stop = run_cli(["runner", "stop"], env)
    assert stop.returncode == 0, stop.stderr
    assert not _alive(pid)
    st2 = run_cli(["runner", "status"], env)
    assert st2.returncode == 1 and "not running" in st2.stdout


def test_a_runner_from_another_build_is_reported(xdg_env, tmp_path):
    # The embedded runner outlives its client: after an upgrade, or with two
    # installations sharing a runtime dir, a client can meet another build.
    d, env = xdg_env
    import shutil

    # Another installation's _bin: the runner and, beside it, its init.
    shutil.copytree(Path(sandlot.__file__).resolve().parent / "_bin", tmp_path / "_bin")
    other = tmp_path / "_bin" / "sandlotd"
    code = (
        "import logging, sandlot\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "print(sandlot.default_session().health()['ok'])\n"
    )
    started = run_python(code, {**env, "SANDLOT_RUNNER_BIN": str(other)})
    assert started.returncode == 0, started.stderr
    assert "WARNING" not in started.stderr  # it started the runner it asked for
    met = run_python(code, env)  # this client ships the packaged binary
    assert met.returncode == 0 and met.stdout.strip() == "True", met.stderr
    assert "not this sandlot's" in met.stderr and str(other) in met.stderr, met.stderr
    assert "sandlot runner stop" in met.stderr
    # Once restarted from this installation, nothing to report.
    assert run_cli(["runner", "stop"], env).returncode == 0
    fresh = run_python(code, env)
    again = run_python(code, env)
    assert fresh.returncode == 0 and again.returncode == 0
    assert "WARNING" not in fresh.stderr + again.stderr, fresh.stderr + again.stderr


def test_concurrent_clients_start_one_runner(xdg_env):
    d, env = xdg_env
    code = "import sandlot; print(sandlot.default_session().health()['pid'])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    pids = {int(o[0]) for o in outs}
    assert len(pids) == 1, pids
    assert _alive(pids.pop())


def test_embedded_runner_restarts_after_it_was_stopped(xdg_env):
    d, env = xdg_env
    code = (
        "import subprocess, sys, sandlot\n"
        "s = sandlot.default_session()\n"
        "first = s.health()['pid']\n"
        "subprocess.run([sys.executable, '-m', 'sandlot', 'runner', 'stop'], check=True, capture_output=True)\n"
        "try:\n"
        "    s.health()\n"
        "except sandlot.RunnerUnavailableError:\n"
        "    pass\n"
        "second = s.health()['pid']\n"
        "print(first, second)\n"
    )
    r = run_python(code, env)
    assert r.returncode == 0, r.stderr
    first, second = map(int, r.stdout.split())
    assert first != second and _alive(second) and not _alive(first)


def test_runner_start_cli_is_idempotent(xdg_env):
    d, env = xdg_env
    a = run_cli(["runner", "start"], env)
    assert a.returncode == 0 and "started" in a.stdout, a.stderr
    b = run_cli(["runner", "start"], env)
    assert b.returncode == 0 and "already running" in b.stdout
    # `sandlot runner start | cat` must finish: the daemon keeps no pipe of ours open.
    t0 = time.monotonic()
    c = subprocess.run(
        f"{sys.executable} -m sandlot runner stop && {sys.executable} -m sandlot runner start | cat",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert c.returncode == 0 and "started" in c.stdout, c.stderr
    assert time.monotonic() - t0 < 30
