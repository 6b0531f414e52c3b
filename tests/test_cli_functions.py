"""CLI for remote functions: `sandlot ps` / `sandlot functions` list functions with
their annotations, workers and counters; `sandlot profile create|ls|rm` manage
runner-side presets that RemoteFunction(profile_names=...) picks up."""

from __future__ import annotations

import os

import pytest
from sandlot import RemoteFunction

from conftest import client_env, run_cli


def env_probe(name):
    return os.environ.get(name)


@pytest.fixture
def env(runner):
    return client_env(runner)


def test_ps_and_functions_list_annotations_and_counters(env, session):
    f = RemoteFunction(env_probe, session=session, annotations={"team": "ml", "run": "r42"})
    try:
        assert f.remote("PATH").result(timeout=60)
        for cmd in (["ps"], ["functions"]):
            r = run_cli(cmd, env)
            assert r.returncode == 0, r.stderr
            rows = [line for line in r.stdout.splitlines() if "run=r42,team=ml" in line]
            assert len(rows) == 1, r.stdout
            cols = rows[0].split()
            assert cols[1] == "env_probe"
            # WORKERS QUEUED CALLS OK ERRORS: one warm worker, one call that succeeded
            assert cols[2:7] == ["1", "0", "1", "1", "0"], r.stdout
    finally:
        f.delete()
    r = run_cli(["ps"], env)
    assert "run=r42" not in r.stdout


def test_profile_create_ls_rm_and_use(env, session):
    r = run_cli(["profile", "create", "cli-prof", "--env", "FROM_CLI=yes", "--env", "OTHER=1"], env)
    assert r.returncode == 0, r.stderr
    assert "created profile cli-prof (pf-" in r.stdout
    try:
        ls = run_cli(["profile", "ls"], env)
        row = [line for line in ls.stdout.splitlines() if " cli-prof " in f" {line} "]
        assert len(row) == 1 and "FROM_CLI,OTHER" in row[0], ls.stdout
        f = RemoteFunction(env_probe, session=session, profile_names=["cli-prof"])
        try:
            assert f.remote("FROM_CLI").result(timeout=60) == "yes"
        finally:
            f.delete()
        bad = run_cli(["profile", "create", "cli-prof2", "--env", "NOEQUALS"], env)
        assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    finally:
        r = run_cli(["profile", "rm", "cli-prof"], env)
        assert r.returncode == 0, r.stderr
    assert "cli-prof" not in run_cli(["profile", "ls"], env).stdout
    gone = run_cli(["profile", "rm", "cli-prof"], env)
    assert gone.returncode != 0 and "cli-prof" in gone.stderr
