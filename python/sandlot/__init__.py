"""sandlot: run shell commands and Python in fast, isolated Linux sandboxes.

Quick start::

    import sandlot

    with sandlot.Sandbox.create(["sleep", "300"]) as sb:
        proc = sb.exec(["python3", "-c", "print(6 * 7)"])
        print(proc.stdout.read())       # '42\\n'
        print(proc.wait())              # 0

Every blocking call has an asyncio twin: append ``.aio`` and await it
(``await sandlot.Sandbox.create.aio(...)``, ``await sb.wait.aio()``,
``async for line in proc.stdout``). See ``sandlot._aio`` for the convention.

With no configuration, sandlot starts a runner (``sandlotd``) for the current
user on first use; ``SANDLOT_URL`` / ``SANDLOT_TOKEN`` point it at another one.
Library logging goes to ``logging.getLogger("sandlot")``.
"""

from __future__ import annotations

import logging

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "sandlot's C extension (sandlot._core) is not built: install the package with "
        "`pip install .` (needs libcurl4-openssl-dev and libmsgpack-dev), or, in a source "
        "tree, run `python setup.py build_ext --inplace`"
    ) from exc

from .errors import (
    AuthenticationError,
    ImagePullError,
    InvalidArgumentError,
    NodeLostError,
    NotFoundError,
    PlacementError,
    RequestTimeoutError,
    RunnerExitedError,
    RunnerUnavailableError,
    SandboxError,
    SandboxNotRunningError,
    SpawnError,
    error_from_response,
)
from .function import (
    FunctionTimeoutError,
    RemoteError,
    RemoteFunction,
    Serialization,
    WorkerCrashedError,
    as_completed,
    function,
    gather,
    results,
    wait,
)
from .image import Image
from .process import (
    DroppedBytesMarker,
    DroppedMarker,
    InputStream,
    OutputDroppedWarning,
    OutputStream,
    ProcessInfo,
    SandboxProcess,
)
from .network import NetworkOptions, Tunnel
from .resources import ResourceOptions
from .sandbox import Sandbox, SandboxInfo, SandboxSnapshot
from .secret import Secret
from .session import Session, default_session
from .volume import Volume

_core.set_error_mapper(error_from_response)

logging.getLogger("sandlot").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "Sandbox",
    "SandboxInfo",
    "SandboxProcess",
    "SandboxSnapshot",
    "ProcessInfo",
    "ResourceOptions",
    "NetworkOptions",
    "Tunnel",
    "OutputStream",
    "OutputDroppedWarning",
    "DroppedMarker",
    "DroppedBytesMarker",
    "InputStream",
    "Image",
    "Secret",
    "Volume",
    "Session",
    "default_session",
    "SandboxError",
    "NotFoundError",
    "InvalidArgumentError",
    "SandboxNotRunningError",
    "SpawnError",
    "RunnerExitedError",
    "RunnerUnavailableError",
    "AuthenticationError",
    "ImagePullError",
    "RequestTimeoutError",
    "NodeLostError",
    "PlacementError",
    "RemoteFunction",
    "Serialization",
    "RemoteError",
    "WorkerCrashedError",
    "FunctionTimeoutError",
    "function",
    "wait",
    "as_completed",
    "gather",
    "results",
    "__version__",
]
