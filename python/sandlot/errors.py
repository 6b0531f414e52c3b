"""Exceptions raised by sandlot.

Every error that comes back from the runner is a :class:`SandboxError` (or one of
its subclasses) carrying the protocol ``code`` and the HTTP ``status``; the
message is the runner's own, which says what was wrong. Some classes also derive
from the builtin exception a caller would naturally catch::

    >>> import sandlot
    >>> issubclass(sandlot.InvalidArgumentError, ValueError)
    True
    >>> issubclass(sandlot.RunnerUnavailableError, ConnectionError)
    True

Timeouts are the builtin :class:`TimeoutError` (``Sandbox.wait(timeout=...)``) or
:class:`RequestTimeoutError`, a subclass of both ``SandboxError`` and
``TimeoutError``, when a single request to the runner took too long.

The mapping from protocol codes to classes is installed into the C core with
``sandlot._core.set_error_mapper`` when ``sandlot`` is imported.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SandboxError",
    "NotFoundError",
    "InvalidArgumentError",
    "SandboxNotRunningError",
    "SpawnError",
    "RunnerUnavailableError",
    "RunnerExitedError",
    "AuthenticationError",
    "RequestTimeoutError",
    "ImagePullError",
    "NodeLostError",
    "PlacementError",
    "error_from_response",
]


class SandboxError(Exception):
    """Base class of every error reported by the sandlot runner.

    Attributes:
        code: the protocol error code, e.g. ``"not_found"`` or ``"spawn_failed"``.
        status: the HTTP status the runner answered with; 0 when the runner
            could not be reached at all.
        message: the human-readable message (also ``str(exc)``).

    Example:
        >>> err = SandboxError("something broke", code="internal", status=500)
        >>> (err.code, err.status, str(err))
        ('internal', 500, 'something broke')
    """

    #: Default code for instances created without one.
    default_code = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep code/status across pickling (multiprocessing, concurrent.futures).
        return (_rebuild, (type(self), self.message, self.code, self.status))


def _rebuild(cls: type[SandboxError], message: str, code: str, status: int) -> SandboxError:
    return cls(message, code=code, status=status)


class NotFoundError(SandboxError, LookupError):
    """The sandbox, process, image or volume does not exist (or was terminated).

    Example:
        >>> issubclass(NotFoundError, LookupError)
        True
    """

    default_code = "not_found"


class InvalidArgumentError(SandboxError, ValueError):
    """The runner rejected a request's arguments (bad value, body too large, ...).

    Fix the argument named in the message and retry.
    """

    default_code = "bad_request"


class SandboxNotRunningError(SandboxError):
    """The sandbox (or the process) has already ended: exec, stdin, signals and
    file operations need a running one. Create a new sandbox with
    ``Sandbox.create()`` or start another process with ``exec()``."""

    default_code = "conflict"


class SpawnError(SandboxError):
    """The command could not be started inside the sandbox (no such file, not
    executable, missing workdir). The message names what failed."""

    default_code = "spawn_failed"


class RunnerUnavailableError(SandboxError, ConnectionError):
    """The sandlot runner could not be reached, or is shutting down / at capacity."""

    default_code = "unavailable"


class RunnerExitedError(RunnerUnavailableError):
    """The runner had this request and went away (crash, kill, restart) before
    answering: the message says "the runner exited while this call was running".

    Whether the call took effect is unknown. sandlot resends such a call once
    by itself only when that is safe (a ``GET`` of runner-wide state); others
    are for the caller to check and retry.

    Example:
        >>> issubclass(RunnerExitedError, RunnerUnavailableError)
        True
    """

    default_code = "runner_exited"


class AuthenticationError(SandboxError, PermissionError):
    """The runner refused the bearer token: check SANDLOT_TOKEN."""

    default_code = "unauthorized"


class RequestTimeoutError(SandboxError, TimeoutError):
    """A single request to the runner did not complete within its time limit."""

    default_code = "timeout"


class ImagePullError(SandboxError):
    """Pulling an image from a registry failed; nothing half-written was kept.

    ``status`` says what kind of failure: 404 (no such repository, tag or
    digest; no manifest for the platform), 401 (the registry refused the
    credentials or wants some), 422 (refused content: a wrong digest, a
    corrupt or truncated blob, an unsafe layer such as a ``../`` path or a
    write through a symlink, a layer over ``max_bytes``), 502 (the registry
    failed), 504 (the registry sent nothing for ``stall_timeout`` seconds).

    Example:
        >>> e = ImagePullError("busybox:nope: not found", code="not_found", status=404)
        >>> isinstance(e, SandboxError), e.status
        (True, 404)
    """

    default_code = "pull_failed"


class NodeLostError(RunnerUnavailableError):
    """A cluster node (or the sandlot runner on it) was lost: the sandboxes
    there have ended and the calls running there failed.

    Raised only through a cluster session (``Session(cluster="ray")``, see
    docs/cluster.md). Create the sandbox again (it lands on a live node), or
    let remote functions rerun elsewhere with ``function(retries=N)``.

    Attributes:
        node_id: the Ray node id of the lost node ("" if unknown).
        node_ip: its address ("" if unknown).
        runner: the cluster's name for its runner, e.g. ``"n-3f2a9c1e0b7d"``.

    Example:
        >>> e = NodeLostError("node 10.0.0.7 lost", node_id="ab12", node_ip="10.0.0.7", runner="n-ab12")
        >>> (e.code, e.node_ip, isinstance(e, SandboxError))
        ('node_lost', '10.0.0.7', True)
    """

    default_code = "node_lost"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0, node_id: str = "",
                 node_ip: str = "", runner: str = "") -> None:
        super().__init__(message, code=code, status=status)
        self.node_id = node_id
        self.node_ip = node_ip
        self.runner = runner

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_node_lost, (self.message, self.code, self.status, self.node_id, self.node_ip, self.runner))


def _rebuild_node_lost(message: str, code: str, status: int, node_id: str, node_ip: str, runner: str) -> NodeLostError:
    return NodeLostError(message, code=code, status=status, node_id=node_id, node_ip=node_ip, runner=runner)


class PlacementError(SandboxError):
    """No node of the cluster can take the sandbox or function: none offers the
    requested ``resources`` free, or none matches ``runner_ids``, the profiles
    or the isolation tier. The message lists what each node has; free
    resources (terminate sandboxes), add nodes, or ask for less."""

    default_code = "unschedulable"


_BY_CODE: dict[str, type[SandboxError]] = {
    "not_found": NotFoundError,
    "bad_request": InvalidArgumentError,
    "payload_too_large": InvalidArgumentError,
    "unsupported_media_type": InvalidArgumentError,
    "method_not_allowed": InvalidArgumentError,
    "conflict": SandboxNotRunningError,
    "spawn_failed": SpawnError,
    "unavailable": RunnerUnavailableError,
    "runner_exited": RunnerExitedError,
    "unauthorized": AuthenticationError,
    "timeout": RequestTimeoutError,
    "node_lost": NodeLostError,
    "unschedulable": PlacementError,
}

_UNAVAILABLE_HINT = "start one with `sandlot runner start` or check SANDLOT_URL"

#: Incremented whenever a RunnerUnavailableError is built, so that sessions
#: which auto-start a runner know to check it again (see session.py).
unavailable_generation = 0


def error_from_response(status: int, code: str, message: str) -> BaseException:
    """Turn a runner error (HTTP status, protocol code, message) into an exception.

    This is the function installed with ``sandlot._core.set_error_mapper``.

    Example:
        >>> e = error_from_response(404, "not_found", "no sandbox sb-1")
        >>> type(e).__name__, e.status, str(e)
        ('NotFoundError', 404, 'no sandbox sb-1')
        >>> type(error_from_response(503, "unavailable", "connection refused")).__name__
        'RunnerUnavailableError'
    """
    global unavailable_generation
    cls = _BY_CODE.get(code, SandboxError)
    if issubclass(cls, RunnerUnavailableError):
        unavailable_generation += 1
        if cls is RunnerUnavailableError and _UNAVAILABLE_HINT not in message:
            message = f"sandlot runner unavailable: {message} ({_UNAVAILABLE_HINT})"
    return cls(message, code=code, status=status)
