"""Processes inside a sandbox and their stdin/stdout/stderr.

``Sandbox.exec()`` returns a :class:`SandboxProcess`. Its output is kept by the
runner (up to 8 MiB per stream), so it can be read at any time, also after the
process ended, until the sandbox is terminated::

    proc = sb.exec(["python3", "-c", "print('hi')"])
    proc.wait()                 # -> 0
    proc.stdout.read()          # -> 'hi\\n'   (text, until EOF)
    proc.stderr.read_bytes()    # -> b''      (raw bytes)

    for line in proc.stdout:    # text lines, as they are printed
        ...
    for chunk in proc.stdout.iter_bytes():   # raw chunks, as they arrive
        ...

Each stream object has a read position: ``read()`` returns what the iteration
has not consumed yet. Every blocking method has an asyncio twin (``await
proc.wait.aio()``, ``await proc.stdout.read.aio()``, ``async for line in
proc.stdout``); see ``sandlot._aio``.
"""

from __future__ import annotations

import logging
import signal as _signal
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from . import _validate
from ._aio import Op, op, run, run_async
from .errors import SandboxNotRunningError
from .session import POLL_SLACK, Session

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "SandboxProcess",
    "ProcessInfo",
    "OutputStream",
    "InputStream",
    "OutputDroppedWarning",
    "DroppedMarker",
    "DroppedBytesMarker",
]

log = logging.getLogger("sandlot")

#: The runner holds a long-poll at most this long; we ask for exactly this.
POLL_CAP = 30.0
#: Bytes asked for per output request.
READ_CHUNK = 1 << 20
#: Bytes sent per stdin request (the runner's body limit is 64 MiB).
WRITE_CHUNK = 8 << 20

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """A snapshot of a process's state, as reported by the runner.

    ``exit_code`` follows ``subprocess``: ``N >= 0`` for ``exit(N)``, ``-N`` for
    death by signal N (``-9`` when the sandbox was killed). ``pid`` is the pid
    inside the sandbox. ``oom_killed`` is True when the kernel's OOM killer
    ended it (the sandbox's ``resources`` memory limit; ``exit_code`` is -9).
    """

    process_id: int
    sandbox_id: str
    cmd: tuple[str, ...]
    status: str
    exit_code: int | None
    pid: int | None
    oom_killed: bool = False

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            process_id=int(d["process_id"]),
            sandbox_id=str(d["sandbox_id"]),
            cmd=tuple(d.get("cmd") or ()),
            status=str(d.get("status", "running")),
            exit_code=d.get("exit_code"),
            pid=d.get("pid"),
            oom_killed=bool(d.get("oom_killed", False)),
        )


class _End:
    """Marker returned by iterator steps at the end of the stream."""


_END = _End()


class _OpIterator(Generic[T]):
    """An iterator for both ``for`` and ``async for``, each step being an op."""

    __slots__ = ("_step",)

    def __init__(self, step: Callable[[], Any]) -> None:
        self._step = step

    def __iter__(self) -> _OpIterator[T]:
        return self

    def __next__(self) -> T:
        item = run(self._step())
        if item is _END:
            raise StopIteration
        return item  # type: ignore[no-any-return]

    def __aiter__(self) -> _OpIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await run_async(self._step())
        if item is _END:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class OutputDroppedWarning(UserWarning):
    """Some output of a process was dropped before it was read (the sandbox's
    ``output_keep`` window was full and its ``output_policy`` is ``"drop_oldest"``).
    Issued once per stream; ``OutputStream.dropped_bytes`` has the count."""


class DroppedMarker(str):
    """What iterating an :class:`OutputStream` yields where output was dropped:
    a ``str`` (so it prints, e.g. ``"[sandlot: 1048576 bytes of stdout dropped]\\n"``)
    with ``nbytes``, the count. ``iter_bytes()`` yields its ``bytes`` twin,
    :class:`DroppedBytesMarker`. Tell either apart with ``isinstance``.

    Example:
        >>> m = DroppedMarker.of(10, "stdout")
        >>> m, m.nbytes
        ('[sandlot: 10 bytes of stdout dropped]\\n', 10)
    """

    nbytes: int

    @classmethod
    def of(cls, nbytes: int, stream: str) -> DroppedMarker:
        m = cls(f"[sandlot: {nbytes} bytes of {stream} dropped]\n")
        m.nbytes = nbytes
        return m


class DroppedBytesMarker(bytes):
    """The ``bytes`` twin of :class:`DroppedMarker`, from ``iter_bytes()``."""

    nbytes: int

    @classmethod
    def of(cls, nbytes: int, stream: str) -> DroppedBytesMarker:
        m = cls(f"[sandlot: {nbytes} bytes of {stream} dropped]\n".encode())
        m.nbytes = nbytes
        return m


