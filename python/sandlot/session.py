"""Session: one connection to a sandlot runner.

A :class:`Session` holds a ``sandlot._core.Client`` (a connection pool served by
the C I/O thread). Every API call takes an optional ``session=`` keyword; without
it the process-wide :func:`default_session` is used, which is configured from
the environment:

* ``SANDLOT_URL`` - ``unix:///path/to/sandlotd.sock`` or ``http://host:port``
  (a bare absolute path means a unix socket); ``SANDLOT_TOKEN`` - the bearer
  token a TCP runner wants.
* ``SANDLOT_URL=ray`` (or ``ray://host:port``, ``ray+gcs://host:port``), or
  ``Session(cluster="ray")``: every runner of a Ray cluster, one per node
  (``pip install "sandlot[ray]"``; see ``sandlot.cluster`` and docs/cluster.md).
* neither: the *embedded default*. The client looks for the current user's
  runner in its runtime directory and, if nothing answers ``GET /v1/health``,
  starts ``sandlotd`` itself (see ``sandlot._runtime``). That runner outlives
  the client.

Example:
    >>> import sandlot
    >>> s = sandlot.Session("unix:///tmp/no-such-dir/sandlotd.sock")
    >>> s.base_url
    'unix:///tmp/no-such-dir/sandlotd.sock'
    >>> s.embedded
    False
    >>> s.close()
"""

from __future__ import annotations

import logging
import os
import select
import threading
import weakref
from typing import Any

from . import _aio, _core, errors
from ._aio import Blocking, Op, op
from ._runtime import RuntimePaths, _is_running_sandlotd, runner_binary, runtime_paths, start_runner

__all__ = ["Session", "default_session"]

log = logging.getLogger("sandlot")

#: Slack added to a long-poll's own timeout for the HTTP request's time limit.
POLL_SLACK = 30.0
#: Time limit of ordinary (not long-polling) requests.
REQUEST_TIMEOUT = 120.0


def _normalize_url(url: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"base_url must be a str such as 'unix:///run/sandlotd.sock', got {type(url).__name__}")
    if url.startswith("/"):
        return "unix://" + url
    if url.startswith("unix://"):
        if not url[len("unix://") :].startswith("/"):
            raise ValueError(f"unix socket URLs need an absolute path, e.g. unix:///run/sandlotd.sock; got {url!r}")
        return url
    if url.startswith(("http://", "https://")):
        return url.rstrip("/")
    raise ValueError(
        f"unsupported sandlot runner URL {url!r}: use unix:///abs/path/sandlotd.sock, "
        "http://host:port, or an absolute socket path"
    )


