"""RemoteFunction over a cluster: one warm pool per eligible runner.

The function is registered on every runner the placement allows (the
session's :class:`Placement`, the function's ``runner_ids``, its
``profile_ids`` / ``profile_names`` — a runner must have them — and its
per-worker ``resources``, which a node's totals must cover). Each runner has
its own copy of the ``RemoteFunction`` bound to a plain session on that
runner, so the whole single-runner machinery (chunked ``map``, the channel
collector, ``PromiseBatch``) is reused as is.

* ``remote`` goes to the pool with the fewest calls this client has
  outstanding on it (ties rotate).
* ``map`` cuts the items into chunks as on one runner, deals the chunks out
  round-robin over the pools (so every node's pool works on its share at
  once), and returns the refs in item order.
* Node loss: a call or chunk whose runner is lost fails with
  :class:`sandlot.NodeLostError`, or, when the function was made with
  ``retries=N``, is sent again to another live runner (at most N times).
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any

from .. import errors
from .._calls import _Chunk, _collector, _submitted
from .._direct import DirectChannel
from ..resources import gpu_count
from ._session import _convert, relay

if TYPE_CHECKING:
    from ..function import RemoteFunction
    from ._session import ClusterSession, _Runner

log = logging.getLogger("sandlot.cluster")

#: map(): chunks per worker per pool, as on one runner.
_CHUNKS_PER_WORKER = 4


#: How a runner reports the calls it dropped because it is stopping (fn_registry.c).
_SHUTDOWN_MESSAGE = "the runner is shutting down"


def _lost_code(status: int, code: str) -> bool:
    # runner_exited: the connection broke after the request went out
    # (RunnerExitedError), which on a cluster is how a lost node looks too.
    return code in ("node_lost", "runner_exited") or (status == 0 and code == "unavailable")


def _runner_stopped(rec: dict[str, Any]) -> bool:
    """A call the runner dropped because it stops (its node is going away), not the caller:
    status "runner_exited" (fn_calls.c), or "cancelled" with the older shutdown message."""
    status = rec.get("status")
    return status == "runner_exited" or (status == "cancelled" and rec.get("message") == _SHUTDOWN_MESSAGE)


class _ClusterChunk(_Chunk):
    """A map chunk that may be resent to another runner when its runner is lost."""

    __slots__ = ("payload", "owner", "runner", "tries", "lost")

    def fail(self, status: int, code: str, message: str) -> None:
        # A direct chunk (self.kill set) whose worker left is resent through
        # the runner; "unavailable" there means the runner is gone too.
        if (_lost_code(status, code) or (self.kill is not None and code == "unavailable")) \
                and self.batch is not None:
            self.owner._chunk_lost(self, message)
            return
        super().fail(status, code, message)

    def done(self, rec: dict[str, Any]) -> None:
        if _runner_stopped(rec) and self.batch is not None:
            self.owner.core.wake.set()
            self.owner._chunk_lost(self, f"its runner stopped ({_SHUTDOWN_MESSAGE})")
            return
        if rec.get("status") == "crashed" and self.kill is not None and self.batch is not None:
            # A leased worker died under a direct chunk: its node (runner
            # and every worker) may be what died. Asked off the reader thread.
            self.owner.core.pool.submit(self.owner._direct_crashed, self, rec)
            return
        super().done(rec)

    def get(self, i: int) -> Any:
        if self.kinds is None and self.lost is not None:
            raise self.lost
        return super().get(i)

    def _complete(self, values: list[Any] | None = None, kinds: str | None = None) -> None:
        if self.batch is not None:
            self.owner._chunk_done(self.runner, self.n)
        super()._complete(values, kinds)


class _Pool:
    __slots__ = ("runner", "fn", "ready", "error")

    def __init__(self, runner: _Runner, fn: RemoteFunction[Any, Any]) -> None:
        self.runner = runner
        self.fn = fn
        self.ready = False
        self.error: BaseException | None = None


class ClusterFunction:
    """The cluster side of one RemoteFunction (made by ClusterSession._functions)."""

    def __init__(self, rf: RemoteFunction[Any, Any], session: ClusterSession) -> None:
        self.rf = rf
        self.session = session
        self.core = session._core
        self.lock = threading.Lock()
        self.pools: dict[tuple[str, str], _Pool] = {}
        self.turn = 0

    # -- pools ---------------------------------------------------------------------
    def _clone(self, r: _Runner) -> RemoteFunction[Any, Any]:
        fn = copy.copy(self.rf)
        fn._session = r.session
        fn.runner_ids = None  # the cluster chose the runner; the runner checks no ids
        fn._fn_id = None
        fn._reg_session = None
        fn._lock = threading.Lock()
        if fn.max_workers is None:
            # A node's pool is sized by the CPUs the node offers the cluster
            # (its Ray "CPU" resource), not by the cores of the client's host:
            # nodes sharing one machine must not each start a core's worth.
            fn.max_workers = max(1, min(int(r.cpu_total or 1), 4))
        return fn

    def _wants(self, r: _Runner) -> bool:
        res = self.rf.resources or {}
        cpu, mem = float(res.get("cpu") or 0), float(res.get("memory") or 0)
        if cpu and r.cpu_total < cpu:
            return False
        if mem and r.mem_total < mem:
            return False
        gpu = gpu_count(res.get("gpu"))
        return not (gpu and r.gpu_total < gpu)

    def pools_ready(self, exclude: set[str] = frozenset()) -> list[_Pool]:  # type: ignore[assignment]
        """The registered pools on live eligible runners (registering where needed)."""
        runners = [r for r in self.session._eligible(self.rf.runner_ids) if r.tag not in exclude]
        fits = [r for r in runners if self._wants(r)]
        with self.lock:
            todo = []
            for r in fits:
                key = (r.tag, r.runner_id)
                p = self.pools.get(key)
                if p is None:
                    p = self.pools[key] = _Pool(r, self._clone(r))
                # A runner that refused the registration (a profile it lacks,
                # bad options) is not asked again until it restarts.
                if not p.ready and not isinstance(p.error, (errors.NotFoundError, errors.InvalidArgumentError)):
                    todo.append(p)
        if todo:
            futs = [(p, self.core.pool.submit(p.fn._ensure)) for p in todo]
            for p, f in futs:
                try:
                    f.result()
                    p.ready, p.error = True, None
                except BaseException as exc:  # noqa: BLE001 - reported below if no pool is left
                    p.error = exc
        ready = [p for r in fits for p in [self.pools[(r.tag, r.runner_id)]] if p.ready]
        if not ready:
            errs = [p.error for r in fits for p in [self.pools[(r.tag, r.runner_id)]] if p.error is not None]
            # A profile a runner lacks: try the others; if all fail, say why.
            if errs:
                raise errs[0]
            if not runners:
                raise self.session._no_runner(f"function {self.rf.__name__!r}", self.rf.runner_ids)
            raise self.session._no_runner(f"function {self.rf.__name__!r} with resources {self.rf.resources}",
                                          self.rf.runner_ids)
        return ready

    def runner_lost(self, r: _Runner) -> None:
        with self.lock:
            self.pools.pop((r.tag, r.runner_id), None)

    # -- remote ----------------------------------------------------------------------
    def remote(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        payload = self.rf._encode(args, kwargs)
        current: list[Any] = []  # the request of the latest attempt

        def cancel() -> None:
            # Cancelling the ref cancels the call where it runs (dropped if
            # queued, its worker replaced if running), as on one runner.
            if current:
                current[-1].cancel()

        p, settle = relay(f"/cluster/functions/{self.rf.__name__}/call", cancel)
        self._submit(payload, settle, p, self.rf.retries, set(), current)
        return p.ref

    def _pick(self, pools: list[_Pool]) -> _Pool:
        with self.lock:
            self.turn += 1
            t = self.turn
        n = len(pools)
        return min(pools, key=lambda p: (p.runner.calls, (pools.index(p) - t) % n))

    def _submit(self, payload: bytes, settle: Any, outer: Any, tries: int, exclude: set[str],
                current: list[Any]) -> None:
        try:
            pool = self._pick(self.pools_ready(exclude))
        except BaseException as exc:  # noqa: BLE001 - handed to the ref
            settle(exc=exc)
            return
        r = pool.runner
        sess, fid = pool.fn._ensure()
        pool.fn._direct.release_extras()  # the runner needs the workers a direct map() leased
        inner = sess._client.request("POST", f"/v1/functions/{fid}/call", {"args": payload}, timeout=None,
                                     transform=pool.fn._remote_done)
        current.append(inner)
        if outer.done():  # cancelled meanwhile
            inner.cancel()
        with r.lock:
            r.calls += 1
        lost_entry: list[Any] = []

        def on_lost(value: Any = None, exc: BaseException | None = None) -> bool:
            # Called by ClusterSession when the runner is declared lost.
            lost_entry.append(exc)
            inner.cancel()
            return True

        entry = (inner, on_lost)
        with r.lock:
            r.inflight.add(entry)
        core = self.core

        def done(ref: Any) -> None:
            with r.lock:
                r.calls -= 1
                r.inflight.discard(entry)
            if outer.done():
                return
            exc: BaseException | None
            try:
                value = ref.result()
                exc = None
            except BaseException as e:  # noqa: BLE001
                value, exc = None, e
            if lost_entry:
                exc = lost_entry[0]
            elif isinstance(exc, concurrent.futures.CancelledError) and str(exc) == _SHUTDOWN_MESSAGE:
                core.wake.set()
                exc = r.lost or r.lost_error(f"its runner stopped ({_SHUTDOWN_MESSAGE})")
            elif exc is not None:
                exc = _convert(r, exc, core)
            if isinstance(exc, errors.NodeLostError):
                if tries > 0:
                    log.info("rerunning a call of %s elsewhere: %s", self.rf.__name__, exc)
                    self._submit(payload, settle, outer, tries - 1, exclude | {r.tag}, current)
                    return
            settle(value, exc)

        inner.add_done_callback(done)

    # -- map ---------------------------------------------------------------------------
    def map(self, items: list[Any], kws: list[dict[str, Any]] | None, chunksize: int | None) -> list[Any]:
        rf = self.rf
        n = len(items)
        pools = self.pools_ready()
        k = len(pools)
        if chunksize is not None:
            cs = rf._chunksize(n, chunksize)
        else:
            workers = sum(p.fn._pool_size() for p in pools)
            cs = min(1024, -(-n // (workers * _CHUNKS_PER_WORKER)))
            cs = max(1, cs)
        if set(map(type, items)) != {tuple}:
            items = [it if isinstance(it, tuple) else (it,) for it in items]
        rf._check_shapes(items, kws)
        chunks: list[tuple[int, int, bytes]] = []
        for start in range(0, n, cs):
            rf._encode_chunk(items, kws, start, min(n, start + cs), chunks)
        per: list[list[tuple[int, _ClusterChunk]]] = [[] for _ in range(k)]
        refs: list[Any] = []
        shift = self.turn % k
        self.turn += 1
        for j, (start, stop, payload) in enumerate(chunks):
            pool = pools[(j + shift) % k]
            ch = self._chunk(pool, stop - start, payload)
            refs += ch.batch.refs()  # type: ignore[union-attr]
            per[(j + shift) % k].append((j, ch))
        for pool, mine in zip(pools, per):
            if mine and not self._send_direct(pool, [ch for _, ch in mine]):
                self._send(pool, [ch for _, ch in mine])
        return refs

    def _chunk(self, pool: _Pool, n: int, payload: bytes) -> _ClusterChunk:
        sess = pool.runner.session
        coll = _collector(sess)
        ch = _ClusterChunk(pool.fn, n, "", sess._client, coll)
        ch.payload = payload
        ch.owner = self
        ch.runner = pool.runner
        ch.tries = self.rf.retries
        ch.lost = None
        return ch

    def _send_direct(self, pool: _Pool, chunks: list[_ClusterChunk]) -> bool:
        """Send a pool's chunks straight to its leased workers, as map() does
        on one runner (_direct.py), when the runner is on this host and its
        whole pool is idle; False (nothing sent) otherwise."""
        fn = pool.fn
        sess, fid = fn._ensure()
        if fn._direct_dir is None:
            return False
        client = sess._client
        chans = fn._direct.for_map(client, fid, fn._direct_dir, fn._pool_size())
        if chans is None:
            return False
        r = pool.runner
        with r.lock:
            r.calls += sum(ch.n for ch in chunks)
        base = secrets.token_hex(8)
        for k, ch in enumerate(chunks):
            c = chans[k % len(chans)]
            ch.cid, ch.client, ch.coll, ch.runner = f"d{base}-{k}", client, None, r
            ch.kill = functools.partial(c.kill_if_running, ch)
            fallback = functools.partial(client.request, "POST", f"/v1/functions/{fid}/call",
                                         {"args": ch.payload}, timeout=None)
            if not c.submit_chunk(ch.payload, ch, fallback):
                DirectChannel._resend_chunk(ch, fallback)
        return True

    def _direct_crashed(self, ch: _ClusterChunk, rec: dict[str, Any]) -> None:
        """A direct chunk's worker died: a lost node if its runner is gone or
        was replaced, else the worker crashed (WorkerCrashedError)."""
        r = ch.runner
        why = None
        if r.lost is None:
            try:
                rid = r.session.request("GET", "/v1/health", timeout=5.0).result().get("runner_id")
                if r.runner_id and rid and str(rid) != r.runner_id:
                    why = f"its runner restarted (now {rid})"
            except errors.SandboxError as exc:
                why = f"the connection to it failed ({exc})"
        if r.lost is None and why is None:
            _Chunk.done(ch, rec)
            return
        self.core.wake.set()
        self._chunk_lost(ch, why or str(r.lost))

    def _send(self, pool: _Pool, chunks: list[_ClusterChunk]) -> None:
        r = pool.runner
        sess, fid = pool.fn._ensure()
        # Through the runner: it needs the workers a direct map() leased.
        pool.fn._direct.release_extras()
        coll = _collector(sess)
        client = sess._client
        per_req = max(1, -(-len(chunks) // 4))
        for i in range(0, len(chunks), per_req):
            part = chunks[i:i + per_req]
            prefix = f"c{secrets.token_hex(8)}"
            entries = []
            for k, ch in enumerate(part):
                ch.cid = f"{prefix}.{k}"
                ch.client, ch.coll, ch.runner, ch.kill = client, coll, r, None
                entries.append((ch.cid, ch))
            with r.lock:
                r.calls += sum(ch.n for ch in part)
            coll.add(entries)
            req = client.request("POST", f"/v1/functions/{fid}/calls",
                                 {"channel": coll.channel, "prefix": prefix, "args": [ch.payload for ch in part]})
            req.add_done_callback(functools.partial(_submitted, coll, [cid for cid, _ in entries]))
        coll.start()

    def _chunk_done(self, r: _Runner, n: int) -> None:
        with r.lock:
            r.calls -= n

    def _chunk_lost(self, ch: _ClusterChunk, message: str) -> None:
        r = ch.runner
        lost = r.lost or r.lost_error(message)
        if ch.tries > 0:
            ch.tries -= 1
            try:
                pools = self.pools_ready({r.tag})
            except BaseException as exc:  # noqa: BLE001 - nowhere to go: fail below
                log.warning("cannot rerun a map chunk of %s: %s", self.rf.__name__, exc)
            else:
                log.info("rerunning a map chunk of %s (%d items) elsewhere: %s", self.rf.__name__, ch.n, lost)
                self._chunk_done(r, ch.n)
                self._send(self._pick(pools), [ch])
                return
        ch.lost = lost
        ch._complete()

    # -- the rest ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        out = {}
        for p in self.pools_ready():
            out[p.runner.tag] = p.fn.info()
        return {"runners": out, "name": self.rf.__name__}

    def delete(self) -> None:
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for p in pools:
            try:
                p.fn.delete()
            except errors.SandboxError as exc:
                log.debug("delete on %s: %s", p.runner.tag, exc)

    def function_id(self) -> str:
        return ",".join(f"{p.runner.tag}.{p.fn.function_id}" for p in self.pools_ready())

