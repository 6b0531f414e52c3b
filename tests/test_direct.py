"""Direct calls (issue 12): remote() over a unix socket to a worker the
runner leases to this client. Real runner, real worker sandboxes; every test
checks that the call really went direct (its ref's path, the worker's
``leased`` flag) and that the runner kept control (limits of the sandbox,
cancel, death, deletion, handing the worker back)."""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest
import sandlot


def add(a, b):
    return a + b


#: Differs per worker process (every sandbox's worker has pid 2 in its own
#: pid namespace, so the pid cannot tell workers apart).
_WORKER = os.urandom(8).hex()


def pid_after(s):
    time.sleep(s)
    return _WORKER


def fail(msg):
    raise ValueError(msg)


def crash(now):
    if now:
        os._exit(3)
    return "fine"


def write_direct_dir():
    with open("/run/sandlot-direct/planted", "w") as f:
        f.write("x")
    return "written"


def wait_until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def direct_ref(f, *args):
    """A ref that went direct: the first call warms the pool, the next one
    leases the idle worker (retrying while the pool is busy)."""
    for _ in range(100):
        ref = f.remote(*args)
        if "/direct" in repr(ref):
            return ref
        ref.exception(timeout=120)  # waits; a failing function's error is fine here
        time.sleep(0.05)
    raise AssertionError("no call went direct")


def leased(f):
    return [w for w in f.info()["workers"] if w.get("leased")]


