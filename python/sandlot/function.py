"""Remote functions: run a Python function in warm sandboxes.

``RemoteFunction`` wraps a synchronous function. ``remote(*args, **kwargs)``
returns an :class:`~sandlot._core.OperationRef` at once (``.result()`` or
``await``); ``map(items)`` launches one call per tuple of positional
arguments and returns their refs in order; ``local(...)`` runs the original
function in this process.

The runner keeps, per registered function, a queue of calls and a pool of
warm worker sandboxes (each loads the function once, then serves calls one at
a time), so a call on a warm pool costs one HTTP round trip and ``map`` over
10,000 items is a handful of batched requests. See docs/protocol.md section 4
and docs/architecture.md ("Remote functions").

Example::

    import sandlot

    @sandlot.function()
    def add(a, b):
        return a + b

    add.remote(2, 3).result()                              # 5
    [r.result() for r in add.map([(1, 2), (3, 4)])]      # [3, 7]
    add.local(2, 3)                                        # 5
"""

from __future__ import annotations

import concurrent.futures
import enum
import functools
import inspect
import json
import logging
import os
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from . import _core, errors
from ._calls import as_completed, gather, results, wait
from ._direct import DirectState
# map() lives in _map.py; its limits stay importable from here.
from ._map import _BATCH_BYTES, _BATCH_CALLS, _CHUNK_BYTES, _CHUNK_MAX, _CHUNK_TAG, _MapMixin  # noqa: F401
from .network import network_wire, ports_wire
from .resources import resources_wire
from .s3 import s3_mounts_wire
from .session import Session, default_session

__all__ = [
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
    "create_profile",
    "list_profiles",
    "delete_profile",
    "DEFAULT_TEMP_DIR",
]

log = logging.getLogger("sandlot")

P = ParamSpec("P")
R = TypeVar("R")

#: Default scratch directory inside the sandbox (``TMPDIR``).
DEFAULT_TEMP_DIR = "/tmp"
_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
_BOOT = "import runpy,sys; runpy.run_path(sys.argv[1], run_name='__sandlot_worker__')"
#: Direct calls to a leased worker (_direct.py); SANDLOT_DIRECT=0 turns them off.
_DIRECT = os.environ.get("SANDLOT_DIRECT", "1") != "0"


def _local_direct_dir(sess: Session, direct_dir: str | None) -> str | None:
    """The runner's direct dir if this client can use it: the runner is on
    this host (a unix socket, or a TCP runner whose dir exists here, as for a
    cluster node's runner on the client's own machine; the dir's name holds
    the function's random id, so another host's dir is never mistaken)."""
    if not _DIRECT or not direct_dir:
        return None
    if sess.base_url.startswith("unix://") or os.path.isdir(direct_dir):
        return direct_dir
    return None


class Serialization(enum.Enum):
    """How arguments and results travel.

    * ``JSON`` (default): ``json``; tuples arrive as lists, dict keys as str.
    * ``PICKLE``: pickle protocol 5 for data (cloudpickle when plain pickle
      cannot), and remote exceptions keep their exact type. Only for code
      you trust: results are unpickled in your process.
    * ``MSGPACK``: the C codec (``sandlot._core.packb``): None, bool, int,
      float, str, bytes, list/tuple, dict.

    The function itself is always shipped with cloudpickle.
    """

    JSON = "json"
    PICKLE = "pickle"
    MSGPACK = "msgpack"


class RemoteError(errors.SandboxError):
    """A remote call failed in a way that is not the function's own exception
    (its worker died, no worker could start, the function could not load), or
    the function raised an exception whose type cannot be rebuilt here.

    Attributes:
        remote_type: ``"module.QualName"`` of the remote exception, if any.
        remote_traceback: the traceback text from the sandbox, if any.
    """

    default_code = "remote_error"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0,
                 remote_type: str | None = None, remote_traceback: str | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class WorkerCrashedError(RemoteError):
    """The worker sandbox died while running the call (segfault, ``os._exit``,
    out of memory); the pool replaced it."""

    default_code = "crashed"


class FunctionTimeoutError(RemoteError, TimeoutError):
    """The call ran longer than ``max_timeout_seconds``; its worker was killed
    and replaced."""

    default_code = "timeout"


