"""PromiseBatch (ext/promise.c): the refs of a map() chunk, one shared C object.

No runner here: a batch is completed from Python, as the collector does with a
chunk's outcome (the end-to-end map() tests are in test_function.py).
"""

import asyncio
import concurrent.futures
import gc
import os
import threading
import time
import tracemalloc
import weakref

import pytest

from sandlot import _core


class ItemError(Exception):
    pass


def make(n, on_cancel=None):
    """A batch whose fallback raises ItemError(i) (an item's remote exception)."""

    def fallback(i):
        raise ItemError(i)

    return _core.PromiseBatch("/v1/calls/t", n, fallback, on_cancel)


def test_refs_are_operation_refs_in_order():
    b = make(3)
    refs = b.refs()
    assert len(b) == 3 and len(refs) == 3
    assert all(type(r) is _core.OperationRef for r in refs)
    assert [repr(r) for r in refs] == [f"<OperationRef POST /v1/calls/t[{i}] pending>" for i in range(3)]
    assert not any(r.done() for r in refs)
    assert b.complete(["a", "b", "c"]) == 3
    assert [r.result() for r in refs] == ["a", "b", "c"]
    assert [r.exception() for r in refs] == [None] * 3
    assert repr(refs[1]) == "<OperationRef POST /v1/calls/t[1] done>"
    assert b.refs()[2].result() == "c"  # fresh refs of a completed batch


def test_result_arguments():
    b = make(1)
    (r,) = b.refs()
    with pytest.raises(TimeoutError, match=r"POST /v1/calls/t not done after 0\.01 s"):
        r.result(0.01)
    with pytest.raises(TimeoutError):
        r.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        r.exception(0.01)
    with pytest.raises(TypeError, match="unexpected keyword"):
        r.result(tmo=1)
    with pytest.raises(TypeError, match="at most 1"):
        r.result(1, timeout=1)
    with pytest.raises(ValueError, match="NaN"):
        r.result(float("nan"))
    b.complete([7])
    assert r.result(None) == 7 and r.result(timeout=None) == 7 and r.result(0) == 7


def test_per_item_exceptions_fail_only_their_item():
    b = make(4)
    refs = b.refs()
    assert b.complete([10, None, 30, None], "OEOE") == 4
    assert refs[0].result() == 10 and refs[2].result() == 30
    for i in (1, 3):
        with pytest.raises(ItemError) as ei:
            refs[i].result()
        assert ei.value.args == (i,)
        assert refs[i].exception() is ei.value  # materialised once
    assert refs[0].exception() is None


def test_complete_without_values_defers_to_fallback_and_second_complete_is_ignored():
    b = make(2)
    refs = b.refs()
    assert b.complete() == 2
    with pytest.raises(ItemError):
        refs[0].result()
    assert b.complete([1, 2]) == 0  # nothing pending: what done refs see stays
    with pytest.raises(ItemError):
        refs[1].result()


def test_bad_arguments():
    with pytest.raises(ValueError, match="label"):
        _core.PromiseBatch("no-slash", 1)
    with pytest.raises(ValueError, match="n must be"):
        _core.PromiseBatch("/x", -1)
    with pytest.raises(TypeError, match="callables"):
        _core.PromiseBatch("/x", 1, 3)
    b = make(2)
    with pytest.raises(ValueError, match="list of 2"):
        b.complete([1])
    with pytest.raises(ValueError, match="str of 2"):
        b.complete([1, 2], "O")
    with pytest.raises(RuntimeError, match="not initialised"):
        _core.PromiseBatch.__new__(_core.PromiseBatch).refs()
    assert make(0).refs() == [] and make(0).complete([]) == 0


def test_cancel_one_ref_of_a_batch():
    seen = []
    b = make(3, on_cancel=seen.append)
    refs = b.refs()
    calls = []
    refs[1].add_done_callback(calls.append)
    assert refs[1].cancel() and refs[1].cancelled() and refs[1].done()
    assert not refs[1].cancel()  # once
    assert seen == [1]
    with pytest.raises(concurrent.futures.CancelledError):
        refs[1].result()
    with pytest.raises(concurrent.futures.CancelledError):
        refs[1].exception()
    assert not refs[0].done() and not refs[2].done()
    assert b.complete([1, 2, 3]) == 2  # the cancelled one is skipped
    assert refs[0].result() == 1 and refs[2].result() == 3
    assert refs[1].cancelled()
    assert not refs[0].cancel()  # done: too late
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.005)
    assert calls == [refs[1]]


