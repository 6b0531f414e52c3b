"""Function registrations outlive the runner (csrc/runner/functions/fn_persist.c).

A registration is stored durably before the 201; a runner started on the same
state dir (after kill -9, a crash at the fault point, or a clean stop)
registers it again under the same id, so a client or another process holding
the id keeps calling it; deleting a function removes it for good; a stored
registration that no longer registers is reported lost and removed. Real
runners, real kill -9.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import sandlot
from conftest import start_runner, stop


def _kill(r) -> None:
    os.kill(r.proc.pid, signal.SIGKILL)
    r.proc.wait(timeout=30)


def test_a_registration_survives_kill_9_and_keeps_its_id(tmp_path: Path) -> None:
    r1 = start_runner(tmp_path)
    try:
        s1 = sandlot.Session(r1.url)
        fn = sandlot.RemoteFunction(abs, session=s1)
        assert fn.remote(-2).result(timeout=120) == 2
        fid = fn.function_id
        doomed = sandlot.RemoteFunction(len, session=s1)
        gone = doomed.function_id
        doomed.delete()
        s1.close()
    finally:
        _kill(r1)
    r2 = start_runner(tmp_path)
    try:
        s2 = sandlot.Session(r2.url)
        ids = {f["function_id"] for f in s2.request("GET", "/v1/functions").result()["functions"]}
        assert fid in ids and gone not in ids  # the deleted one stays deleted
        # A client that held the id across the restart (as fn did): its
        # next call finds the function kept, with no new registration.
        fn2 = sandlot.RemoteFunction(abs, session=s2)
        fn2._fn_id, fn2._reg_session, fn2._reg_runner = fid, s2, "an earlier runner"
        assert fn2.remote(-7).result(timeout=120) == 7
        assert fn2.function_id == fid  # kept, not registered again
        assert "1 registration(s) of an earlier runner kept, 0 lost" in r2.log_tail()
        s2.close()
    finally:
        stop(r2)


def test_a_crash_before_the_answer_leaves_it_whole_or_absent(tmp_path: Path) -> None:
    r1 = start_runner(tmp_path, env={"SANDLOT_TEST_FAULT": "function-registered"})
    s1 = sandlot.Session(r1.url)
    with pytest.raises(sandlot.RunnerUnavailableError):
        sandlot.RemoteFunction(abs, session=s1).function_id
    s1.close()
    r1.proc.wait(timeout=30)
    r2 = start_runner(tmp_path)
    try:
        s2 = sandlot.Session(r2.url)
        funcs = s2.request("GET", "/v1/functions").result()["functions"]
        # Written and synced before the crash: it is there, whole, and runs.
        assert [f["name"] for f in funcs] == ["abs"]
        f = sandlot.RemoteFunction(abs, session=s2)
        f._fn_id, f._reg_session, f._reg_runner = funcs[0]["function_id"], s2, "an earlier runner"
        assert f.remote(-1).result(timeout=120) == 1
        assert not list((r2.state_dir / "functions").glob("*.tmp"))
        s2.close()
    finally:
        stop(r2)


def test_a_registration_that_no_longer_registers_is_reported_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    base = tmp_path / "r"  # not above data: a mount may not expose the runner's state
    base.mkdir()
    r1 = start_runner(base)
    try:
        s1 = sandlot.Session(r1.url)
        fn = sandlot.RemoteFunction(abs, session=s1, mounted_files=[{"mount_path": "/data", "local_path": str(data)}])
        fid = fn.function_id
        (r1.state_dir / "functions" / "fn-0123456789abcdef.reg").write_bytes(b"\xc1 not msgpack")
        s1.close()
    finally:
        stop(r1)
    data.rmdir()  # the mounted path is gone
    r2 = start_runner(base)
    try:
        s2 = sandlot.Session(r2.url)
        assert s2.request("GET", "/v1/functions").result()["functions"] == []
        log = r2.log_tail()
        assert f"lost function {fid}: it no longer registers" in log
        assert "lost function registration fn-0123456789abcdef: the file is malformed" in log
        assert not list((r2.state_dir / "functions").iterdir())
        s2.close()
    finally:
        stop(r2)