class Session:
    """A connection to one sandlot runner.

    Args:
        base_url: ``"unix:///abs/path.sock"``, ``"http://host:port"`` or an
            absolute socket path. None: ``$SANDLOT_URL``, else the embedded
            default runner (started on first use if needed).
        token: bearer token for a TCP runner. None: ``$SANDLOT_TOKEN`` (only
            when ``base_url`` also came from the environment or is None).
        autostart: for the embedded default only: start the runner if none
            answers (default). False: fail with RunnerUnavailableError instead.
        cluster: ``"ray"``, ``"ray://host:port"`` or ``"ray+gcs://host:port"``:
            a :class:`sandlot.cluster.ClusterSession` over a Ray cluster's
            runners instead (needs ``pip install "sandlot[ray]"``).

    A Session is safe to share between threads and asyncio tasks. Use it as a
    context manager, or call :meth:`close`, to cancel in-flight requests.

    Example:
        >>> with Session("unix:///tmp/x/sandlotd.sock") as s:
        ...     print(s)
        Session('unix:///tmp/x/sandlotd.sock')
    """

    #: True for a :class:`sandlot.cluster.ClusterSession`.
    _cluster = False

    def __new__(cls, base_url: str | None = None, token: str | None = None, *, autostart: bool = True,
                cluster: str | None = None, **cluster_options: Any) -> Session:
        # A cluster URL (argument or $SANDLOT_URL) makes a ClusterSession; its
        # module imports ray only when one is made.
        if cls is Session:
            target = cluster
            if target is None:
                url = base_url if base_url is not None else os.environ.get("SANDLOT_URL")
                if isinstance(url, str) and (url == "ray" or url.startswith(("ray://", "ray+gcs://"))):
                    target = url
            if target is not None:
                from .cluster import ClusterSession

                return object.__new__(ClusterSession)
            if cluster_options:
                raise TypeError(f"{', '.join(cluster_options)}: only with cluster=...")
        return object.__new__(cls)

    def __init__(self, base_url: str | None = None, token: str | None = None, *, autostart: bool = True,
                 cluster: str | None = None) -> None:
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str or None, got {type(token).__name__}")
        self._paths: RuntimePaths | None = None
        if base_url is None:
            base_url = os.environ.get("SANDLOT_URL") or None
            if token is None:
                token = os.environ.get("SANDLOT_TOKEN") or None
        if base_url is None:
            self._paths = runtime_paths(create=True)
            base_url = self._paths.url
        self._base_url = _normalize_url(base_url)
        self._client = _core.Client(self._base_url, token)
        self._lock = threading.Lock()
        # The runner was seen healthy at this errors.unavailable_generation; -1: never.
        self._autostart = autostart and self._paths is not None
        self._ready_gen = -1 if self._autostart else 0
        # The runner last seen healthy: its id and, for a local one, a pidfd
        # that becomes readable when it exits (see _check_runner).
        self._runner_id: str | None = None
        self._runner_pidfd: int | None = None
        self._runner_poll: Any = None

    # -- properties ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The runner's URL, e.g. ``unix:///run/user/1000/sandlot/sandlotd.sock``."""
        return self._base_url

    @property
    def embedded(self) -> bool:
        """True when this session manages the user's embedded default runner."""
        return self._paths is not None

    @property
    def runtime_paths(self) -> RuntimePaths | None:
        """Socket/state/log paths of the embedded runner; None for a configured URL."""
        return self._paths

    def __repr__(self) -> str:
        return f"Session({self._base_url!r})"  # never the token

    # -- requests -----------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = REQUEST_TIMEOUT,
    ) -> _core.OperationRef[Any]:
        """Send one request to the runner and return its ``OperationRef`` at once.

        Low level: the public API is :class:`sandlot.Sandbox`. Bodies are never
        logged (they may hold secrets or file contents).

        Example:
            >>> sess = default_session()                     # doctest: +SKIP
            >>> sess.request("GET", "/v1/health").result()["ok"]  # doctest: +SKIP
            True
        """
        log.debug("request %s %s", method, path)
        self._check_runner()
        ref = self._client.request(method, path, body, timeout=timeout)
        _sent[ref] = (self, method, path, body, timeout)
        return ref

    # -- recovering from a runner restart ------------------------------------
    def _note_runner(self, health: dict[str, Any]) -> None:
        """Remember the runner that answered ``health``: its id, and a pidfd of
        it when it is local (a unix socket and a sandlotd we can see)."""
        rid = health.get("runner_id")
        if rid == self._runner_id and (self._runner_pidfd is not None or not self._base_url.startswith("unix://")):
            return
        self._drop_pidfd()
        self._runner_id = rid if isinstance(rid, str) else None
        pid = health.get("pid")
        if not self._base_url.startswith("unix://") or not isinstance(pid, int) or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # another pid namespace, or gone already
        # Checked after opening: the fd then names this very process.
        if not _is_running_sandlotd(pid):
            os.close(fd)
            return
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._runner_pidfd, self._runner_poll = fd, poller

    def _drop_pidfd(self) -> None:
        fd, self._runner_pidfd, self._runner_poll = self._runner_pidfd, None, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _check_runner(self) -> None:
        """If the local runner this session talks to has exited, find its
        successor before the next request goes out: start the embedded one
        (autostart), or take note of one someone else started. One poll(2)
        of a pidfd when nothing happened."""
        poller = self._runner_poll
        if poller is None or not poller.poll(0):
            return
        with self._lock:
            if self._runner_poll is not poller:
                return  # another thread did it
            log.info("the sandlot runner %s exited; reconnecting", self._runner_id)
            self._drop_pidfd()
            self._ready_gen = -1 if self._autostart else 0
        self._reconnect()

    def _reconnect(self) -> bool:
        """Blocking: make sure a runner answers (starting the embedded one if
        this session may); True if one does."""
        try:
            if self._autostart:
                self._start_embedded()
            health = self._client.request("GET", "/v1/health", None, timeout=10.0).result()
        except errors.SandboxError as exc:
            log.debug("no runner after a restart: %s", exc)
            return False
        self._ready_gen = errors.unavailable_generation
        self._note_runner(health)
        return True

    def _ensure(self) -> Op[None]:
        """Op: make sure the embedded runner is up (no-op for a configured URL).

        Checked once, and again after any request failed with "unavailable"
        (the runner may have been stopped); then started if nothing answers.
        """
        if not self._autostart or self._ready_gen == errors.unavailable_generation:
            return
        gen = errors.unavailable_generation
        try:
            health = yield self._client.request("GET", "/v1/health", None, timeout=10.0)
        except errors.RunnerUnavailableError:
            yield Blocking(self._start_embedded)
            gen = errors.unavailable_generation
            health = yield self._client.request("GET", "/v1/health", None, timeout=10.0)
        else:
            _warn_if_other_build(health)
        self._note_runner(health)
        self._ready_gen = gen

    def _default_isolation(self) -> Op[str]:
        """Op: the runner's default isolation ("container" or "microvm"), asked once."""
        cached = getattr(self, "_isolation_default", None)
        if cached is None:
            health = yield self._client.request("GET", "/v1/health", None, timeout=10.0)
            cached = str((health.get("microvm") or {}).get("default_isolation") or "container")
            self._isolation_default = cached
        return cached

    def _health_ok(self) -> bool:
        try:
            self._client.request("GET", "/v1/health", None, timeout=5.0).result()
            return True
        except errors.SandboxError:
            return False

    def _start_embedded(self) -> bool:
        assert self._paths is not None
        with self._lock:
            return start_runner(self._paths, self._health_ok)

    @op
    def health(self) -> Op[dict[str, Any]]:
        """Ask the runner how it is; starts the embedded runner if needed.

        Returns the runner's health map: ``ok``, ``version``, ``runner_id``,
        ``pid``, ``cgroup`` (``"v1"``, ``"v2"``, ``"hybrid"`` or ``"none"``),
        ``sandboxes`` (count), ``uptime`` (seconds) and ``pool`` (the runner's
        pre-set-up sandboxes: ``size``, ``shells`` ready now, ``taken`` by creates,
        ``mounts`` in the set they are kept for).

        Example:
            >>> default_session().health()["ok"]      # doctest: +SKIP
            True
            >>> (await default_session().health.aio())["ok"]  # doctest: +SKIP
            True
        """
        yield from self._ensure()
        resp: dict[str, Any] = yield self.request("GET", "/v1/health", timeout=30.0)
        self._note_runner(resp)
        return resp

    # -- remote functions ---------------------------------------------------
    def function(self, fn: Any = None, **options: Any) -> Any:
        """Decorator: ``@session.function(...)`` makes a :class:`sandlot.RemoteFunction`
        bound to this session (keyword arguments as for ``RemoteFunction``).

        Example:
            >>> @session.function(serialization=sandlot.Serialization.PICKLE)  # doctest: +SKIP
            ... def add(a, b):
            ...     return a + b
        """
        from .function import function as _function

        return _function(fn, session=self, **options)

    # -- lifetime -----------------------------------------------------------
    def close(self) -> None:
        """Cancel this session's in-flight requests. Idempotent.

        Sandboxes are not affected: they live in the runner until terminated.
        """
        self._drop_pidfd()
        self._client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Session | None = None
