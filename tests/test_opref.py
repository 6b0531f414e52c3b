"""OperationRef (ext/opref.c): result/exception/done/cancel, transform, done
callbacks from threads, `await` from asyncio (one or several event loops),
garbage collection, and the module's heap types.

Against the real msgpack test server (tests/_msgpack_server.py), not the runner.
"""

import asyncio
import concurrent.futures
import gc
import sys
import threading
import time
import weakref

import pytest

from sandlot import _core

from _core_helpers import RunnerError, mapper, server, wait_until  # noqa: F401 (fixtures)




@pytest.fixture
def client(server):
    return _core.Client(server.unix_url)




# --- types --------------------------------------------------------------------


def test_types_are_heap_types_and_not_constructible():
    with pytest.raises(TypeError):
        _core.OperationRef()
    assert _core.OperationRef.__module__ == "sandlot._core"
    assert _core.OperationRef[int] is not None  # Generic-style subscription works
    with pytest.raises(TypeError):

        class Sub(_core.OperationRef):  # noqa: F841 - not subclassable
            pass


def test_repr(client):
    ref = client.request("GET", "/sleep/0.2")
    assert repr(ref) == "<OperationRef GET /sleep/0.2 pending>"
    ref.result(timeout=10)
    assert repr(ref) == "<OperationRef GET /sleep/0.2 done>"
    assert "unix://" in repr(client)


# --- result / exception / done ---------------------------------------------------


def test_result_timeout_then_result(client):
    ref = client.request("GET", "/sleep/0.5")
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        ref.result(timeout=0.1)
    assert 0.08 < time.monotonic() - t < 1.0
    with pytest.raises(TimeoutError):
        ref.result(timeout=0)
    with pytest.raises(TimeoutError):
        ref.exception(timeout=0.05)
    assert not ref.done()
    assert ref.result() == {"slept": 0.5}  # the request kept running
    assert ref.done() and not ref.cancelled()
    assert ref.exception() is None


def test_result_releases_the_gil(client):
    ref = client.request("GET", "/sleep/0.5")
    ticks = []

    def spin():
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    ref.result(timeout=10)
    t.join()
    assert len(ticks) > 50


def test_transform_applied_once(client):
    calls = []

    def transform(v):
        calls.append(v)
        return v["body"] * 2

    ref = client.request("POST", "/echo", 21, transform=transform)
    assert ref.result(timeout=10) == 42
    assert ref.result() == 42
    assert calls == [{"method": "POST", "path": "/echo", "body": 21, "content_type":
                      "application/msgpack", "auth": None, "expect": None}]


def test_transform_exception_becomes_the_refs_exception(client):
    def transform(v):
        raise KeyError("nope")

    ref = client.request("GET", "/echo", transform=transform)
    with pytest.raises(KeyError) as e1:
        ref.result(timeout=10)
    with pytest.raises(KeyError) as e2:
        ref.result()
    assert e1.value is e2.value
    assert ref.exception() is e1.value


def test_transform_not_called_for_errors(client, mapper):
    calls = []
    ref = client.request("GET", "/error/404/not_found", transform=calls.append)
    assert isinstance(ref.exception(timeout=10), RunnerError)
    assert calls == []