def test_complete_wakes_blocked_waiters_and_runs_callbacks():
    b = make(50)
    refs = b.refs()
    got = []
    waiters = [threading.Thread(target=lambda r=r: got.append(r.result(timeout=30))) for r in refs[::10]]
    for t in waiters:
        t.start()
    done = []
    ev = threading.Event()

    def cb(r):
        done.append(r)
        if len(done) == 50:
            ev.set()

    for r in refs:
        r.add_done_callback(cb)
    time.sleep(0.05)  # the waiters block with the GIL released
    b.complete(list(range(50)))
    for t in waiters:
        t.join(30)
    assert sorted(got) == list(range(0, 50, 10))
    assert ev.wait(30) and sorted(r.result() for r in done) == list(range(50))
    # A callback added after completion runs at once.
    late = []
    refs[3].add_done_callback(late.append)
    assert late == [refs[3]]


def test_await_batch_refs():
    b = make(100)
    refs = b.refs()

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, b.complete, list(range(100)), "O" * 99 + "E")
        out = await asyncio.gather(*refs[:99])
        with pytest.raises(ItemError):
            await refs[99]
        return out, await refs[5]  # done: no round trip through the waker

    assert asyncio.run(main()) == (list(range(99)), 5)


def test_cancelling_the_awaiting_task_cancels_only_that_ref():
    seen = []
    b = make(2, on_cancel=seen.append)
    refs = b.refs()

    async def main():
        t = asyncio.ensure_future(_wait(refs[0]))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    async def _wait(r):
        return await r

    asyncio.run(main())
    assert refs[0].cancelled() and not refs[1].done() and seen == [0]
    b.complete([1, 2])
    assert refs[1].result() == 2


def test_refs_outlive_their_batch_and_siblings():
    b = make(1000)
    refs = b.refs()
    b.complete([str(i) for i in range(1000)])
    batch = weakref.ref(b)
    keep = refs[777]
    del b, refs
    assert batch() is not None  # the last ref keeps it
    assert keep.result() == "777"
    del keep
    assert batch() is None  # refcounting alone: no cycle


def test_partly_consumed_batch_is_freed_without_the_cycle_collector():
    gc.collect()
    gc.disable()
    try:
        b = make(500)
        refs = b.refs()
        b.complete([[i] for i in range(500)], "O" * 499 + "E")
        assert [r.result() for r in refs[:100]] == [[i] for i in range(100)]
        with pytest.raises(ItemError):
            refs[499].result()
        batch = weakref.ref(b)
        del b, refs
        assert batch() is None
    finally:
        gc.enable()


def test_no_leak_over_many_batches():
    def cycle():
        b = make(1000)
        refs = b.refs()
        b.complete(list(range(1000)), "O" * 998 + "EE")
        [r.result() for r in refs[:500]]
        for r in refs[998:]:
            r.exception()
        refs[600].cancel()

    for _ in range(20):
        cycle()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            cycle()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, grown  # 200,000 refs made and dropped


def test_a_value_that_holds_its_own_ref_is_collected():
    b = make(1)
    (r,) = b.refs()
    b.complete([[]])
    r.result().append(r)  # ref -> batch -> values -> list -> ref
    w = weakref.ref(b)
    del b, r
    gc.collect()
    assert w() is None


def test_a_value_that_holds_a_sibling_ref_is_collected():
    # The refs start untracked by the cycle collector; handing out a
    # container (here a dict of ints, itself untracked until it holds the
    # ref) must make the batch's refs tracked so the cycle is found.
    for kind in ("dict", "list"):
        b = make(2)
        refs = b.refs()
        b.complete([{"a": 1} if kind == "dict" else [1], 2])  # held by the batch only
        v = refs[0].result()
        if kind == "dict":
            v["sibling"] = refs[1]
        else:
            v.append(refs[1])
        w = weakref.ref(b)
        del b, refs, v
        gc.collect()
        assert w() is None, kind


def test_exceptions_of_items_are_collected_with_their_tracebacks():
    b = make(3)
    refs = b.refs()
    b.complete([1, None, 3], "OEO")
    try:
        refs[1].result()
    except ItemError as exc:
        keep = exc  # exc -> traceback -> this frame -> refs -> ref -> exc
    w = weakref.ref(b)
    del b, refs, keep
    gc.collect()
    assert w() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pending_batch_refs_fail_in_a_fork_child():
    b = make(2)
    refs = b.refs()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            refs[0].result(timeout=5)
        except Exception as exc:  # noqa: BLE001
            code = 0 if "forked" in str(exc) and b.complete([1, 2]) == 0 else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b.complete([1, 2]) == 2 and refs[0].result() == 1
