"""Direct calls: ``remote()`` over a unix socket to a leased warm worker.

A synchronous round trip through the runner is an HTTP exchange plus the
runner's relay to the worker's pipes; on a shared two-core machine that is
most of a call (bench/RESULTS.md, issue 12). When the session's runner is on
this host (a ``unix://`` URL) and the function is a plain pooled one (no
``fresh_sandbox``, no ``max_timeout_seconds``), the client asks the runner to
*lease* it an idle worker (``POST /v1/functions/{id}/lease``): it listens on a
socket in the function's direct dir, which the runner creates (0700, under its
state dir) and binds read-only into every worker, and the worker connects to
it. Calls then travel client <-> worker with the runner's frame format. The
runner stays in charge: the worker is still one of its pool's sandboxes (same
limits), it is killed with the function, on cancel
(``POST .../lease/cancel``) or when it dies, and it goes back to the pool when
this client closes the socket or sends nothing for ``idle_timeout`` seconds.

Used only while it helps: a ``remote()`` made while a direct call is in
flight goes through the runner (so fan-outs keep using the whole pool), and
the lease is handed back once that happens. A ``map()`` leases every worker
of the pool (``max_workers``, default ``min(nproc, 4)``) when they are all
idle and sends its chunks round-robin straight to them, keeping them for the
next map() until a call goes through the runner (which needs them back then);
when fewer are idle it goes through the runner (which grows the pool for the
next one). Calls the
worker did not take (it said goodbye first) are re-sent through the runner;
a call in flight when the worker dies fails with ``WorkerCrashedError``, as
through the runner.

Example (nothing to do: ``remote()`` uses it by itself)::

    f = sandlot.function()(lambda x: x + 1)
    f.remote(1).result()        # through the runner; starts a worker
    f.remote(2).result()        # leases that worker; later calls are direct
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import struct
import threading
import time
from typing import Any, Callable

from . import _core

log = logging.getLogger("sandlot")

_HDR_IN = struct.Struct(">IQ")  # what the worker reads: length, seq
_HDR_OUT = struct.Struct(">IBQ")  # what it writes: length, kind, seq
#: After a lease was refused (no idle worker), wait this long before asking again.
_RETRY_S = 0.2
#: The largest frame a worker may send (the runner's limit, SL_FN_FRAME_MAX).
_FRAME_MAX = 80 << 20
_KINDS = frozenset(map(ord, "OEB"))
_SUN_PATH_MAX = 107


def _bind_long(sock: socket.socket, dirpath: str, name: str) -> None:
    """Bind ``sock`` to ``dirpath/name``, also when that path is longer than
    a socket address holds (108 bytes; deep state dirs, such as a cluster
    node's under a test's tmp dir): then through ``/proc/self/fd/<dir>/``."""
    path = os.path.join(dirpath, name)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        sock.bind(path)
        return
    fd = os.open(dirpath, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.bind(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


class DirectChannel:
    """One leased worker of one function, for one process (see module doc)."""

    def __init__(self, client: Any, fid: str, worker: str, sock: socket.socket) -> None:
        self._client = client
        self._fid = fid
        self.worker = worker
        self._sock = sock
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[int, _core.Promise, bytes, Callable[[], Any]]] = collections.deque()
        self._seq = 0
        self._closed = False
        self._release = False  # hand the worker back once nothing is in flight
        self.runner_id: str | None = None  # set by DirectState (see _runner_gone)
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._read, name="sandlot-direct", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, client: Any, fid: str, direct_dir: str, timeout: float = 5.0) -> DirectChannel | None:
        """Lease a worker; None (and no error) when none is idle or the dir is unusable."""
        name = f"d-{secrets.token_hex(8)}.sock"
        path = os.path.join(direct_dir, name)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                _bind_long(lst, direct_dir, name)
            except OSError:
                return None  # not the runner's host, or not its user
            lst.listen(1)
            lst.settimeout(timeout)
            try:
                lease = client.request("POST", f"/v1/functions/{fid}/lease", {"socket": name},
                                       timeout=timeout).result()["lease"]
            except Exception:  # noqa: BLE001 - 409 no idle worker, an old runner: use HTTP
                return None
            try:
                conn, _ = lst.accept()
            except OSError:
                # Leased but never connected (the worker died): let it go.
                cls._cancel(client, fid, lease["worker"])
                return None
            conn.settimeout(None)
            return cls(client, fid, lease["worker"], conn)
        finally:
            lst.close()
            try:
                os.unlink(path)
            except OSError:
                pass

    @staticmethod
    def _cancel(client: Any, fid: str, worker: str) -> None:
        try:
            client.request("POST", f"/v1/functions/{fid}/lease/cancel", {"worker": worker}, timeout=30.0)
        except Exception:  # noqa: BLE001 - best effort, as for other cancels
            log.debug("cancel of leased worker %s could not be sent", worker, exc_info=True)

    @property
    def usable(self) -> bool:
        return not self._closed and self.pid == os.getpid()

    def call(self, payload: bytes, transform: Callable[[Any], Any],
             fallback: Callable[[], Any]) -> _core.OperationRef[Any] | None:
        """Send one call; its ref, or None when the channel is busy or closed
        (the caller goes through the runner). ``fallback()`` re-sends the call
        through the runner if the worker turns out not to have taken it."""
        with self._lock:
            if self._closed or self.pid != os.getpid():
                return None
            if self._pending:
                self._release = True  # a fan-out: give the pool its worker back
                return None
            self._seq += 1
            seq = self._seq
            p = _core.Promise(f"/v1/functions/{self._fid}/direct", transform, self._on_cancel)
            self._pending.append((seq, p, payload, fallback))
            try:
                self._sock.sendall(_HDR_IN.pack(8 + len(payload), seq) + payload)
            except OSError:
                # Not sent (the worker left): nothing ran.
                self._pending.pop()
                self._close_locked()
                return None
            return p.ref

    @property
    def idle(self) -> bool:
        return not self._pending

    def submit_chunk(self, payload: bytes, chunk: Any, fallback: Callable[[], Any]) -> bool:
        """Send a map() chunk (pipelined behind others); its ``_Chunk`` gets
        the outcome. False if the channel is closed (nothing was sent)."""
        with self._lock:
            if self._closed:
                return False
            self._seq += 1
            self._pending.append((self._seq, chunk, payload, fallback))
            try:
                self._sock.sendall(_HDR_IN.pack(8 + len(payload), self._seq) + payload)
            except OSError:
                self._pending.pop()
                self._close_locked()
                return False
            return True

    def kill_if_running(self, chunk: Any) -> None:
        """Every ref of ``chunk`` was cancelled: if it is the one running, the
        runner kills this worker; one still waiting behind it runs later and
        its outcome is dropped (its refs are cancelled already)."""
        with self._lock:
            running = bool(self._pending) and self._pending[0][1] is chunk
        if running:
            self._cancel(self._client, self._fid, self.worker)

    def _on_cancel(self) -> None:
        # The running call cannot be interrupted in the worker: the runner
        # kills that sandbox (the socket then ends and the channel closes).
        self._cancel(self._client, self._fid, self.worker)

    def close(self) -> None:
        """Hand the worker back to the pool (it sees the socket end) once no
        call is in flight: an in-flight call's result still comes here."""
        with self._lock:
            if self._pending:
                self._release = True
            else:
                self._close_locked()

    def _close_locked(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _read(self) -> None:
        sock = self._sock
        buf = bytearray()
        bye = False
        bad = ""
        try:
            while True:
                while len(buf) >= 13:
                    n, kind, seq = _HDR_OUT.unpack_from(buf)
                    # The worker runs untrusted code: a frame is checked
                    # before it is buffered, as the runner checks its frames.
                    if n < 9 or n > _FRAME_MAX or kind not in _KINDS:
                        bad = f"a malformed frame (kind {kind}, {n} bytes)"
                        raise EOFError
                    if len(buf) < 4 + n:
                        break
                    data = bytes(buf[13 : 4 + n])
                    del buf[: 4 + n]
                    if kind == ord("B"):
                        bye = True
                        raise EOFError
                    if not self._deliver(kind, seq, data):
                        bad = f"a result for a call it was not running (seq {seq})"
                        raise EOFError
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise EOFError
                buf.extend(chunk)
        except (EOFError, OSError):
            pass
        with self._lock:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
        sock.close()
        crashed = {"status": "crashed",
                   "message": "the worker running this call died (a crash, os._exit, or the sandbox "
                              "being killed); the pool replaced it"}
        gone = self._runner_gone() if left and not bye and not bad else None
        if gone is not None:
            # The worker died with its runner: say so, as a call through the
            # runner does (RunnerExitedError), not that the function crashed.
            for i, (_, p, _payload, _fallback) in enumerate(left):
                if isinstance(p, _core.Promise):
                    if not p.done():
                        p.complete(503, _core.packb({"error": {"code": "runner_exited", "message": gone}}))
                elif p.ncancel != p.n:
                    p.fail(503, "runner_exited", gone)
            return
        if bad:
            # Not a worker we can trust with the next call: the runner ends it.
            self._cancel(self._client, self._fid, self.worker)
            crashed["message"] = (f"the worker running this call sent {bad} (did the function write to "
                                  "the protocol socket?); it was killed and the pool replaced it")
        # The worker runs frames in order: only the first one left can have
        # been running when it died. Later ones never started (and none did
        # after a goodbye): they go through the runner, as the runner requeues
        # the calls pipelined behind a dead worker's running call.
        for i, (_, p, _payload, fallback) in enumerate(left):
            ran = i == 0 and not bye
            if isinstance(p, _core.Promise):
                if p.done():
                    continue
                if ran:
                    p.complete(200, _core.packb({"call": crashed}))
                else:
                    self._resend(p, fallback)
            elif p.ncancel == p.n:
                continue  # every ref cancelled: nobody wants it run
            elif ran:
                p.done(dict(crashed))
            else:
                self._resend_chunk(p, fallback)

    def _runner_gone(self) -> str | None:
        """Why the worker's runner is gone (it exited, or another one answers
        now), or None when it still runs."""
        if self.runner_id is None:
            return None
        try:
            rid = self._client.request("GET", "/v1/health", timeout=5.0).result().get("runner_id")
        except Exception as exc:  # noqa: BLE001 - any failure to reach it
            if getattr(exc, "status", None) not in (0, None, 503):
                return None  # it answered: it runs
            return f"the runner exited while this call was running (its worker went with it: {exc})"
        if rid != self.runner_id:
            return (f"the runner exited while this call was running (its worker went with it; "
                    f"runner {rid} answers now, the call ran on {self.runner_id})")
        return None

    def _deliver(self, kind: int, seq: int, data: bytes) -> bool:
        """Complete the running call; False if seq is not the running call's
        (the worker runs its frames in order, so a well-behaved one never)."""
        with self._lock:
            if not self._pending or self._pending[0][0] != seq:
                return False
            _, p, _, _ = self._pending.popleft()
            if self._release and not self._pending:
                self._close_locked()
        status = "ok" if kind == ord("O") else "error"
        if isinstance(p, _core.Promise):
            p.complete(200, _core.packb({"call": {"status": status, "data": data}}))
        else:
            p.done({"status": status, "data": data})
        return True

    @staticmethod
    def _resend_chunk(chunk: Any, fallback: Callable[[], Any]) -> None:
        try:
            ref = fallback()
        except Exception as exc:  # noqa: BLE001
            chunk.fail(500, "unavailable", str(exc))
            return

        def done(r: Any) -> None:
            try:
                chunk.done(r.result()["call"])
            except Exception as exc:  # noqa: BLE001
                chunk.fail(getattr(exc, "status", 0) or 500, getattr(exc, "code", None) or "failed", str(exc))

        ref.add_done_callback(done)

    @staticmethod
    def _resend(p: _core.Promise, fallback: Callable[[], Any]) -> None:
        try:
            ref = fallback()
        except Exception as exc:  # noqa: BLE001
            p.complete(500, _core.packb({"error": {"code": "unavailable", "message": str(exc)}}))
            return

        def done(r: Any) -> None:
            try:
                p.complete(200, _core.packb(r.result()))
            except Exception as exc:  # noqa: BLE001
                p.complete(getattr(exc, "status", 0) or 500, _core.packb(
                    {"error": {"code": getattr(exc, "code", None) or "failed", "message": str(exc)}}))

        ref.add_done_callback(done)


class DirectState:
    """Per RemoteFunction: its channel, and when a lease may next be tried."""

    __slots__ = ("channel", "extras", "next_try", "lock", "runner_id")

    def __init__(self, runner_id: str | None = None) -> None:
        # The runner the function is registered with: a leased worker that
        # dies with that runner fails its call as "runner exited".
        self.runner_id = runner_id
        self.channel: DirectChannel | None = None
        self.extras: list[DirectChannel] = []  # the rest of the pool, leased by a map()
        self.next_try = 0.0
        self.lock = threading.Lock()

    def get(self, client: Any, fid: str, direct_dir: str | None) -> DirectChannel | None:
        """The usable channel, leasing one if it is time to try."""
        ch = self.channel
        if ch is not None and ch.usable:
            return ch
        if direct_dir is None or time.monotonic() < self.next_try:
            return None
        if not self.lock.acquire(blocking=False):
            return None  # another thread is leasing
        try:
            ch = self.channel
            if ch is not None and ch.usable:
                return ch
            ch = DirectChannel.open(client, fid, direct_dir)
            if ch is not None:
                ch.runner_id = self.runner_id
            self.channel = ch
            if ch is None:
                self.next_try = time.monotonic() + _RETRY_S
            return ch
        finally:
            self.lock.release()

    def for_map(self, client: Any, fid: str, direct_dir: str | None, want: int) -> list[DirectChannel] | None:
        """``want`` leased workers for a map() (this function's whole pool), or
        None (all handed back) when fewer are idle: then the runner spreads
        the chunks and grows the pool as it does for any map."""
        if direct_dir is None:
            return None
        with self.lock:
            chans: list[DirectChannel] = []
            for ch in [self.channel, *self.extras]:
                if ch is not None and ch.usable and ch.idle:
                    chans.append(ch)
                elif ch is not None:
                    ch.close()
            self.channel, self.extras = None, []
            while len(chans) < want:
                c = DirectChannel.open(client, fid, direct_dir)
                if c is None:
                    break
                c.runner_id = self.runner_id
                chans.append(c)
            if len(chans) < want:
                for c in chans:
                    c.close()
                self.next_try = 0.0
                return None
            # Kept for the next map() (and the first for remote()) until a
            # call goes through the runner, which then needs the workers back
            # (release_extras), or the workers' idle_timeout ends the leases.
            self.channel, self.extras = chans[0], chans[1:]
            return chans

    def release_extras(self) -> None:
        """A call is about to go through the runner: the workers leased for
        map() go back to the pool (each once its chunks are done)."""
        if self.extras:
            extras, self.extras = self.extras, []
            for c in extras:
                c.close()

    def release(self) -> None:
        self.release_extras()
        ch, self.channel = self.channel, None
        if ch is not None:
            ch.close()
        # The next remote() may lease again at once: the runner refuses while
        # calls are queued or every worker is busy (a map() in progress).
        self.next_try = 0.0