def test_transform_runs_once_under_concurrent_result(client):
    calls = []

    def slow(v):
        calls.append(1)
        time.sleep(0.2)  # releases the GIL: other threads ask meanwhile
        return "value"

    ref = client.request("GET", "/echo", transform=slow)
    while not ref.done():
        time.sleep(0.01)
    out = []
    threads = [threading.Thread(target=lambda: out.append(ref.result())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["value"] * 8
    assert calls == [1]


def test_transform_asking_its_own_ref_is_an_error(client):
    holder = {}

    def transform(v):
        return holder["ref"].result()

    ref = client.request("GET", "/echo", transform=transform)
    holder["ref"] = ref
    with pytest.raises(RuntimeError, match="own transform"):
        ref.result(timeout=10)
    holder.clear()


def test_mapper_variants(client):
    try:
        _core.set_error_mapper(lambda s, c, m: "not an exception")
        with pytest.raises(TypeError, match="not an exception instance"):
            client.request("GET", "/error/404/not_found").result(timeout=10)

        def boom(s, c, m):
            raise LookupError(f"mapper saw {s} {c}")

        _core.set_error_mapper(boom)
        with pytest.raises(LookupError, match="mapper saw 404 not_found"):
            client.request("GET", "/error/404/not_found").result(timeout=10)
        with pytest.raises(TypeError):
            _core.set_error_mapper(42)
    finally:
        _core.set_error_mapper(None)


# --- cancel -------------------------------------------------------------------------


def test_cancel_states(client):
    ref = client.request("GET", "/sleep/10")
    assert not ref.done() and not ref.cancelled()
    assert ref.cancel() is True
    assert ref.done() and ref.cancelled()
    assert ref.cancel() is False
    with pytest.raises(concurrent.futures.CancelledError):
        ref.result(timeout=1)


def test_cancel_wakes_a_blocked_waiter(client):
    ref = client.request("GET", "/sleep/10")
    got = []

    def waiter():
        try:
            ref.result()
        except concurrent.futures.CancelledError as e:
            got.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    ref.cancel()
    t.join(5)
    assert not t.is_alive() and len(got) == 1


# --- add_done_callback -------------------------------------------------------------


def test_done_callback_when_already_done_runs_now(client):
    ref = client.request("GET", "/echo")
    ref.result(timeout=10)
    seen = []
    ref.add_done_callback(lambda r: seen.append((r, threading.get_ident())))
    assert seen == [(ref, threading.get_ident())]


def test_done_callback_runs_on_dispatcher_thread(client):
    ref = client.request("GET", "/sleep/0.3")
    seen = threading.Event()
    info = {}

    def cb(r):
        info["ref"] = r
        info["thread"] = threading.get_ident()
        info["value"] = r.result()
        seen.set()

    ref.add_done_callback(cb)
    assert seen.wait(10)
    assert info["ref"] is ref
    assert info["thread"] != threading.get_ident()
    assert info["value"] == {"slept": 0.3}


def test_done_callbacks_from_many_threads(client):
    n_threads, per_thread = 8, 50
    done = []
    lock = threading.Lock()
    all_done = threading.Event()

    def cb(r):
        with lock:
            done.append(r.result()["body"])
            if len(done) == n_threads * per_thread:
                all_done.set()

    def worker(k):
        for i in range(per_thread):
            client.request("POST", "/echo", k * 1000 + i).add_done_callback(cb)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all_done.wait(30)
    assert sorted(done) == sorted(k * 1000 + i for k in range(n_threads) for i in range(per_thread))


def test_done_callback_order_and_cancel(client):
    ref = client.request("GET", "/sleep/10")
    order = []
    ev = threading.Event()
    ref.add_done_callback(lambda r: order.append(1))
    ref.add_done_callback(lambda r: order.append(2))
    ref.add_done_callback(lambda r: (order.append(r.cancelled()), ev.set()))
    ref.cancel()
    assert ev.wait(5)
    assert order == [1, 2, True]


def test_done_callback_exception_goes_to_unraisablehook(client, monkeypatch):
    hooked = []
    ev = threading.Event()

    def hook(u):
        hooked.append(u.exc_value)
        ev.set()

    monkeypatch.setattr(sys, "unraisablehook", hook)
    ref = client.request("GET", "/sleep/0.1")

    def bad(r):
        raise ValueError("callback failed")

    ref.add_done_callback(bad)
    assert ev.wait(10)
    assert isinstance(hooked[0], ValueError)
    # And when called at once:
    ev.clear()
    ref.add_done_callback(bad)
    assert ev.is_set() and len(hooked) == 2
    with pytest.raises(TypeError):
        ref.add_done_callback(42)


# --- await --------------------------------------------------------------------------


def test_await_value_error_and_done(client, mapper):
    async def main():
        assert await client.request("POST", "/echo", "x", transform=lambda v: v["body"]) == "x"
        with pytest.raises(RunnerError) as ei:
            await client.request("GET", "/error/409/conflict")
        assert ei.value.code == "conflict"
        ref = client.request("GET", "/echo")
        ref.result(timeout=10)
        assert (await ref)["method"] == "GET"  # already done: no wake-up needed
        assert (await ref)["method"] == "GET"  # awaiting twice is fine

    asyncio.run(main())


def test_await_gather_1000(client):
    async def main():
        refs = [client.request("POST", "/echo", i, transform=lambda v: v["body"])
                for i in range(1000)]
        return await asyncio.gather(*refs)

    t = time.monotonic()
    assert asyncio.run(main()) == list(range(1000))
    assert time.monotonic() - t < 30


def test_await_does_not_block_the_loop(client):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        await client.request("GET", "/sleep/0.5")
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 20


def test_await_from_two_loops_in_two_threads(client):
    results = {}

    def run(k):
        async def main():
            refs = [client.request("POST", "/echo", [k, i], transform=lambda v: v["body"])
                    for i in range(300)]
            slow = client.request("GET", "/sleep/0.3")
            return await asyncio.gather(*refs), await slow

        results[k] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in range(2):
        vals, slow = results[k]
        assert vals == [[k, i] for i in range(300)]
        assert slow == {"slept": 0.3}


def test_awaiting_task_cancelled_cancels_the_ref(client, server):
    server.reset()
    ref = client.request("GET", "/sleep/10")

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ref, 0.3)

    asyncio.run(main())
    assert ref.cancelled()
    assert wait_until(lambda: server.stats()["aborted"] == 1)


def test_await_cancelled_ref(client):
    ref = client.request("GET", "/sleep/10")

    async def main():
        async def canceller():
            await asyncio.sleep(0.2)
            ref.cancel()

        asyncio.ensure_future(canceller())
        with pytest.raises(asyncio.CancelledError):
            await ref

    asyncio.run(main())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_await(ref))  # already cancelled