_default_lock = threading.Lock()


def default_session() -> Session:
    """The process-wide session used when no ``session=`` is given.

    Created on first use from ``SANDLOT_URL`` / ``SANDLOT_TOKEN``, or the embedded
    default runner when neither is set.

    Example:
        >>> import sandlot
        >>> sandlot.default_session() is sandlot.default_session()   # doctest: +SKIP
        True
    """
    global _default
    s = _default
    if s is not None:
        return s
    with _default_lock:
        if _default is None:
            _default = Session()
        return _default


def _resolve(session: Session | None) -> Session:
    if session is None:
        return default_session()
    if not isinstance(session, Session):
        raise TypeError(f"session must be a sandlot.Session or None, got {type(session).__name__}")
    return session


def _warn_if_other_build(health: dict[str, Any]) -> None:
    """Log a warning when the embedded runner that answered is not this package's.

    The embedded runner outlives its client, so after ``pip install -U sandlot``
    (or with two checkouts sharing one runtime dir) a client can meet a runner
    built from other code. Compared by the runner's executable
    (``/proc/<pid>/exe``, ``" (deleted)"`` once a reinstall replaced it) against
    the binary this client would start; silent when it cannot tell (another
    user's runner, no /proc).
    """
    try:
        exe = os.readlink(f"/proc/{int(health['pid'])}/exe")
        mine = os.path.realpath(runner_binary())
    except (KeyError, TypeError, ValueError, OSError):
        return
    if exe != mine:
        log.warning(
            "the running sandlot runner (pid %s) is %s, not this sandlot's %s: it was started by another "
            "installation or before an upgrade; run `sandlot runner stop` (its sandboxes end) and the next "
            "client starts this one",
            health.get("pid"),
            exe,
            mine,
        )