class OutputStream:
    """stdout or stderr of a process inside a sandbox.

    Reading never loses output that arrived earlier: the runner keeps it, and
    this object only remembers how far it has read.

    Example:
        >>> proc = sb.exec("printf 'a\\nb\\n'")          # doctest: +SKIP
        >>> list(proc.stdout)                          # doctest: +SKIP
        ['a\\n', 'b\\n']
    """

    def __init__(self, session: Session, sandbox_id: str, process_id: int, name: str) -> None:
        self._session = session
        self._path = f"/v1/sandboxes/{sandbox_id}/procs/{process_id}/output"
        self._name = name
        self._offset = 0  # next byte to ask the runner for
        self._pending = bytearray()  # fetched but not yet handed out
        self._eof = False
        self._dropped = 0  # bytes the runner dropped before we read them
        self._gaps: list[tuple[int, int]] = []  # (position in _pending, bytes dropped there)

    @property
    def truncated(self) -> bool:
        """True once some output of this stream was dropped before it was read."""
        return self._dropped > 0

    @property
    def dropped_bytes(self) -> int:
        """How many bytes of this stream were dropped before they were read
        (the runner keeps ``output_keep`` unread bytes per stream; see
        ``Sandbox.create(output_policy=...)``)."""
        return self._dropped

    @property
    def name(self) -> str:
        """``"stdout"`` or ``"stderr"``."""
        return self._name

    @property
    def at_eof(self) -> bool:
        """True once everything up to the end of the stream was handed out."""
        return self._eof and not self._pending

    def __repr__(self) -> str:
        return (
            f"<OutputStream {self._name} of {self._path.rsplit('/', 1)[0]} at byte {self._offset - len(self._pending)}>"
        )

    # -- the one place that talks to the runner ------------------------------
    def _fetch(self, timeout: float) -> Op[int]:
        """Op: one output request; appends to the pending bytes. Returns bytes added."""
        resp = yield self._session.request(
            "POST",
            self._path,
            {"stream": self._name, "offset": self._offset, "timeout": timeout, "max_bytes": READ_CHUNK},
            timeout=timeout + POLL_SLACK,
        )
        data: bytes = resp.get("data") or b""
        end = int(resp.get("offset", self._offset + len(data)))  # where the next read starts
        dropped = int(resp.get("dropped_bytes") or 0)
        if resp.get("truncated") and dropped == 0:
            dropped = max(0, end - len(data) - self._offset)  # a runner without dropped_bytes
        if dropped:
            if self._dropped == 0:
                warnings.warn(
                    f"{self._path} {self._name}: {dropped} bytes of output were dropped before they were read "
                    "(the sandbox keeps output_keep unread bytes per stream; read sooner, raise output_keep, "
                    "or create it with output_policy='block')",
                    OutputDroppedWarning,
                    stacklevel=2,
                )
            log.warning("%s %s: %d bytes of output dropped at byte %d", self._path, self._name, dropped, self._offset)
            self._dropped += dropped
            self._gaps.append((len(self._pending), dropped))
        self._offset = end
        self._pending += data
        if resp.get("eof"):
            self._eof = True
        return len(data)

    def _fill(self) -> Op[bool]:
        """Op: wait until more bytes are pending or EOF. Returns False at EOF."""
        while not self._eof:
            n = yield from self._fetch(POLL_CAP)
            if n:
                return True
        return False

    def _take(self, n: int | None = None) -> bytes:
        if n is None or n >= len(self._pending):
            out = bytes(self._pending)
            self._pending.clear()
        else:
            out = bytes(self._pending[:n])
            del self._pending[:n]
        taken = len(out)
        if self._gaps and taken:
            # Marks inside what a bulk read took are passed over (the data is
            # joined; dropped_bytes and the warning tell); a mark right after
            # it moves to the head.
            self._gaps = [(pos - taken, k) for pos, k in self._gaps if pos >= taken]
        return out

    def _gap_here(self) -> int:
        """Bytes dropped right before the next pending byte (0: none); consumes the mark."""
        if self._gaps and self._gaps[0][0] == 0:
            return self._gaps.pop(0)[1]
        return 0

    def _until_gap(self) -> int | None:
        """Pending bytes before the next gap mark (None: no mark ahead)."""
        for pos, _ in self._gaps:
            if pos > 0:
                return pos
        return None

    # -- public ops -----------------------------------------------------------
    @op
    def read_bytes(self) -> Op[bytes]:
        """Raw bytes from the current position until EOF (the process closed the stream).

        Example:
            >>> sb.exec(["head", "-c", "3", "/dev/zero"]).stdout.read_bytes()   # doctest: +SKIP
            b'\\x00\\x00\\x00'
        """
        while (yield from self._fill()):
            pass
        return self._take()

    @op
    def read(self) -> Op[str]:
        """Text (UTF-8, undecodable bytes replaced) from the current position until EOF.

        Example:
            >>> sb.exec("echo hello").stdout.read()      # doctest: +SKIP
            'hello\\n'
        """
        data = yield from self.read_bytes.gen()
        return _decode(data)

    @op
    def read_available(self) -> Op[str]:
        """Whatever text has arrived so far, without waiting ('' if nothing new)."""
        if not self._eof:
            yield from self._fetch(0.0)
        return _decode(self._take())

    def _next_chunk(self) -> Op[bytes | _End]:
        if not self._pending and not self._gaps:
            yield from self._fill()
        gap = self._gap_here()
        if gap:
            return DroppedBytesMarker.of(gap, self._name)
        if not self._pending:
            return _END
        return self._take(self._until_gap())

    def _next_line(self) -> Op[str | _End]:
        # Splitting on b"\n" before decoding is safe: 0x0A never occurs inside a
        # multi-byte UTF-8 sequence.
        while True:
            gap = self._gap_here()
            if gap:
                return DroppedMarker.of(gap, self._name)
            stop = self._until_gap()
            i = self._pending.find(b"\n", 0, stop if stop is not None else len(self._pending))
            if i >= 0:
                return _decode(self._take(i + 1))
            if stop is not None:
                return _decode(self._take(stop))  # a line cut short by dropped output
            if not (yield from self._fill()):
                if self._pending:
                    return _decode(self._take())
                return _END

    def iter_bytes(self) -> _OpIterator[bytes]:
        """Raw chunks as they arrive, for ``for`` and ``async for``.

        Example:
            >>> for chunk in proc.stdout.iter_bytes():   # doctest: +SKIP
            ...     sys.stdout.buffer.write(chunk)
        """
        return _OpIterator(self._next_chunk)

    def iter_lines(self) -> _OpIterator[str]:
        """Text lines (with their ``\\n``) as they arrive; same as iterating the stream."""
        return _OpIterator(self._next_line)

    def __iter__(self) -> Iterator[str]:
        return self.iter_lines()

    def __aiter__(self) -> AsyncIterator[str]:
        return self.iter_lines()