def _qualname(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


# ---------------------------------------------------------------------------
# serialization
# ---------------------------------------------------------------------------

def _json_enc(v: Any) -> bytes:
    # The same bytes as json.dumps, in one C pass for plain data (a tenth of
    # the cost); json.dumps itself for everything else, errors included.
    out = _core.json_dumps_fast(v)
    return out if out is not None else json.dumps(v, separators=(",", ":")).encode()


def _pickle_enc(v: Any) -> bytes:
    try:
        return pickle.dumps(v, protocol=5)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(v, protocol=5)


_ENCODERS: dict[Serialization, Callable[[Any], bytes]] = {
    Serialization.JSON: _json_enc,
    Serialization.PICKLE: _pickle_enc,
    Serialization.MSGPACK: _core.packb,
}
_DECODERS: dict[Serialization, Callable[[bytes], Any]] = {
    Serialization.JSON: json.loads,
    Serialization.PICKLE: pickle.loads,
    Serialization.MSGPACK: _core.unpackb,
}


def _ship_by_value(fn: Any, image: str | None) -> bool:
    mod = getattr(fn, "__module__", None)
    if mod in (None, "__main__", "__mp_main__") or "<locals>" in _qualname(fn):
        return True
    m = sys.modules.get(mod)
    if m is None or getattr(m, "__file__", None) is None:
        return True  # exec'd or synthesised modules: nothing to import remotely
    if image not in (None, "host"):
        # Another root filesystem need not contain the module's file.
        return not mod.split(".")[0] in sys.stdlib_module_names
    return False


#: Directories a host-image sandbox replaces with empty tmpfs mounts: the
#: client's interpreter or code living there must be mounted in explicitly.
_MASKED = ("/root", "/home", "/tmp", "/run", "/var/tmp")


def _mounts(image: str | None) -> list[str]:
    """Host directories the workers need read-only at the same path: this
    interpreter's prefix and the import path, when they sit under a directory
    the sandbox masks (a pyenv under /root, a checkout under /tmp)."""
    if image not in (None, "host"):
        return []
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cands = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)), here]
    # Explicit import-path entries only: "" (the current directory) is not
    # mounted, so running from $HOME does not expose all of it.
    cands += [p for p in sys.path if isinstance(p, str) and p]
    home = os.path.realpath(os.path.expanduser("~"))
    real = []
    for c in cands:
        try:
            r = os.path.realpath(c)
        except OSError:
            continue
        if r in _MASKED or r == home:
            continue  # a whole home or /tmp is too much to expose
        if any(r.startswith(m + "/") for m in _MASKED) and os.path.isdir(r):
            real.append(r)
    out: list[str] = []
    for r in sorted(set(real)):
        if not any(r == o or r.startswith(o.rstrip("/") + "/") for o in out):
            out.append(r)
    return out


def _dump_function(fn: Any, image: str | None) -> bytes:
    import cloudpickle

    if _ship_by_value(fn, image):
        mod = sys.modules.get(getattr(fn, "__module__", "") or "")
        if mod is not None and mod.__name__ not in ("__main__", "__mp_main__") and getattr(mod, "__file__", None):
            cloudpickle.register_pickle_by_value(mod)
            try:
                return cloudpickle.dumps(fn, protocol=5)
            finally:
                cloudpickle.unregister_pickle_by_value(mod)
        return cloudpickle.dumps(fn, protocol=5)
    return cloudpickle.dumps(fn, protocol=5)


# ---------------------------------------------------------------------------
# RemoteFunction
# ---------------------------------------------------------------------------