@pytest.fixture
def fn(session):
    made = []

    def make(func, **kw):
        f = sandlot.RemoteFunction(func, session=session, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.delete()


def test_sequential_calls_go_direct_and_return_results(fn):
    f = fn(add)
    ref = direct_ref(f, 1, 2)
    assert ref.result(timeout=60) == 3
    assert [f.remote(i, i).result(timeout=60) for i in range(50)] == [2 * i for i in range(50)]
    assert len(leased(f)) == 1
    assert f.info()["direct_dir"]


def test_exceptions_keep_their_type_over_the_direct_path(fn):
    f = fn(fail)
    ref = direct_ref(f, "warm")
    with pytest.raises(ValueError, match="warm"):
        ref.result(timeout=60)
    with pytest.raises(ValueError, match="again"):
        f.remote("again").result(timeout=60)


def test_worker_death_fails_the_call_and_the_pool_recovers(fn):
    f = fn(crash)
    assert direct_ref(f, False).result(timeout=60) == "fine"
    ref = f.remote(True)
    assert "/direct" in repr(ref)
    with pytest.raises(sandlot.WorkerCrashedError):
        ref.result(timeout=120)
    # The dead leased worker is gone from the pool; later calls still work.
    assert wait_until(lambda: not leased(f))
    assert f.remote(False).result(timeout=120) == "fine"


def test_cancel_kills_the_leased_worker(fn):
    f = fn(pid_after)
    direct_ref(f, 0).result(timeout=60)
    ref = f.remote(60)
    assert "/direct" in repr(ref)
    time.sleep(0.5)
    before = {w["sandbox_id"] for w in leased(f)}
    assert before
    assert ref.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        ref.result(timeout=5)
    # The runner killed that sandbox: the call does not run on for 60 s.
    assert wait_until(lambda: not before & {w["sandbox_id"] for w in f.info()["workers"]})
    assert isinstance(f.remote(0).result(timeout=120), str)


def test_fan_out_still_uses_the_whole_pool(fn):
    f = fn(pid_after, max_workers=2)
    direct_ref(f, 0).result(timeout=60)
    refs = [f.remote(1.0) for _ in range(6)]
    assert "/direct" in repr(refs[0]) and all("/direct" not in repr(r) for r in refs[1:])
    pids = {r.result(timeout=120) for r in refs}
    assert len(pids) == 2  # both workers ran calls: the lease did not pin the pool to one


def test_map_hands_the_leased_worker_back(fn):
    f = fn(add, max_workers=2)
    direct_ref(f, 0, 0).result(timeout=60)
    assert leased(f)
    out = [r.result(timeout=120) for r in f.map([(i, 1) for i in range(400)])]
    assert out == [i + 1 for i in range(400)]
    assert wait_until(lambda: not leased(f))


def test_idle_lease_returns_the_worker_and_calls_go_on(fn):
    f = fn(add, idle_timeout=1)
    direct_ref(f, 1, 1).result(timeout=60)
    # The worker ends an idle lease after idle_timeout (here 1 s) and goes
    # back to the runner, which may then reap it; the next call still works.
    assert wait_until(lambda: not leased(f), timeout=30)
    assert f.remote(2, 3).result(timeout=120) == 5


def test_worker_cannot_write_the_direct_dir(fn, runner):
    f = fn(write_direct_dir)
    ref = direct_ref(f)
    with pytest.raises(OSError, match="Read-only"):
        ref.result(timeout=60)
    d = f.info()["direct_dir"]
    assert not os.path.exists(os.path.join(d, "planted"))
    assert os.stat(d).st_mode & 0o777 == 0o700


def test_timeout_and_fresh_functions_never_lease(fn):
    for f in (fn(add, max_timeout_seconds=30), fn(add, fresh_sandbox=True)):
        for i in range(3):
            ref = f.remote(i, 1)
            assert "/direct" not in repr(ref)
            assert ref.result(timeout=120) == i + 1
        assert f.info()["direct_dir"] is None


def test_lease_api_validates_its_input(fn, session):
    f = fn(add)
    f.remote(1, 1).result(timeout=120)
    fid = f.function_id
    with pytest.raises(sandlot.InvalidArgumentError, match="socket"):
        session.request("POST", f"/v1/functions/{fid}/lease", {"socket": "../../etc/x"}).result()
    with pytest.raises(sandlot.InvalidArgumentError, match="socket"):
        session.request("POST", f"/v1/functions/{fid}/lease", {}).result()
    assert session.request("POST", f"/v1/functions/{fid}/lease/cancel",
                           {"worker": "sb-0000000000000000"}).result() == {"killed": False}
    with pytest.raises(sandlot.NotFoundError):
        session.request("POST", "/v1/functions/fn-0000000000000000/lease", {"socket": "a"}).result()


def test_deleted_function_removes_its_direct_dir(session):
    f = sandlot.RemoteFunction(add, session=session)
    direct_ref(f, 1, 1).result(timeout=60)
    d = f.info()["direct_dir"]
    assert os.path.isdir(d)
    f.delete()
    assert wait_until(lambda: not os.path.exists(d))


def test_map_goes_straight_to_every_leased_worker(fn):
    f = fn(pid_after, max_workers=2)
    sandlot.results(f.map([(0.3,)] * 8), timeout=120)  # the pool grows to 2 through the runner
    calls_before = f.info()["calls"]
    out = sandlot.results(f.map([(0.0,)] * 400), timeout=120)
    assert len(set(out)) == 2  # both workers, both cores
    assert f.info()["calls"] == calls_before  # no chunk went through the runner
    assert len(leased(f)) == 2  # kept for the next map()
    # A fan-out through the runner gets the workers back: both run its calls.
    refs = [f.remote(1.0) for _ in range(6)]
    assert len({r.result(timeout=120) for r in refs}) == 2


def test_direct_map_crash_fails_its_chunk_only(fn):
    f = fn(crash, max_workers=1)
    direct_ref(f, False).result(timeout=60)
    items = [(False,)] * 4 + [(False,), (True,), (False,), (False,)] + [(False,)] * 4
    refs = f.map(items, chunksize=4)
    assert [r.result(timeout=60) for r in refs[:4]] == ["fine"] * 4
    for r in refs[4:8]:
        with pytest.raises(sandlot.WorkerCrashedError):
            r.result(timeout=60)
    # The chunk behind the crashed one never started: it ran through the runner.
    assert [r.result(timeout=120) for r in refs[8:]] == ["fine"] * 4


def test_direct_map_cancel_of_a_running_chunk_kills_its_worker(fn):
    f = fn(pid_after, max_workers=1)
    direct_ref(f, 0).result(timeout=60)
    refs = f.map([(30,)] * 8, chunksize=4)
    for r in refs:
        assert r.cancel()
    t0 = time.monotonic()
    assert isinstance(f.remote(0.1).result(timeout=120), str)
    assert time.monotonic() - t0 < 25  # not behind 8 x 30 s of cancelled sleeps


def big(n):
    return "x" * n


def forge_frame():
    """Write a frame header claiming 4 GiB to the direct socket (the
    function finds its own connection among its fds)."""
    import socket
    import stat
    import struct

    for fd in range(3, 64):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            s = socket.socket(fileno=os.dup(fd))
            s.sendall(struct.pack(">IBQ", 0xFFFFFFF0, ord("O"), 1))
            s.detach()
            time.sleep(5)
            return "sent"
        except OSError:
            continue
    return "no socket"


def test_large_results_travel_direct(fn):
    f = fn(big)
    direct_ref(f, 10).result(timeout=60)
    ref = f.remote(5 << 20)
    assert "/direct" in repr(ref)
    assert ref.result(timeout=120) == "x" * (5 << 20)


def test_a_forged_frame_kills_the_worker_not_the_client(fn):
    f = fn(forge_frame)
    ref = direct_ref(f)
    # Whatever the worker's code writes to the socket, the client neither
    # buffers 4 GiB nor hangs: the call fails and the worker is replaced.
    with pytest.raises(sandlot.WorkerCrashedError, match="malformed frame"):
        ref.result(timeout=60)
    assert wait_until(lambda: not leased(f))


def look(path):
    return [os.path.exists(path), sorted(os.listdir("/run/sandlot-direct"))]


def test_other_functions_workers_cannot_see_a_direct_dir(fn):
    f = fn(add)
    direct_ref(f, 1, 1).result(timeout=60)
    d = f.info()["direct_dir"]
    # A listening socket of f's, as a client makes while it leases.
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(d, "d-probe.sock"))
    s.listen(1)
    try:
        g = fn(look)
        exists, listing = g.remote(d).result(timeout=120)
        assert exists is False  # the runner's state dir is not in the sandbox
        assert "d-probe.sock" not in listing  # g's workers see g's dir only
    finally:
        s.close()
        os.unlink(os.path.join(d, "d-probe.sock"))
