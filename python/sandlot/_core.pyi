"""Type stubs for ``sandlot._core``, the C extension (ext/ + csrc/).

The C core owns the transport (libcurl multi on one background I/O thread per
process), the msgpack codec (msgpack-c behind ``sl_mp_check`` limits) and the
``OperationRef`` futures. The pure-Python layer builds on these.
"""

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Largest body (bytes) the client sends or accepts; same limit as the runner.
MAX_BODY: int
#: Largest msgpack nesting depth decoded.
MAX_DEPTH: int
#: Version of the C core, e.g. "0.1.0".
__version__: str

def packb(obj: object) -> bytes:
    """Encode None, bool, int (any size), float, str, bytes/bytearray/memoryview,
    list, tuple, dict to msgpack.

    Ints outside [-2**63, 2**64) are encoded as msgpack ext type 1 whose payload is
    the integer's two's-complement little-endian bytes (minimal length). Tuples
    encode as arrays. Anything else raises ``TypeError`` naming the type and the
    path to it (e.g. ``"cannot pack object of type set at ['a'][2]"``). Recursion
    deeper than MAX_DEPTH raises ``ValueError``.
    """

def json_dumps_fast(obj: object, prefix: bytes = ..., /) -> bytes | None:
    """``prefix + json.dumps(obj, separators=(",", ":")).encode()`` (the same
    bytes: ``ensure_ascii``, ``NaN``/``Infinity``, insertion order) in one C
    pass, for exactly None, bool, int, float, str, list, tuple and dict with
    str keys. Returns None for anything else (a subclass, a non-str key,
    nesting deeper than 64, which may be a cycle): use ``json.dumps`` then, so
    its errors and special cases stay its own."""

def unpackb(data: bytes | bytearray | memoryview, *, max_depth: int = ..., max_size: int = ...) -> Any:
    """Decode one msgpack object. Input is checked with ``sl_mp_check`` first:
    too big, too deep, truncated, trailing bytes or a container count larger than
    the bytes left raise ``ValueError`` with the byte offset, before msgpack-c
    allocates anything. Arrays decode as lists, maps as dicts (keys must be
    hashable: str, bytes, int, float, bool, None), bin as bytes, str as str
    (invalid UTF-8 raises ValueError), ext 1 as int; other ext types raise
    ValueError.
    """

def set_error_mapper(fn: Callable[[int, str, str], BaseException]) -> None:
    """Install the function that turns a runner error into an exception:
    ``fn(http_status, code, message)``. Called with the GIL held when a failed
    ``OperationRef`` is materialised. ``http_status`` is 0 when the runner could not
    be reached (code ``"unavailable"``) and ``code`` is ``"timeout"`` when the
    request's own timeout expired. Without a mapper, ``RuntimeError`` is raised.
    """

class OperationRef(Generic[T]):
    """A future for one request to the runner, completed by the C I/O thread.

    Not constructible from Python; returned by ``Client.request``.
    """

    def result(self, timeout: float | None = None) -> T:
        """Block (GIL released) until done; return the value or raise the error.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first (the request keeps
        running). Raises ``concurrent.futures.CancelledError`` if cancelled.
        """
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def cancel(self) -> bool:
        """Abort the request if it has not completed; True if this call cancelled it."""
    def add_done_callback(self, fn: Callable[["OperationRef[T]"], object]) -> None:
        """Call ``fn(ref)`` once done: at once if already done, otherwise from a
        sandlot dispatcher thread (never from the I/O thread). Exceptions from fn
        are logged via ``sys.unraisablehook``.
        """
    def __await__(self) -> Generator[Any, None, T]:
        """Await from any asyncio loop. Completion is handed to that loop through
        one wake-up fd per loop (coalesced), so no thread per ref and the loop never
        blocks.
        """

