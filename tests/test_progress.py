"""Progress of many calls: RemoteFunction.map(..., progress=True) and
as_completed(..., progress=True) draw done/total, rate and failures."""

from __future__ import annotations

import time

import pytest

import sandlot
from sandlot import RemoteFunction


def maybe_fail(i):
    if i % 10 == 3:
        raise ValueError(f"item {i}")
    return i


@pytest.fixture
def fn(session):
    f = RemoteFunction(maybe_fail, session=session)
    yield f
    f.delete()


def test_map_progress_counts_done_and_failures(fn, capsys):
    refs = fn.map([(i,) for i in range(40)], progress=True)
    sandlot.wait(refs, timeout=120)
    for r in refs:
        r.exception(timeout=120)
    err = ""
    deadline = time.monotonic() + 10  # the last callback may run just after wait() returns
    while "40/40" not in err and time.monotonic() < deadline:
        err += capsys.readouterr().err
        time.sleep(0.01)
    # not a terminal: whole lines, the last one complete, with the failures
    assert "\r" not in err and "\x1b[" not in err
    last = err.strip().splitlines()[-1]
    assert "40/40 calls done (100%)" in last and "4 failed" in last


def test_as_completed_progress(fn, capsys):
    refs = fn.map([(i,) for i in range(5)], chunksize=1)
    got = [r for r in sandlot.as_completed(refs, timeout=120, progress=True)]
    assert len(got) == 5
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "5/5 calls done" in last and "1 failed" in last


def test_pull_progress_redraws_in_place_on_a_terminal():
    import io

    from sandlot._pull import Progress

    out = io.StringIO()
    p = Progress("img:1", out=out, tty=True)
    layers = [
        {"digest": "sha256:" + "a" * 64, "size": 1000, "done": 1000, "phase": "cached"},
        {"digest": "sha256:" + "b" * 64, "size": 2_000_000, "done": 500_000, "phase": "downloading"},
    ]
    p.update(layers)
    layers[1] = {**layers[1], "done": 2_000_000, "phase": "unpacking"}
    p.update(layers)
    text = out.getvalue()
    first, second = text.split("\x1b[3F")  # the second frame moves up over the first's 3 lines
    assert "bbbbbbbbbbbb: 500.0 kB/2.0 MB 25%" in first and "ETA" in first and "/s" in first
    assert "aaaaaaaaaaaa: cached" in first
    assert "bbbbbbbbbbbb: unpacking" in second and "pulling img:1: 2.0 MB/2.0 MB" in second


def test_call_progress_bar_on_a_terminal():
    import io

    from sandlot._progress import CallProgress

    out = io.StringIO()
    p = CallProgress(4, out=out, tty=True)
    for failed in (False, True, False, False):
        p.finished(failed=failed)
    last = out.getvalue().split("\r\x1b[2K")[-1]
    assert last.startswith("[########################] 4/4 calls 100%") and "1 failed" in last and last.endswith("\n")