# Requests sent through Session.request, for resending one once (below). Weak:
# an entry lives as long as its ref.
_sent: weakref.WeakKeyDictionary[Any, tuple[Session, str, str, Any, float | None]] = weakref.WeakKeyDictionary()

#: Runner-wide reads that mean the same to any runner on this state dir: resent
#: once when the runner exits while they run. Anything naming a sandbox,
#: process or function id (ids of one runner) or changing state is not.
_RESEND_PREFIXES = ("/v1/health", "/v1/snapshots", "/v1/volumes", "/v1/images")


def _safe_to_resend(method: str, path: str) -> bool:
    # The sandbox listing itself is runner-wide too (not one id under it):
    # a request on a kept-alive connection the dead runner closed fails as
    # "sent" (connection reset) though it never reached a runner.
    return method == "GET" and (path.startswith(_RESEND_PREFIXES) or path.split("?", 1)[0] == "/v1/sandboxes")


def _resend(ref: Any, exc: BaseException) -> Any:
    """The ops' drivers call this (blocking) when a ref failed: a new ref for
    the same request if it is worth sending once more, else None.

    Resent once: a request that never reached the runner (connect failed)
    after this session found or started a runner; a request the runner had
    when it exited, only if it is a runner-wide read (``_safe_to_resend``).
    """
    if not isinstance(exc, errors.RunnerUnavailableError) or exc.status != 0:
        return None
    entry = _sent.pop(ref, None)
    if entry is None:
        return None
    sess, method, path, body, timeout = entry
    if isinstance(exc, errors.RunnerExitedError):
        if not _safe_to_resend(method, path):
            return None
    elif "cannot connect" not in str(exc):
        return None  # a closed session, a fork: nothing a resend fixes
    with sess._lock:
        sess._drop_pidfd()
    if not sess._reconnect():
        return None
    log.info("resending %s %s to the new runner %s", method, path, sess._runner_id)
    new = sess._client.request(method, path, body, timeout=timeout)
    return new


_aio.resend_hook = _resend