class InputStream:
    """stdin of a process inside a sandbox. Each write is sent to the runner at once.

    Example:
        >>> proc = sb.exec(["cat"])                    # doctest: +SKIP
        >>> proc.stdin.write("hello\\n"); proc.stdin.close()   # doctest: +SKIP
        6
        >>> proc.stdout.read()                         # doctest: +SKIP
        'hello\\n'
    """

    def __init__(self, session: Session, sandbox_id: str, process_id: int) -> None:
        self._session = session
        self._path = f"/v1/sandboxes/{sandbox_id}/procs/{process_id}/stdin"
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __repr__(self) -> str:
        return f"<InputStream of {self._path.rsplit('/', 1)[0]}{' (closed)' if self._closed else ''}>"

    @op
    def write(self, data: str | bytes | bytearray | memoryview) -> Op[int]:
        """Send ``data`` (str is encoded as UTF-8) to the process's stdin; returns its length.

        Raises ValueError after :meth:`close`, SandboxNotRunningError if the
        sandbox ended.
        """
        if isinstance(data, str):
            raw = data.encode("utf-8")
            n = len(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
            n = len(raw)
        else:
            raise TypeError(f"stdin.write() takes str or bytes, got {type(data).__name__}")
        if self._closed:
            raise ValueError("stdin is closed; start another process to send more input")
        for i in range(0, max(len(raw), 1), WRITE_CHUNK):
            yield self._session.request("POST", self._path, {"data": raw[i : i + WRITE_CHUNK], "close": False})
        return n

    @op
    def close(self) -> Op[None]:
        """Close stdin (the process reads EOF). Idempotent.

        Closing the stdin of a process (or sandbox) that already ended does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            yield self._session.request("POST", self._path, {"data": b"", "close": True})
        except SandboxNotRunningError:
            pass  # exited / already closed: there is nothing left to close


class SandboxProcess:
    """A process running in a sandbox, started by ``Sandbox.exec()``.

    Attributes:
        stdout, stderr: :class:`OutputStream` objects.
        stdin: :class:`InputStream`.
        process_id: the runner's id for the process in its sandbox (0 is the
            sandbox's entry command, exec'd ones count from 1).
        pid: the pid inside the sandbox.
        returncode: None until :meth:`wait` or :meth:`poll` saw the exit.
        oom_killed: None until :meth:`wait` or :meth:`poll` saw the exit, then
            True if the OOM killer ended it (memory limit; returncode -9).

    Example:
        >>> proc = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])   # doctest: +SKIP
        >>> proc.wait(), proc.stdout.read(), proc.stderr.read()            # doctest: +SKIP
        (3, 'out\\n', 'err\\n')
    """

    def __init__(self, session: Session, info: ProcessInfo) -> None:
        self._session = session
        self._info = info
        self.sandbox_id = info.sandbox_id
        self.process_id = info.process_id
        self.pid = info.pid
        self.cmd = list(info.cmd)
        self.returncode: int | None = info.exit_code if info.status == "exited" else None
        self.oom_killed: bool | None = info.oom_killed if info.status == "exited" else None
        self.stdout = OutputStream(session, info.sandbox_id, info.process_id, "stdout")
        self.stderr = OutputStream(session, info.sandbox_id, info.process_id, "stderr")
        self.stdin = InputStream(session, info.sandbox_id, info.process_id)
        self._base = f"/v1/sandboxes/{info.sandbox_id}/procs/{info.process_id}"

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return (
            f"SandboxProcess(sandbox_id={self.sandbox_id!r}, process_id={self.process_id}, cmd={self.cmd!r}, {state})"
        )

    @op
    def wait(self, timeout: float | None = None) -> Op[int]:
        """Block until the process exits; return its exit code (``-N``: killed by signal N).

        Raises TimeoutError if ``timeout`` seconds pass first (the process keeps
        running). Waits as a series of server long-polls of at most 30 s.
        """
        limit = _validate.wait_timeout(timeout)
        resp = yield from _long_wait(self._session, self._base + "/wait", limit)
        if resp is _TIMED_OUT:
            raise TimeoutError(
                f"process {self.process_id} ({self.cmd[0] if self.cmd else '?'}) in {self.sandbox_id} "
                f"still running after {timeout} s"
            )
        self.returncode = code = int(resp["exit_code"])
        yield from self._note_oom(code)
        return code

    def _note_oom(self, code: int) -> Any:
        """Set ``oom_killed`` once the exit is known: only a SIGKILL can be the
        OOM killer's, so only then ask the runner (one GET)."""
        if self.oom_killed is not None:
            return
        if code != -9:
            self.oom_killed = False
            return
        resp = yield self._session.request("GET", self._base)
        self.oom_killed = bool(resp["process"].get("oom_killed", False))

    @op
    def poll(self) -> Op[int | None]:
        """The exit code if the process has exited, else None. Does not block."""
        if self.returncode is not None:
            return self.returncode
        resp = yield from _long_wait(self._session, self._base + "/wait", 0.0)
        if resp is _TIMED_OUT:
            return None
        self.returncode = code = int(resp["exit_code"])
        yield from self._note_oom(code)
        return code

    @op
    def info(self) -> Op[ProcessInfo]:
        """Fresh :class:`ProcessInfo` from the runner."""
        resp = yield self._session.request("GET", self._base)
        info = ProcessInfo.from_wire(resp["process"])
        if info.status == "exited" and info.exit_code is not None:
            self.returncode = info.exit_code
            self.oom_killed = info.oom_killed
        return info

    @op
    def send_signal(self, sig: int) -> Op[None]:
        """Send signal ``sig`` (e.g. ``signal.SIGTERM``) to the process."""
        if isinstance(sig, bool) or not isinstance(sig, int):
            raise TypeError(f"signal must be an int such as signal.SIGTERM, got {type(sig).__name__}")
        if not 1 <= int(sig) <= 64:
            raise ValueError(f"signal must be between 1 and 64, got {int(sig)}")
        yield self._session.request("POST", self._base + "/signal", {"signal": int(sig)})

    @op
    def terminate(self) -> Op[None]:
        """Send SIGTERM to the process."""
        yield from self.send_signal.gen(_signal.SIGTERM)

    @op
    def kill(self) -> Op[None]:
        """Send SIGKILL to the process."""
        yield from self.send_signal.gen(_signal.SIGKILL)


class _TimedOut:
    pass


_TIMED_OUT: Any = _TimedOut()


def _long_wait(session: Session, path: str, limit: float | None) -> Op[Any]:
    """Op: POST ``path`` ``{"timeout": t}`` long-polls until done or ``limit`` passed.

    Returns the final response (``{"done": True, "exit_code": ...}``), or ``_TIMED_OUT``.
    """
    import time

    deadline = None if limit is None else time.monotonic() + limit
    while True:
        chunk = POLL_CAP if deadline is None else max(0.0, min(POLL_CAP, deadline - time.monotonic()))
        resp = yield session.request("POST", path, {"timeout": chunk}, timeout=chunk + POLL_SLACK)
        if resp.get("done"):
            return resp
        if deadline is not None and time.monotonic() >= deadline:
            return _TIMED_OUT
