"""The client side of many calls: the collector that long-polls a session's
channel for the outcomes of batched ``map`` calls, the ``_Chunk`` that turns
one chunk's outcome into its refs, and the helpers over many refs
(``wait``, ``as_completed``, ``gather``, ``results``).

Split from function.py, which keeps ``RemoteFunction`` itself; both are
re-exported from ``sandlot``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import _core, errors
from .session import Session

if TYPE_CHECKING:
    from .function import RemoteFunction

log = logging.getLogger("sandlot")

# ---------------------------------------------------------------------------
# the collector: outcomes of batched calls arrive on a channel
# ---------------------------------------------------------------------------

class _Collector:
    """One per session: long-polls the session's channel and completes the
    Promise of each finished batched call."""

    def __init__(self, session: Session) -> None:
        self._session = weakref.ref(session)
        self._client = session._client
        self.channel = "ch-" + secrets.token_hex(8)
        self._pending: dict[str, _core.Promise] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._landed = 0  # submissions the runner has answered (under _cv)

    def add(self, items: list[tuple[str, Any]]) -> None:
        with self._cv:
            self._pending.update(items)

    def start(self) -> None:
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sandlot-collector", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def landed(self) -> None:
        """A submission reached the runner: a poll now finds its calls."""
        with self._cv:
            self._landed += 1
            self._cv.notify_all()

    def forget(self, call_id: str) -> None:
        with self._cv:
            self._pending.pop(call_id, None)

    def fail(self, ids: Iterable[str], status: int, code: str, message: str) -> None:
        body = _core.packb({"error": {"code": code, "message": message}})
        for cid in ids:
            with self._cv:
                p = self._pending.pop(cid, None)
            if isinstance(p, _Chunk):  # _Chunk or a cluster chunk
                p.fail(status, code, message)
            elif p is not None:
                p.complete(status, body)

    def _run(self) -> None:
        failures = 0
        landed = -1
        while True:
            with self._cv:
                while not self._pending:
                    if not self._cv.wait(timeout=30.0) and not self._pending:
                        self._thread = None
                        return
            try:
                resp = self._client.request(
                    "POST", f"/v1/channels/{self.channel}/wait", {"timeout": 25.0, "max": 65536}, timeout=60.0
                ).result()
                failures = 0
            except RuntimeError as exc:
                # The session was closed: nothing will answer these calls.
                with self._cv:
                    ids = list(self._pending)
                self.fail(ids, 0, "closed", f"the session was closed: {exc}")
                with self._cv:
                    self._thread = None
                return
            except errors.SandboxError as exc:
                failures += 1
                if isinstance(exc, errors.RunnerUnavailableError) and exc.status == 0:
                    # The runner that holds these calls is gone (a new one
                    # does not know them): fail them now, with the reason.
                    with self._cv:
                        ids = list(self._pending)
                    self.fail(ids, 0, "runner_exited", f"the runner exited while this call was running ({exc})")
                    failures = 0
                elif failures >= 5 or isinstance(exc, errors.NotFoundError):
                    with self._cv:
                        ids = list(self._pending)
                    self.fail(ids, exc.status, exc.code, f"lost contact with the runner: {exc}")
                    failures = 0
                time.sleep(min(1.0, 0.05 * 2**failures))
                continue
            calls = resp.get("calls", [])
            if not calls and resp.get("pending", 0) == 0:
                # The submission has not landed yet: poll again as soon as
                # one does (map() reports it), or after 1 ms at the latest.
                with self._cv:
                    if self._landed == landed:
                        self._cv.wait(0.001)
                    landed = self._landed
                continue
            with self._cv:
                pop = self._pending.pop
                found = [(pop(rec["call_id"], None), rec) for rec in calls]
            for p, rec in found:
                if isinstance(p, _Chunk):  # _Chunk or a cluster chunk
                    p.done(rec)
                elif p is not None:
                    p.complete(200, _core.packb(rec))


class _Chunk:
    """Consecutive map() items submitted as one call: the worker runs them in
    order and returns ``[kinds, values]`` (``kinds[i]`` is ``"O"`` for a value,
    ``"E"`` for an exception description). The chunk's refs come from one
    ``_core.PromiseBatch``, which hands out ``values[i]`` itself (in C) and
    calls :meth:`get` only for the others. The batch references this chunk
    (fallback and on_cancel) and the refs reference the batch; the chunk
    drops the batch once complete, so no cycle remains and consumed refs are
    freed by reference counting, not by the cycle collector.

    Cancelling one ref of a chunk completes that ref as cancelled at once;
    the item still runs with its chunk (its result is dropped). Once every
    ref of a chunk is cancelled the call itself is cancelled: dropped if
    queued, its worker killed and replaced if running."""

    __slots__ = ("fn", "n", "kinds", "values", "rec", "err", "batch", "cid", "client", "coll", "ncancel", "kill")

    def __init__(self, fn: RemoteFunction[Any, Any], n: int, cid: str, client: _core.Client, coll: _Collector) -> None:
        # Not the RemoteFunction: the batch (so every ref) references this
        # chunk, and a RemoteFunction can reach user objects that hold the
        # refs (a bound method's instance), which would make a cycle.
        self.fn = fn._codec
        self.n = n
        self.cid = cid
        self.client = client
        self.coll = coll
        self.kinds: str | None = None
        self.values: list[Any] | None = None
        self.rec: dict[str, Any] | None = None
        self.err: tuple[int, str, str] | None = None
        self.ncancel = 0
        # A chunk sent straight to a leased worker (_direct.py) is cancelled
        # by having the runner kill that worker.
        self.kill: Any = None
        self.batch: _core.PromiseBatch | None = _core.PromiseBatch(f"/v1/calls/{cid}", n, self.get,
                                                                    self.cancelled)

    def get(self, i: int) -> Any:
        if self.kinds is not None:
            if self.kinds[i] == "O":
                return self.values[i]  # type: ignore[index]
            raise self.fn._rebuild(self.values[i])  # type: ignore[index]
        if self.err is not None:
            raise errors.error_from_response(*self.err)
        return self.fn._outcome(self.rec or {"status": "failed", "message": "no outcome"})

    def done(self, rec: dict[str, Any]) -> None:
        if rec.get("status") == "ok":
            try:
                kinds, values = self.fn._dec(rec["data"])
                if not isinstance(kinds, str) or len(kinds) != self.n or len(values) != self.n:
                    raise ValueError(f"{len(kinds)} outcomes for {self.n} items")
            except Exception as exc:  # noqa: BLE001 - a broken worker must not hang the refs
                self.rec = {"status": "failed", "message": f"malformed result of a map chunk: {exc}"}
            else:
                self.values = values
                self.kinds = kinds
                # All "O" (the usual case): no per-item check at all.
                if type(values) is not list:
                    values = list(values)
                self._complete(values, None if kinds.count("O") == self.n else kinds)
                return
        else:
            self.rec = rec
        self._complete()

    def fail(self, status: int, code: str, message: str) -> None:
        self.err = (status, code, message)
        self._complete()

    def _complete(self, values: list[Any] | None = None, kinds: str | None = None) -> None:
        batch, self.batch = self.batch, None  # breaks the chunk <-> batch cycle
        if batch is not None:
            batch.complete(values, kinds)

    def cancelled(self, i: int) -> None:
        self.ncancel += 1
        if self.ncancel == self.n:
            if self.kill is not None:
                self.kill()
            else:
                _cancel_call(self.client, self.coll, self.cid)


_collectors: weakref.WeakKeyDictionary[Session, _Collector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def _collector(session: Session) -> _Collector:
    with _collectors_lock:
        c = _collectors.get(session)
        if c is None:
            c = _collectors[session] = _Collector(session)
        return c


def _submitted(coll: _Collector, ids: list[str], req: Any) -> None:
    try:
        exc = req.exception()
    except BaseException as e:  # noqa: BLE001 - cancelled: treat as refused
        exc = e
    if exc is not None:
        coll.fail(ids, getattr(exc, "status", 0) or 500, getattr(exc, "code", None) or "failed", str(exc))
    else:
        coll.landed()


def _cancel_call(client: _core.Client, coll: _Collector, call_id: str) -> None:
    coll.forget(call_id)
    try:
        client.request("POST", "/v1/calls/cancel", {"call_ids": [call_id]}, timeout=30.0)
    except Exception:  # pragma: no cover - best effort
        log.debug("cancel of %s could not be sent", call_id, exc_info=True)


# ---------------------------------------------------------------------------
# helpers over many refs
# ---------------------------------------------------------------------------

def wait(refs: Iterable[Any], num_returns: int | None = None, timeout: float | None = None) -> tuple[list[Any], list[Any]]:
    """Block until ``num_returns`` refs (default: all) are done or ``timeout``
    passes; returns ``(done, pending)``, each in the input order."""
    refs = list(refs)
    want = len(refs) if num_returns is None else max(0, min(num_returns, len(refs)))
    cv = threading.Condition()
    count = [0]

    def on_done(_: Any) -> None:
        with cv:
            count[0] += 1
            cv.notify_all()

    for r in refs:
        r.add_done_callback(on_done)
    deadline = None if timeout is None else time.monotonic() + timeout
    with cv:
        while count[0] < want:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            cv.wait(left if left is None else min(left, 0.1)) if left is not None else cv.wait(0.1)
    done = [r for r in refs if r.done()]
    pending = [r for r in refs if not r.done()]
    return done, pending


def as_completed(refs: Iterable[Any], timeout: float | None = None, progress: bool = False) -> Iterator[Any]:
    """Yield refs as they finish (first finished first). Raises ``TimeoutError``
    if ``timeout`` seconds pass before all are done. ``progress=True`` draws
    done/total, rate, ETA and failures on stderr as they arrive."""
    import queue

    refs = list(refs)
    if progress:
        from ._progress import watch

        watch(refs)
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for r in refs:
        r.add_done_callback(q.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(len(refs)):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"as_completed: not all {len(refs)} refs done after {timeout} s")
        try:
            yield q.get(timeout=left)
        except queue.Empty:
            raise TimeoutError(f"as_completed: not all {len(refs)} refs done after {timeout} s") from None


async def gather(*refs: Any, return_exceptions: bool = False) -> list[Any]:
    """``await sandlot.gather(*refs)``: the results in order (asyncio)."""

    async def one(r: Any) -> Any:
        return await r

    return list(await asyncio.gather(*(one(r) for r in refs), return_exceptions=return_exceptions))


def results(refs: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """The results of refs, in order (raises the first failure met)."""
    return [r.result(timeout) for r in refs]