async def _await(ref):
    return await ref


def test_loop_closed_with_pending_await_is_harmless(client):
    loop = asyncio.new_event_loop()
    ref = client.request("GET", "/sleep/0.3")
    task = loop.create_task(_await(ref))
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()  # task abandoned while the request is in flight
    del task, loop
    assert ref.result(timeout=10) == {"slept": 0.3}
    # A new loop still works.
    assert asyncio.run(_await(client.request("GET", "/echo")))["method"] == "GET"


def test_await_outside_a_loop_raises(client):
    ref = client.request("GET", "/echo")
    with pytest.raises(RuntimeError):
        ref.__await__()


# --- garbage collection ----------------------------------------------------------


def test_unawaited_pending_refs_are_collected(client):
    gc.collect()
    base = _core._live_requests()
    refs = [client.request("GET", "/sleep/0.3") for _ in range(100)]
    wrs = [weakref.ref(r) for r in refs]
    del refs
    gc.collect()
    assert all(w() is None for w in wrs)  # Python side gone at once ...
    # ... while the transport finishes the transfers and then frees them.
    assert wait_until(lambda: _core._live_requests() == base, timeout=10), (
        _core._live_requests(), base)
    assert client.request("GET", "/echo").result(timeout=10)["method"] == "GET"


def test_ref_cycle_through_transform_is_collected(client):
    gc.collect()
    base = _core._live_requests()

    class Box:
        pass

    box = Box()
    ref = client.request("GET", "/echo", transform=lambda v, box=box: box)
    box.ref = ref  # ref -> transform -> box -> ref
    wr = weakref.ref(ref)
    ref.result(timeout=10)  # value is box: ref -> value -> box -> ref
    del ref, box
    gc.collect()
    assert wr() is None
    assert wait_until(lambda: _core._live_requests() == base)


def test_awaited_ref_stays_alive_until_delivered(client):
    async def main():
        fut = asyncio.ensure_future(_await(client.request("GET", "/sleep/0.2")))
        await asyncio.sleep(0)  # the task now awaits a ref nobody else holds
        gc.collect()
        return await fut

    assert asyncio.run(main()) == {"slept": 0.2}


def test_callback_keeps_ref_alive(client):
    ev = threading.Event()
    client.request("GET", "/sleep/0.2").add_done_callback(lambda r: ev.set())
    gc.collect()
    assert ev.wait(10)


def test_ctrl_c_interrupts_result(server):
    import signal
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from sandlot import _core
        ref = _core.Client({server.unix_url!r}).request("GET", "/sleep/30")
        print("waiting", flush=True)
        try:
            ref.result()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"waiting\n"
        time.sleep(0.3)
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 3
        assert time.monotonic() - t < 2
        assert p.stdout.read() == b"interrupted\n"
    finally:
        p.kill()
        p.wait()