class Client:
    """A connection pool to one runner, served by the process's I/O thread.

    ``base_url``: ``"unix:///abs/path/to/sandlotd.sock"`` or ``"http://host:port"``.
    ``token``: sent as ``Authorization: Bearer <token>`` when given.
    Safe to use from many threads. After ``os.fork()`` the child gets a fresh
    I/O thread on first use; requests that were in flight in the parent fail in
    the child with code ``"unavailable"``.
    """

    def __init__(self, base_url: str, token: str | None = None) -> None: ...
    @property
    def base_url(self) -> str: ...
    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        timeout: float | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> OperationRef[Any]:
        """Queue one HTTP request and return at once.

        ``body`` is packed with ``packb`` on the calling thread (None sends no body).
        The ref's value is the decoded msgpack response for a 2xx status, passed
        through ``transform`` (called once, with the GIL, by whoever first asks for
        the value; an exception from it becomes the ref's exception). A 4xx/5xx with
        ``{"error": {"code", "message"}}`` becomes the mapped exception.
        ``timeout`` (seconds, None = no limit) bounds the whole request.
        """
    def close(self) -> None:
        """Cancel this client's in-flight requests. Idempotent."""

class Promise:
    """An ``OperationRef`` completed from Python instead of by a request of its own
    (remote-function batches: one response completes many refs).

    ``label`` is a path shown in the ref's repr (must start with ``/``).
    ``transform`` is applied to the decoded body of a 2xx completion, as for
    ``Client.request``. ``on_cancel()`` is called (with the GIL) if the ref is
    cancelled before completion. Dropping a pending Promise fails its ref.
    Thread-safe: the first ``complete`` (or ``ref.cancel()``) wins.
    """

    def __init__(
        self, label: str, transform: Callable[[Any], Any] | None = None, on_cancel: Callable[[], object] | None = None
    ) -> None: ...
    @property
    def ref(self) -> OperationRef[Any]: ...
    def complete(self, status: int, body: bytes) -> bool:
        """Complete with an HTTP status and a msgpack body (``b""`` means ``{}``); a
        4xx/5xx body ``{"error": {"code", "message"}}`` becomes the mapped exception.
        True if this call completed the ref."""
    def done(self) -> bool: ...

class PromiseBatch:
    """``n`` ``OperationRef``s completed together (a ``map()`` chunk: one decoded
    list of outcomes completes all its refs in one C call).

    The refs from ``refs()`` are ordinary ``OperationRef``s (``result()``,
    ``await``, callbacks, ``cancel()``) backed by one shared C object instead
    of a request each: a ref is (batch, index), so creating, completing and
    freeing one costs a Python object and a few stores. Each call of
    ``refs()`` makes ``n`` new refs; the batch keeps none of them (the refs
    keep the batch alive), so there is no reference cycle.

    The refs of the first ``refs()`` call start untracked by the cycle
    collector (10,000 tracked refs that survive a map() cost full
    collections); they are all tracked as soon as one of them hands out a
    container (list, dict, ...) or an exception, the only ways user code can
    make a value point back at a ref. So ``fallback`` and ``on_cancel`` must
    not reach the refs themselves (map() passes callables that reach no user
    object).

    ``complete(values, kinds)`` completes every pending ref: ref ``i``'s value
    is ``values[i]`` when ``kinds`` is None or ``kinds[i] == "O"``, otherwise
    ``fallback(i)`` is called (with the GIL, when the value is first asked
    for) and its return value or exception is the outcome; ``complete()``
    without values defers every ref to ``fallback``. Once nothing is pending,
    further ``complete`` calls change nothing. ``on_cancel(i)`` is called
    (with the GIL) when ref ``i`` is cancelled. Refs made before a ``fork()``
    that are pending then fail in the child (``unavailable``).
    """

    def __init__(
        self, label: str, n: int, fallback: Callable[[int], Any] | None = None,
        on_cancel: Callable[[int], object] | None = None,
    ) -> None: ...
    def refs(self) -> list[OperationRef[Any]]:
        """``n`` new refs, in item order."""
    def complete(self, values: list[Any] | None = None, kinds: str | None = None) -> int:
        """Complete every pending ref; returns how many this call completed."""
    def __len__(self) -> int: ...
