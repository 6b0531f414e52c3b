"""Bounded output (issue 11): output no client reads is spooled to a file in
the sandbox's dir, not kept in the runner's memory; what does not fit is
dropped oldest-first (visibly: ``truncated``/``dropped_bytes``, a marker when
iterating, one ``OutputDroppedWarning``) or, with ``output_policy="block"``,
the writer waits for a reader and nothing is lost."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot import Sandbox
from conftest import Runner, start_runner, stop

KEEP = 64 << 10

# 20 lines of 1 KiB each per "chunk": easy to check that what arrived is exact.
LINES = "i=0; while [ $i -lt {n} ]; do printf '%07d %01016d\\n' $i 0; i=$((i+1)); done"


def expected_lines(n: int) -> list[str]:
    return [f"{i:07d} {0:01016d}\n" for i in range(n)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def private_runner() -> Iterator[Runner]:
    base = Path(tempfile.mkdtemp(prefix="sl-out-"))
    r = start_runner(base, ["--output-cap", str(4 << 20)])
    try:
        yield r
    finally:
        stop(r)
        shutil.rmtree(base, ignore_errors=True)


def test_unread_output_is_dropped_oldest_first_and_the_reader_is_told(session: sandlot.Session) -> None:
    n = 400  # ~400 KiB through a 64 KiB window
    with Sandbox.create(timeout=120, session=session, output_keep=KEEP) as sb:
        p = sb.exec(["sh", "-c", LINES.format(n=n)])
        assert p.wait() == 0
        with pytest.warns(sandlot.OutputDroppedWarning, match="bytes of output were dropped") as rec:
            items = list(p.stdout)
        assert len([w for w in rec if issubclass(w.category, sandlot.OutputDroppedWarning)]) == 1
        markers = [x for x in items if isinstance(x, sandlot.DroppedMarker)]
        assert len(markers) == 1 and markers[0].nbytes == p.stdout.dropped_bytes
        assert p.stdout.truncated
        lines = [x for x in items if not isinstance(x, sandlot.DroppedMarker)]
        total = sum(len(x) for x in expected_lines(n))
        # The newest bytes are there, exactly, and nothing else went missing.
        assert sum(len(x) for x in lines) + p.stdout.dropped_bytes == total
        assert lines[-1] == expected_lines(n)[-1]
        assert KEEP - 1100 <= sum(len(x) for x in lines) <= KEEP
        assert items.index(markers[0]) <= 1  # at the start: only the oldest went


def test_block_policy_makes_the_writer_wait_and_loses_nothing(session: sandlot.Session) -> None:
    n = 600  # ~600 KiB through a 64 KiB window: only possible if the writer waits
    with Sandbox.create(timeout=120, session=session, output_keep=KEEP, output_policy="block") as sb:
        p = sb.exec(["sh", "-c", LINES.format(n=n) + "; echo done > /tmp/finished"])
        # Nobody reads: the writer is stuck on a full pipe, not finished.
        with pytest.raises(TimeoutError):
            p.wait(timeout=2)
        assert sb.exec(["test", "-e", "/tmp/finished"]).wait() == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error", sandlot.OutputDroppedWarning)
            text = p.stdout.read()
        assert text == "".join(expected_lines(n))
        assert p.stdout.dropped_bytes == 0 and not p.stdout.truncated
        assert p.wait() == 0


def test_a_sandbox_that_filled_its_disk_still_gets_its_output(session: sandlot.Session) -> None:
    # The spool is not on the sandbox's own (full) disk tmpfs.
    with Sandbox.create(timeout=120, session=session, resources={"disk": "8Mi"}) as sb:
        p = sb.exec(["sh", "-c", "head -c 20000000 /dev/zero > /srv/fill; echo after-the-fill"])
        assert p.wait() == 0  # echo is the last command; the fill before it failed
        with warnings.catch_warnings():
            warnings.simplefilter("error", sandlot.OutputDroppedWarning)
            assert p.stdout.read() == "after-the-fill\n"
        assert "No space left" in p.stderr.read()


def test_runner_memory_does_not_grow_with_output(private_runner: Runner) -> None:
    """The issue's case: 24 execs writing 20 MB each, read by nobody, took the
    runner to 406 MB RSS. Now the output goes to spool files, and the
    runner-wide cap (4 MiB here) bounds what is kept of it."""
    s = sandlot.Session(private_runner.url)
    try:
        with Sandbox.create(timeout=300, session=s, resources={"memory": "256Mi"}) as sb:
            before = rss_kib(private_runner.proc.pid)
            procs = [sb.exec(["sh", "-c", "head -c 20000000 /dev/zero"]) for _ in range(24)]
            assert [p.wait() for p in procs] == [0] * 24
            after = rss_kib(private_runner.proc.pid)
            assert after - before < 32 << 10, f"runner RSS grew by {(after - before) >> 10} MiB"
            # Kept: at most the runner-wide cap over all 48 streams.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sandlot.OutputDroppedWarning)
                kept = sum(len(p.stdout.read_bytes()) for p in procs)
            assert 0 < kept <= 4 << 20
            assert kept + sum(p.stdout.dropped_bytes for p in procs) == 24 * 20000000
    finally:
        s.close()


def test_bad_output_options_are_refused_before_sending(session: sandlot.Session) -> None:
    with pytest.raises(ValueError, match="output_policy"):
        Sandbox.create(session=session, output_policy="newest")
    with pytest.raises(ValueError, match="output_keep"):
        Sandbox.create(session=session, output_keep=10)
    # And by the runner, for clients that skip the checks.
    with pytest.raises(sandlot.InvalidArgumentError, match="output_policy"):
        session.request("POST", "/v1/sandboxes", {"output_policy": "x"}).result()
