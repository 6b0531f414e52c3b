"""RemoteFunction.map(): items in chunks, through the runner or straight to
the workers leased for it (_direct.py).

Split from function.py (``RemoteFunction`` inherits these methods from
``_MapMixin``); docs/architecture.md ("Remote functions") explains the
chunks, the batch refs and the direct path.
"""

from __future__ import annotations

import functools
import operator
import os
import secrets
from collections.abc import Iterable
from typing import Any

from . import _core, errors
from ._calls import _cancel_call, _Chunk, _collector, _submitted
from ._direct import DirectChannel

#: Batched submissions are split so that no request body exceeds this.
_BATCH_BYTES = 16 << 20
_BATCH_CALLS = 20000
#: map(): items per chunk at most, and bytes of arguments per chunk at most.
_CHUNK_MAX = 1024
_CHUNK_BYTES = 4 << 20
#: Marks a call payload as a chunk of map items (no serialization format's
#: output starts with a NUL byte); must match _worker.py.
_CHUNK_TAG = b"\x00"


#: os.cpu_count() reads sysfs on every call (~0.1 ms here): once per process.
_NCPU = os.cpu_count() or 1
_first = operator.itemgetter(0)


def _qn(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class _MapMixin:
    """map() and its helpers; RemoteFunction provides the rest (_encode,
    _ensure, _sig, _enc, _direct, ...)."""

    _fn: Any
    _sig: Any
    _enc: Any
    _direct: Any
    _direct_dir: str | None
    serialization: Any
    max_workers: int | None
    fresh_sandbox: bool
    max_timeout_seconds: Any

    def map(self, items: Iterable[tuple[Any, ...]], *, kwargs: Iterable[dict[str, Any]] | None = None,
            chunksize: int | None = None, progress: bool = False) -> list[_core.OperationRef[Any]]:
        """Launch one call per tuple of positional arguments; refs in order.

        ``kwargs`` (optional, same length) adds keyword arguments per call.
        Every item gets its own ref (``result()``, ``await``, ``cancel()``),
        and a failing item raises its own exception from its own ref.

        Items travel in *chunks*: consecutive items serialized as one payload
        and run one after another by one worker, which returns their outcomes
        together; chunks run in parallel on the pool. ``chunksize`` (default:
        about four chunks per worker, at most 1024 items) sets the items per
        chunk; ``chunksize=1`` sends every item as a call of its own. Small
        maps, ``fresh_sandbox`` and ``max_timeout_seconds`` use one call per
        item, so every item keeps its own sandbox and timeout. Within a chunk:
        the refs complete together when the chunk ends; a worker crash fails
        every item of its chunk (``WorkerCrashedError``); cancelling one ref
        cancels it at once, but its item still runs with the chunk (the
        result is dropped) unless every ref of the chunk is cancelled, which
        cancels the chunk's call.

        ``progress=True`` draws done/total, rate, ETA and failures on stderr
        as results arrive (a bar redrawn on a terminal, a line every 5 s
        otherwise); map still returns at once.

        Example:
            >>> refs = add.map([(1, 2), (3, 4), (5, 6)])   # doctest: +SKIP
            >>> [r.result() for r in refs]                 # doctest: +SKIP
            [3, 7, 11]
        """
        if progress:
            from ._progress import watch

            refs = self.map(items, kwargs=kwargs, chunksize=chunksize)
            watch(refs)
            return refs
        items = items if type(items) is list else list(items)
        kws = list(kwargs) if kwargs is not None else None
        if kws is not None and len(kws) != len(items):
            raise ValueError(f"map: {len(items)} items but {len(kws)} kwargs")
        n = len(items)
        if n == 0:
            return []
        if self._sess()._cluster:
            return self._sess()._functions(self).map(items, kws, chunksize)  # type: ignore[attr-defined]
        cs = self._chunksize(n, chunksize)
        if cs <= 1:
            self._direct.release()  # every item through the runner: it wants every worker
            return self._map_each(items, kws if kws is not None else [{}] * n)
        if set(map(type, items)) != {tuple}:
            items = [it if isinstance(it, tuple) else (it,) for it in items]
        lens = set(map(len, items)) if kws is None else None
        self._check_shapes(items, kws, lens)
        single = lens == {1}
        chunks: list[tuple[int, int, bytes]] = []
        for start in range(0, n, cs):
            self._encode_chunk(items, kws, start, min(n, start + cs), chunks, single)
        sess, fid = self._ensure()
        client = sess._client
        if self._direct_dir is not None:
            chans = self._direct.for_map(client, fid, self._direct_dir, self._pool_size())
            if chans is not None:
                return self._map_direct(chans, chunks, client, fid)
        coll = _collector(sess)
        base = secrets.token_hex(8)
        refs: list[_core.OperationRef[Any]] = []
        # About 8 requests, sent without waiting for each other: the first
        # chunks run while the later ones are still being prepared here.
        per_req = max(1, -(-len(chunks) // 8))
        sent: list[tuple[Any, list[tuple[str, _Chunk]]]] = []
        i = 0
        while i < len(chunks):
            j, size = i, 0
            while j < len(chunks) and j - i < per_req and (j == i or size + len(chunks[j][2]) < _BATCH_BYTES):
                size += len(chunks[j][2])
                j += 1
            prefix = f"k{base}-{len(sent)}"
            entries = []
            for k in range(i, j):
                start, stop, _ = chunks[k]
                cid = f"{prefix}.{k - i}"
                ch = _Chunk(self, stop - start, cid, client, coll)
                entries.append((cid, ch))
                refs += ch.batch.refs()  # type: ignore[union-attr]
            coll.add(entries)
            req = client.request("POST", f"/v1/functions/{fid}/calls",
                                 {"channel": coll.channel, "prefix": prefix, "args": [c[2] for c in chunks[i:j]]})
            sent.append((req, entries))
            i = j
        coll.start()
        # Not waited for: a request the runner refuses fails its items.
        for req, entries in sent:
            req.add_done_callback(functools.partial(_submitted, coll, [cid for cid, _ in entries]))
        return refs

    def _pool_size(self) -> int:
        return self.max_workers or min(_NCPU, 4)

    def _map_direct(self, chans: list[Any], chunks: list[tuple[int, int, bytes]], client: Any,
                    fid: str) -> list[_core.OperationRef[Any]]:
        """map() over leased workers: chunks round-robin, straight to them."""
        base = secrets.token_hex(8)
        batches = []
        for k, (start, stop, payload) in enumerate(chunks):
            ch = chans[k % len(chans)]
            chunk = _Chunk(self, stop - start, f"d{base}-{k}", client, None)  # type: ignore[arg-type]
            chunk.kill = functools.partial(ch.kill_if_running, chunk)
            batches.append(chunk.batch)  # the chunk lets go of it once complete
            fallback = functools.partial(client.request, "POST", f"/v1/functions/{fid}/call",
                                         {"args": payload}, timeout=None)
            if not ch.submit_chunk(payload, chunk, fallback):
                # That worker is gone: this chunk goes through the runner.
                DirectChannel._resend_chunk(chunk, fallback)
        # The refs (10,000 objects for 10,000 items) are made while the
        # workers already run the first chunks.
        refs: list[_core.OperationRef[Any]] = []
        for b in batches:
            refs += b.refs()
        return refs

    def _chunksize(self, n: int, chunksize: int | None) -> int:
        if chunksize is not None:
            if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
                raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
            return chunksize
        if self.fresh_sandbox or self.max_timeout_seconds:
            return 1  # each item keeps its own sandbox / its own timeout
        workers = self._pool_size()
        cs = min(_CHUNK_MAX, -(-n // (workers * 4)))
        # Tiny chunks save little and make results arrive in bursts.
        return cs if cs >= 4 else 1

    def _check_shapes(self, items: list[tuple[Any, ...]], kws: list[dict[str, Any]] | None,
                      lens: set[int] | None = None) -> None:
        """Bind the signature once per distinct call shape (arity, keywords)."""
        if self._sig is None:
            return
        if kws is None:
            lens = lens if lens is not None else set(map(len, items))
            todo = [(ln, ()) for ln in lens]
        else:
            todo = list({(len(a), tuple(kw)) for a, kw in zip(items, kws)})
        for ln, names in todo:
            try:
                self._sig.bind(*range(ln), **dict.fromkeys(names))
            except TypeError:
                for i, a in enumerate(items):
                    kw = kws[i] if kws is not None else {}
                    if len(a) == ln and tuple(kw) == names:
                        try:
                            self._sig.bind(*a, **kw)
                        except TypeError as exc:
                            raise TypeError(f"map item {i}: {_qn(self._fn)}(): {exc}") from None
                raise

    def _encode_chunk(self, items: list[tuple[Any, ...]], kws: list[dict[str, Any]] | None, start: int, stop: int,
                      out: list[tuple[int, int, bytes]], single: bool = False) -> None:
        part = items[start:stop]
        try:
            if single:
                # One positional argument each: a flat list of them.
                payload = _CHUNK_TAG + self._enc([list(map(_first, part)), None, 1])
            else:
                payload = _CHUNK_TAG + self._enc([part, kws[start:stop] if kws is not None else None])
        except Exception as exc:
            for i in range(start, stop):
                try:
                    self._encode(items[i], kws[i] if kws is not None else {})
                except TypeError as inner:
                    raise TypeError(f"map item {i}: {inner}") from None
            raise TypeError(f"map: the items {start}..{stop - 1} cannot be serialized with "
                            f"Serialization.{self.serialization.name}: {exc}") from None
        if len(payload) > _CHUNK_BYTES and stop - start > 1:
            mid = (start + stop) // 2
            self._encode_chunk(items, kws, start, mid, out, single)
            self._encode_chunk(items, kws, mid, stop, out, single)
            return
        out.append((start, stop, payload))

    def _map_each(self, items: list[Any], kws: list[dict[str, Any]]) -> list[_core.OperationRef[Any]]:
        """map() with one runner call per item."""
        payloads = []
        shapes: set[Any] = set()
        for i, (item, kw) in enumerate(zip(items, kws)):
            if not isinstance(item, tuple):
                item = (item,)
            try:
                payloads.append(self._encode(item, kw, shapes))
            except TypeError as exc:
                raise TypeError(f"map item {i}: {exc}") from None
        if not payloads:
            return []
        sess, fid = self._ensure()
        coll = _collector(sess)
        refs: list[_core.OperationRef[Any]] = []
        batches: list[tuple[str, list[bytes], list[str]]] = []
        base = secrets.token_hex(8)
        start = 0
        while start < len(payloads):
            end, size = start, 0
            while end < len(payloads) and end - start < _BATCH_CALLS and (end == start or size + len(payloads[end]) < _BATCH_BYTES):
                size += len(payloads[end])
                end += 1
            prefix = f"m{base}-{len(batches)}"
            ids = [f"{prefix}.{i}" for i in range(end - start)]
            batches.append((prefix, payloads[start:end], ids))
            start = end
        client = sess._client
        transform = self._outcome
        for prefix, chunk, ids in batches:
            entries = []
            for cid in ids:
                p = _core.Promise(f"/v1/calls/{cid}", transform, functools.partial(_cancel_call, client, coll, cid))
                entries.append((cid, p))
                refs.append(p.ref)
            coll.add(entries)
            del entries
            try:
                client.request("POST", f"/v1/functions/{fid}/calls",
                               {"channel": coll.channel, "prefix": prefix, "args": chunk}).result()
            except errors.SandboxError as exc:
                coll.fail(ids, exc.status, exc.code, str(exc))
                # Later batches were never sent: fail them the same way.
                for _, _, later in batches[batches.index((prefix, chunk, ids)) + 1 :]:
                    for cid in later:
                        p = _core.Promise(f"/v1/calls/{cid}")
                        refs.append(p.ref)
                        p.complete(exc.status or 500, _core.packb({"error": {"code": exc.code, "message": str(exc)}}))
                break
            coll.start()
        return refs

