"""The `sandlot` command line (run as `python -m sandlot`) against the test runner."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import sandlot
from conftest import client_env, run_cli
from sandlot import Sandbox


@pytest.fixture
def env(runner):
    return client_env(runner)


def test_version_and_help(env):
    r = run_cli(["--version"], env)
    assert r.returncode == 0 and r.stdout.strip() == f"sandlot {sandlot.__version__}"
    r = run_cli(["--help"], env)
    assert r.returncode == 0
    for word in ("runner", "ps", "exec", "logs", "kill"):
        assert word in r.stdout
    r = run_cli([], env)
    assert r.returncode == 2


def test_runner_status(env, runner, session):
    r = run_cli(["runner", "status"], env)
    assert r.returncode == 0, r.stderr
    h = session.health()
    assert runner.url in r.stdout
    assert f"pid:       {h['pid']}" in r.stdout
    assert h["runner_id"] in r.stdout
    assert f"cgroup:    {h['cgroup']}" in r.stdout
    assert "sandboxes:" in r.stdout


def test_ps_lists_sandboxes(env, session):
    with Sandbox.create(["sleep", "77"], session=session) as sb:
        r = run_cli(["ps"], env)
        assert r.returncode == 0, r.stderr
        header, *rows = r.stdout.splitlines()
        assert header.split() == ["SANDBOX", "ID", "STATUS", "AGE", "COMMAND"]
        row = [x for x in rows if x.startswith(sb.sandbox_id)]
        assert len(row) == 1 and "running" in row[0] and "sleep 77" in row[0]
        q = run_cli(["ps", "-q"], env)
        assert sb.sandbox_id in q.stdout.split()
    assert sb.sandbox_id not in run_cli(["ps", "-q"], env).stdout


def test_exec_streams_output_and_exits_with_its_code(env, session):
    with Sandbox.create(["sleep", "60"], session=session) as sb:
        r = run_cli(["exec", sb.sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 5"], env)
        assert r.returncode == 5
        assert r.stdout == "out\n" and r.stderr == "err\n"
        r = run_cli(["exec", "-e", "A=b", "-w", "/tmp", sb.sandbox_id, "--", "sh", "-c", "echo $A; pwd"], env)
        assert r.returncode == 0 and r.stdout == "b\n/tmp\n"
        r = run_cli(["exec", sb.sandbox_id, "--", "sh", "-c", "kill -KILL $$"], env)
        assert r.returncode == 128 + 9
        # Without -i stdin is closed, so cat ends at once; with -i it gets ours.
        r = run_cli(["exec", sb.sandbox_id, "--", "cat"], env, input="ignored")
        assert r.returncode == 0 and r.stdout == ""
        r = run_cli(["exec", "-i", sb.sandbox_id, "--", "cat"], env, input="piped in\n")
        assert r.returncode == 0 and r.stdout == "piped in\n"
        r = run_cli(["exec", sb.sandbox_id, "--", "no-such-cmd-q"], env)
        assert r.returncode == 1 and "no-such-cmd-q" in r.stderr


def test_exec_output_arrives_while_running(env, session):
    with Sandbox.create(["sleep", "60"], session=session) as sb:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandlot",
                "exec",
                sb.sandbox_id,
                "--",
                "sh",
                "-c",
                "echo first; sleep 3; echo second",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        t0 = time.monotonic()
        assert p.stdout is not None
        assert p.stdout.readline() == "first\n"
        assert time.monotonic() - t0 < 2.9 or p.poll() is None
        assert p.stdout.readline() == "second\n"
        assert p.wait(30) == 0


def test_logs_and_follow(env, session):
    with Sandbox.create("echo one; echo two >&2; sleep 2; echo three", session=session) as sb:
        deadline = time.monotonic() + 10
        while True:  # until the first line was printed
            r = run_cli(["logs", sb.sandbox_id], env)
            assert r.returncode == 0, r.stderr
            if r.stdout or time.monotonic() > deadline:
                break
        assert r.stdout == "one\n" and "three" not in r.stdout
        f = run_cli(["logs", "-f", sb.sandbox_id], env)
        assert f.returncode == 0
        assert f.stdout == "one\nthree\n" and f.stderr == "two\n"
    with Sandbox.create(session=session) as idle:
        r = run_cli(["logs", idle.sandbox_id], env)
        assert r.returncode == 1 and "no entry command" in r.stderr


def test_kill(env, session):
    sb = Sandbox.create(["sleep", "60"], session=session)
    r = run_cli(["kill", sb.sandbox_id], env)
    assert r.returncode == 0 and r.stdout.strip() == sb.sandbox_id
    with pytest.raises(sandlot.NotFoundError):
        Sandbox.lookup(sb.sandbox_id, session=session)
    r = run_cli(["kill", sb.sandbox_id], env)
    assert r.returncode == 1 and "no sandbox" in r.stderr


def test_errors_are_one_line_messages(env, tmp_path):
    r = run_cli(["logs", "sb-0000000000000000"], env)
    assert r.returncode == 1 and r.stderr.startswith("sandlot: ") and "Traceback" not in r.stderr
    bad = dict(env, SANDLOT_URL=f"unix://{tmp_path}/none.sock")
    r = run_cli(["ps"], bad)
    assert r.returncode == 1 and "sandlot runner start" in r.stderr and "Traceback" not in r.stderr