def _check_str_map(name: str, v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise TypeError(f"{name} must be a dict of str to str, got {v!r}")
    return dict(v)


def _check_str_list(name: str, v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str) or not all(isinstance(x, str) for x in v):
        raise TypeError(f"{name} must be a list of str, got {v!r}")
    return list(v)


def _as_dict(name: str, v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if hasattr(v, "__dataclass_fields__"):
        import dataclasses

        v = dataclasses.asdict(v)
    elif hasattr(v, "model_dump"):
        v = v.model_dump()
    if not isinstance(v, dict):
        raise TypeError(f"{name} must be a dict (or an options object), got {type(v).__name__}")
    try:
        _core.packb(v)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must contain only plain data: {exc}") from None
    return v


class RemoteFunction(_MapMixin, Generic[P, R]):
    """Wrapper for remote execution of a synchronous function in sandboxes.

    Parameters follow the seed signature; every one does something:

    * ``container_image``: the image (name registered with ``Image``, or
      ``"dir:/abs/path"``) of the worker sandboxes; ``None`` is the host's root.
      The interpreter (this process's ``sys.executable``) must exist there.
    * ``serialization``: see :class:`Serialization`.
    * ``temp_dir``: created in the sandbox and exported as ``TMPDIR``.
    * ``environment_variables``: the workers' environment.
    * ``annotations``: stored with the function and its calls; listed by
      ``GET /v1/functions``.
    * ``mounted_files``: ``[{"local_path": ..., "mount_path": ...}]``: host
      files or directories bind-mounted read-only into the worker sandboxes.
    * ``runner_ids``: runners allowed to run the calls; must include the
      session's runner (its ``health()["runner_id"]``), else ``InvalidArgumentError``.
    * ``profile_ids`` / ``profile_names``: runner-side presets made with
      :func:`create_profile` (``sandlot profile create``): their image and
      environment apply where this function sets none; unknown ones raise
      ``NotFoundError`` at the first call.
    * ``resources``: a :class:`sandlot.ResourceOptions` or dict (cpu, memory,
      pids, disk); every worker sandbox runs under these limits (see
      :mod:`sandlot.resources`). A call whose worker the OOM killer ends fails
      with :class:`WorkerCrashedError`.
    * ``s3_mount``: an S3 bucket mounted in every worker sandbox with s3fs:
      ``{"mount_path": "/data", "bucket": ..., "endpoint_url": ..., "prefix": ...,
      "access_key_id": ..., "secret_access_key": ..., "region": ..., "read_only": bool}``
      (or ``{"/data": {...}, ...}`` for several; see :mod:`sandlot.s3`). The
      credentials go to the runner only and are never echoed; a bucket that
      cannot be mounted fails the calls with the runner's reason.
    * ``network``: a :class:`sandlot.NetworkOptions` or dict (``egress``:
      ``"none"``, ``"all"`` or an allow list); every worker sandbox runs under
      that policy (see :mod:`sandlot.network`).
    * ``ports``: validated (``[8000]`` or ``[{"container_port": 8000}]``) and
      stored with the function; workers do not open tunnels (no caller could
      tell which worker's to use): use ``Sandbox.create(ports=...)``.
    * ``max_timeout_seconds``: bound on each call; the call fails with
      :class:`FunctionTimeoutError` (a ``TimeoutError``) and its worker is
      killed and replaced.

    Pool options (keyword-only extras): ``max_workers`` (default
    ``min(nproc, 4)``; on a cluster, per node: ``min(the node's Ray CPUs, 4)``), ``min_workers`` (kept warm, default 0),
    ``idle_timeout`` (seconds before an idle worker is reaped, default 60),
    ``fresh_sandbox`` (a new sandbox per call, for untrusted code),
    ``retries`` (cluster sessions only: how many times a call, or a map
    chunk, whose node is lost is run again on another node; default 0, the
    call fails with :class:`sandlot.NodeLostError`. Only for functions that
    may run more than once).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        session: Session | None,
        container_image: str | None = None,
        serialization: Serialization = Serialization.JSON,
        temp_dir: str = DEFAULT_TEMP_DIR,
        profile_ids: list[str] | None = None,
        profile_names: list[str] | None = None,
        runner_ids: list[str] | None = None,
        resources: Any | None = None,
        mounted_files: list[dict[str, Any]] | None = None,
        s3_mount: dict[str, Any] | None = None,
        ports: list[dict[str, Any] | int] | None = None,
        network: Any | None = None,
        max_timeout_seconds: int | None = None,
        environment_variables: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        max_workers: int | None = None,
        min_workers: int = 0,
        idle_timeout: float | None = None,
        fresh_sandbox: bool = False,
        retries: int = 0,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"RemoteFunction needs a callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{_qualname(fn)} is an async function; remote functions must be synchronous "
                "(call it with asyncio.run inside a sync wrapper if you need to)"
            )
        if session is not None and not isinstance(session, Session):
            raise TypeError(f"session must be a sandlot.Session, got {type(session).__name__}")
        if not isinstance(serialization, Serialization):
            raise TypeError(f"serialization must be a sandlot.Serialization, got {serialization!r}")
        if container_image is not None and not isinstance(container_image, str):
            # An Image object: use its name.
            container_image = getattr(container_image, "name", None) or str(container_image)
        if not isinstance(temp_dir, str) or not temp_dir.startswith("/"):
            raise ValueError(f"temp_dir must be an absolute path, got {temp_dir!r}")
        if max_timeout_seconds is not None and (
            isinstance(max_timeout_seconds, bool) or not isinstance(max_timeout_seconds, (int, float))
            or max_timeout_seconds <= 0
        ):
            raise ValueError(f"max_timeout_seconds must be a positive number, got {max_timeout_seconds!r}")
        if max_workers is not None and (not isinstance(max_workers, int) or not 1 <= max_workers <= 256):
            raise ValueError(f"max_workers must be an int in [1, 256], got {max_workers!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ValueError(f"retries must be an int in [0, 100], got {retries!r}")
        if not isinstance(min_workers, int) or min_workers < 0:
            raise ValueError(f"min_workers must be an int >= 0, got {min_workers!r}")
        self._fn = fn
        self._session = session
        self.container_image = container_image
        self.serialization = serialization
        self.temp_dir = temp_dir
        self.profile_ids = _check_str_list("profile_ids", profile_ids)
        self.profile_names = _check_str_list("profile_names", profile_names)
        self.runner_ids = _check_str_list("runner_ids", runner_ids)
        self.resources = resources_wire(resources)
        self.network = network_wire(network)
        self.s3_mount = _as_dict("s3_mount", s3_mount)
        self._s3_wire = s3_mounts_wire(self.s3_mount, "s3_mount")
        self.ports = ports_wire(ports)
        self.mounted_files = self._check_mounts(mounted_files)
        self.max_timeout_seconds = max_timeout_seconds
        self.environment_variables = _check_str_map("environment_variables", environment_variables)
        self.annotations = _check_str_map("annotations", annotations)
        self.max_workers = max_workers
        self.min_workers = min_workers
        self.idle_timeout = idle_timeout
        self.fresh_sandbox = bool(fresh_sandbox)
        self.retries = retries
        try:
            self._sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._sig = None
        self._enc = _ENCODERS[serialization]
        self._dec = _DECODERS[serialization]
        self._codec = _Codec(serialization)
        self._fn_id: str | None = None
        self._reg_session: Session | None = None
        # Direct calls to a leased worker (_direct.py): the runner's dir for
        # this function's sockets, when the runner is on this host.
        self._direct_dir: str | None = None
        self._direct = DirectState()
        self._shapes: set[Any] = set()
        self._reg_runner: str | None = None  # runner_id of the registration
        self._reg_gen = -1  # errors.unavailable_generation when last checked
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _check_mounts(mounted_files: Any) -> list[dict[str, Any]] | None:
        if mounted_files is None:
            return None
        out = []
        for m in mounted_files:
            if not isinstance(m, dict):
                raise TypeError(f"mounted_files entries must be dicts, got {m!r}")
            path = m.get("mount_path") or m.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"mounted_files entry needs an absolute 'mount_path': {m!r}")
            local = m.get("local_path") or m.get("host_path") or m.get("source")
            if not isinstance(local, str):
                raise ValueError(f"mounted_files entry needs a 'local_path': {m!r}")
            local = os.path.realpath(local)
            if not os.path.exists(local):
                raise FileNotFoundError(f"mounted_files: {local} does not exist")
            out.append({"mount_path": path, "local_path": local})
        return out

    def _sess(self) -> Session:
        return self._session if self._session is not None else default_session()

    def __repr__(self) -> str:
        return f"<RemoteFunction {_qualname(self._fn)} serialization={self.serialization.name}>"

    def _spec(self) -> bytes:
        spec = {
            "fn": _dump_function(self._fn, self.container_image),
            "serialization": self.serialization.value,
            "sys_path": [p for p in sys.path if isinstance(p, str)],
            "temp_dir": self.temp_dir,
            "cwd": os.getcwd() if self.container_image in (None, "host") else None,
            "name": _qualname(self._fn),
        }
        return pickle.dumps(spec, protocol=5)

    def _registration(self) -> dict[str, Any]:
        env = {"TMPDIR": self.temp_dir, "PYTHONDONTWRITEBYTECODE": "1"}
        # A client running under AddressSanitizer (./dev asan) imports an
        # instrumented sandlot._core; the worker imports the same file, which
        # only loads with the sanitizer runtime preloaded there too.
        if "libasan" in os.environ.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
            env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=0")
        env.update(self.environment_variables or {})
        options = {
            k: v
            for k, v in {
                "resources": self.resources,
                "network": self.network,
                "ports": self.ports,
                # What users see in listings: no credentials.
                "s3_mount": [{k: v for k, v in m.items() if k not in ("access_key_id", "secret_access_key")}
                             for m in self._s3_wire] or None,
                "profile_ids": self.profile_ids,
                "profile_names": self.profile_names,
                "serialization": self.serialization.value,
                "temp_dir": self.temp_dir,
                "mounted_files": [m["mount_path"] for m in self.mounted_files or []],
            }.items()
            if v is not None
        }
        body: dict[str, Any] = {
            "name": _qualname(self._fn),
            "spec": self._spec(),
            "cmd": [sys.executable, "-c", _BOOT, _WORKER_FILE],
            "image": self.container_image,
            "env": env,
            "annotations": self.annotations or {},
            "options": options,
            "runner_ids": self.runner_ids,
            "profile_ids": self.profile_ids,
            "profile_names": self.profile_names,
            "mounts": {**{p: p for p in _mounts(self.container_image)},
                       **{m["mount_path"]: m["local_path"] for m in self.mounted_files or []}},
            "call_timeout": float(self.max_timeout_seconds) if self.max_timeout_seconds else None,
            "min_workers": self.min_workers,
            "fresh": self.fresh_sandbox,
        }
        if self._s3_wire:
            body["s3_mounts"] = self._s3_wire
        if self.max_workers is not None:
            body["max_workers"] = self.max_workers
        if self.idle_timeout is not None:
            body["idle_timeout"] = float(self.idle_timeout)
        return body

    def _ensure(self) -> tuple[Session, str]:
        """The session and this function's id on its current runner.

        Registers on first use, and again with a runner that replaced the one
        it was registered with (a crash, ``sandlot runner restart``): checked
        when the session saw the runner exit or a request fail as
        unavailable since the registration.
        """
        sess = self._sess()
        sess._check_runner()
        fid = self._fn_id
        if fid is not None and self._reg_session is sess and self._reg_gen == errors.unavailable_generation \
                and self._reg_runner == sess._runner_id:
            return sess, fid
        with self._lock:
            gen = errors.unavailable_generation
            if self._fn_id is not None and self._reg_session is sess and self._reg_gen == gen \
                    and self._reg_runner == sess._runner_id:
                return sess, self._fn_id
            health = sess.health()  # starts the embedded runner if needed
            rid = health.get("runner_id")
            if self._fn_id is None or self._reg_session is not sess or rid != self._reg_runner:
                resp = self._kept(sess, rid)
                if resp is None:
                    if self._fn_id is not None:
                        log.info("registering %s again with the new runner %s (was %s on %s)",
                                 _qualname(self._fn), rid, self._fn_id, self._reg_runner)
                    resp = sess.request("POST", "/v1/functions", self._registration()).result()
                self._direct.release()
                self._direct = DirectState(rid)
                self._direct_dir = _local_direct_dir(sess, resp["function"].get("direct_dir"))
                self._fn_id = resp["function"]["function_id"]
                self._reg_session = sess
                self._reg_runner = rid
            self._reg_gen = gen
            return sess, self._fn_id

    def _kept(self, sess: Session, rid: Any) -> dict[str, Any] | None:
        """A runner that replaced the one this function was registered with
        on the same state dir keeps its registrations (fn_persist.c): the
        same id then works, with no new registration. None if it has not."""
        if self._fn_id is None or self._reg_session is not sess:
            return None
        try:
            resp = sess.request("GET", f"/v1/functions/{self._fn_id}").result()
        except errors.NotFoundError:
            return None
        log.info("the new runner %s kept %s as %s", rid, _qualname(self._fn), self._fn_id)
        return resp  # type: ignore[no-any-return]

    @property
    def function_id(self) -> str:
        """The runner's id of this function (registers it on first use)."""
        if self._sess()._cluster:
            return self._sess()._functions(self).function_id()  # type: ignore[attr-defined]
        return self._ensure()[1]

    def _encode(self, args: tuple[Any, ...], kwargs: dict[str, Any], shapes: set[Any] | None = None) -> bytes:
        if self._sig is not None:
            # map() checks each distinct call shape once: binding costs more
            # than encoding a small call.
            shape = (len(args), tuple(kwargs)) if shapes is not None else None
            if shape is None or shape not in shapes:
                try:
                    self._sig.bind(*args, **kwargs)
                except TypeError as exc:
                    raise TypeError(f"{_qualname(self._fn)}(): {exc}") from None
                if shapes is not None:
                    shapes.add(shape)
        try:
            return self._enc([args, kwargs])
        except Exception as exc:
            raise self._encode_error(args, kwargs, exc) from None

    def _encode_error(self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> Exception:
        names: list[tuple[str, Any]] = []
        bound = None
        if self._sig is not None:
            try:
                bound = self._sig.bind(*args, **kwargs)
            except TypeError:
                bound = None
        if bound is not None:
            names = list(bound.arguments.items())
        else:
            names = [(f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        for name, value in names:
            try:
                self._enc(value)
            except Exception as inner:
                return TypeError(
                    f"argument {name!r} of {_qualname(self._fn)}() (type {type(value).__name__}) "
                    f"cannot be serialized with Serialization.{self.serialization.name}: {inner}"
                    + ("; try Serialization.PICKLE" if self.serialization is not Serialization.PICKLE else "")
                )
        return TypeError(
            f"the arguments of {_qualname(self._fn)}() cannot be serialized with "
            f"Serialization.{self.serialization.name}: {exc}"
        )

    def _outcome(self, rec: dict[str, Any]) -> Any:
        status = rec.get("status")
        if status == "ok":
            return self._dec(rec["data"])
        msg = rec.get("message") or status
        if status == "error":
            raise self._rebuild(rec.get("data") or b"{}")
        if status == "timeout":
            raise FunctionTimeoutError(msg, code="timeout")
        if status == "cancelled":
            raise concurrent.futures.CancelledError(msg)
        if status == "crashed":
            raise WorkerCrashedError(msg, code="crashed")
        if status == "runner_exited":
            raise errors.RunnerExitedError(msg, code="runner_exited")
        raise RemoteError(msg, code=status or "failed")

    def _rebuild(self, data: bytes) -> BaseException:
        # The description comes from the worker, inside the sandbox, where
        # the function's own code could have written anything: whatever it
        # is, the caller gets an exception (tests/fuzz/fuzz_decoders.py).
        try:
            info = json.loads(data)
        except (ValueError, TypeError, RecursionError):
            info = None
        if not isinstance(info, dict):
            return RemoteError(f"the worker sent a malformed error description ({len(data)} bytes)",
                               code="remote_exception", remote_type="?", remote_traceback="")
        tb = info.get("traceback") or ""
        if not isinstance(tb, str):
            tb = str(tb)
        tname = f"{info.get('module')}.{info.get('type')}"
        exc: BaseException | None = None
        if info.get("pickled") and self.serialization is Serialization.PICKLE:
            try:
                exc = pickle.loads(bytes.fromhex(info["pickled"]))
            except Exception:
                exc = None
        if exc is None and info.get("module") == "builtins":
            import builtins

            cls = getattr(builtins, str(info.get("type")), None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    exc = cls(*(info.get("args") or [info.get("message", "")]))
                except Exception:
                    exc = None
        if not isinstance(exc, BaseException):
            exc = RemoteError(f"{tname}: {info.get('message', '')}", code="remote_exception",
                              remote_type=tname, remote_traceback=tb)
        try:
            exc.remote_traceback = tb  # type: ignore[attr-defined]
        except Exception:
            pass
        if hasattr(exc, "add_note"):
            exc.add_note("Remote traceback (in the sandbox):\n" + tb.rstrip())
        return exc

    # -- the API -----------------------------------------------------------
    def remote(self, *args: P.args, **kwargs: P.kwargs) -> _core.OperationRef[R]:
        """Run the function in a sandbox; return its ``OperationRef`` at once.

        One HTTP request submits the call and is held by the runner until the
        call finishes. ``ref.cancel()`` (or cancelling the awaiting task)
        cancels the call: dropped if queued, its worker killed if running.

        Example:
            >>> ref = compute.remote(2, 3)            # doctest: +SKIP
            >>> ref.result()                          # doctest: +SKIP
            5
        """
        sess = self._sess()
        if sess._cluster:
            return sess._functions(self).remote(args, kwargs)  # type: ignore[attr-defined]
        # Call shapes already checked against the signature are not bound
        # again (binding costs more than the rest of a direct call's client side).
        payload = self._encode(args, kwargs, self._shapes if len(self._shapes) < 64 else None)
        sess, fid = self._ensure()
        client = sess._client
        if self._direct_dir is not None:
            ch = self._direct.get(client, fid, self._direct_dir)
            if ch is not None:
                ref = ch.call(payload, self._remote_done, functools.partial(
                    client.request, "POST", f"/v1/functions/{fid}/call", {"args": payload}, timeout=None))
                if ref is not None:
                    return ref
            self._direct.release_extras()
        return client.request(
            "POST", f"/v1/functions/{fid}/call", {"args": payload}, timeout=None, transform=self._remote_done
        )

    def _remote_done(self, resp: dict[str, Any]) -> Any:
        return self._outcome(resp["call"])

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the original function in this process (no sandbox).

        Example:
            >>> compute.local(2, 3)     # doctest: +SKIP
            5
        """
        return self._fn(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._fn(*args, **kwargs)

    def delete(self) -> None:
        """Forget the function in the runner: workers stop, queued calls are cancelled."""
        if self._sess()._cluster:
            self._sess()._functions(self).delete()  # type: ignore[attr-defined]
            return
        self._direct.release()
        with self._lock:
            if self._fn_id is not None and self._reg_session is not None:
                try:
                    self._reg_session.request("POST", f"/v1/functions/{self._fn_id}/delete").result()
                except errors.NotFoundError:
                    pass
            self._fn_id = None
            self._reg_session = None

    def info(self) -> dict[str, Any]:
        """The runner's view: pool, queue, counters, stored options
        (through a cluster session: ``{"runners": {tag: view}}``)."""
        if self._sess()._cluster:
            return self._sess()._functions(self).info()  # type: ignore[attr-defined]
        sess, fid = self._ensure()
        return sess.request("GET", f"/v1/functions/{fid}").result()["function"]


class _Codec:
    """What turns a call's record into its outcome (RemoteFunction's own
    _outcome/_rebuild), without the function: map() chunks keep this."""

    __slots__ = ("serialization", "_dec")

    def __init__(self, serialization: Serialization) -> None:
        self.serialization = serialization
        self._dec = _DECODERS[serialization]

    _outcome = RemoteFunction._outcome
    _rebuild = RemoteFunction._rebuild


def function(
    fn: Callable[P, R] | None = None, *, session: Session | None = None, **options: Any
) -> Any:
    """Decorator: ``@sandlot.function`` or ``@sandlot.function(serialization=..., ...)``.

    Takes the keyword arguments of :class:`RemoteFunction`; without
    ``session`` the default session is used (resolved at first call, so
    decorating never contacts a runner). ``async def`` functions are refused.
    """

    def wrap(f: Callable[P, R]) -> RemoteFunction[P, R]:
        return RemoteFunction(f, session=session, **options)

    if fn is not None:
        return wrap(fn)
    return wrap


# ---------------------------------------------------------------------------
# profiles: runner-side presets selected with profile_ids / profile_names
# ---------------------------------------------------------------------------

def create_profile(name: str, *, image: str | None = None, env: dict[str, str] | None = None,
                   options: dict[str, Any] | None = None, session: Session | None = None) -> dict[str, Any]:
    """Create a runner-side preset (what ``sandlot profile create NAME`` does).

    A function registered with ``profile_names=[name]`` (or the returned
    ``profile_id`` in ``profile_ids``) takes the profile's image when it names
    none, and its environment variables unless it sets them itself.
    """
    sess = session if session is not None else default_session()
    body = {"name": name, "image": image, "env": _check_str_map("env", env) or {},
            "options": _as_dict("options", options)}
    return sess.request("POST", "/v1/profiles", body).result()["profile"]


def list_profiles(session: Session | None = None) -> list[dict[str, Any]]:
    """The runner's profiles."""
    sess = session if session is not None else default_session()
    return sess.request("GET", "/v1/profiles").result()["profiles"]


def delete_profile(name: str, session: Session | None = None) -> None:
    """Delete a profile by name or id (functions registered with it keep their settings)."""
    sess = session if session is not None else default_session()
    sess.request("POST", f"/v1/profiles/{name}/delete").result()
