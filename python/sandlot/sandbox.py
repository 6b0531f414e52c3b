"""Sandbox: an ephemeral, isolated Linux environment run by the sandlot runner.

Example:
    >>> from sandlot import Sandbox
    >>> with Sandbox.create(["sleep", "60"]) as sb:              # doctest: +SKIP
    ...     proc = sb.exec(["uname", "-s"])
    ...     print(proc.stdout.read(), proc.wait())
    Linux
     0

In asyncio, append ``.aio`` and await (see ``sandlot._aio``)::

    async with await Sandbox.create.aio("sleep 60") as sb:
        proc = await sb.exec.aio(["uname", "-s"])
        print(await proc.stdout.read.aio(), await proc.wait.aio())
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _validate
from ._aio import Blocking, Op, classop, op
from .errors import NotFoundError, SandboxError
from .image import Image
from .network import NetworkOptions, Tunnel, network_wire, ports_wire
from .resources import ResourceOptions, resources_wire
from .s3 import s3_mounts_wire
from .s3 import secrets_of as s3_secrets_of
from .process import _TIMED_OUT, InputStream, OutputStream, ProcessInfo, SandboxProcess, _long_wait
from .secret import Secret
from .session import Session, _resolve
from .snapshot import SNAPSHOT_TIMEOUT, SandboxSnapshot
from .function import _mounts as _interpreter_mounts
from .volume import Volume

__all__ = ["Sandbox", "SandboxInfo", "SandboxSnapshot"]

log = logging.getLogger("sandlot")

#: Time limit of a create request (building the overlay root can take a moment
#: on a loaded host; the runner answers as soon as the entry command started).
CREATE_TIMEOUT = 120.0


@dataclass(frozen=True)
class SandboxInfo:
    """A snapshot of a sandbox's state, as reported by the runner.

    ``status`` is one of ``"running"``, ``"exited"``, ``"timeout"``,
    ``"terminated"``, ``"failed"``. ``exit_code`` is the entry command's (``-N``
    for death by signal N). ``pid`` is the host pid of the sandbox's init while
    it runs. Secret values are never part of it, only ``secret_names``.
    ``resources`` is the limits it runs under (runner form: cpu in cores,
    memory and disk in MiB), ``oom_killed`` whether the OOM killer killed any
    of its processes (memory limit). ``network`` is ``None`` for the
    default (only ``lo``), else ``{"egress", "allowed", "address",
    "gateway", "ports"}``: the policy as given, the CIDRs enforced (host
    names resolved at create), the sandbox's address and the host side's.
    """

    sandbox_id: str
    status: str
    exit_code: int | None
    cmd: tuple[str, ...] | None
    image: str
    workdir: str | None
    env: Mapping[str, str] = field(hash=False)
    secret_names: tuple[str, ...]
    volumes: Mapping[str, str] = field(hash=False)
    timeout: float
    created_at: float
    finished_at: float | None
    pid: int | None
    resources: Mapping[str, Any] | None = field(default=None, hash=False)
    oom_killed: bool = False
    network: Mapping[str, Any] | None = field(default=None, hash=False)
    isolation: str | None = None

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> SandboxInfo:
        cmd = d.get("cmd")
        return cls(
            sandbox_id=str(d["sandbox_id"]),
            status=str(d.get("status", "running")),
            exit_code=d.get("exit_code"),
            cmd=tuple(cmd) if cmd is not None else None,
            image=str(d.get("image") or "host"),
            workdir=d.get("workdir"),
            env=dict(d.get("env") or {}),
            secret_names=tuple(d.get("secret_names") or ()),
            volumes=dict(d.get("volumes") or {}),
            timeout=float(d.get("timeout") or 0.0),
            created_at=float(d.get("created_at") or 0.0),
            finished_at=d.get("finished_at"),
            pid=d.get("pid"),
            resources=dict(d["resources"]) if d.get("resources") else None,
            oom_killed=bool(d.get("oom_killed", False)),
            network=dict(d["network"]) if d.get("network") else None,
            isolation=d.get("isolation"),
        )

    @property
    def running(self) -> bool:
        return self.status == "running"


def _final_code(status: str, exit_code: int | None) -> int:
    """The code wait()/poll() report once a sandbox ended.

    A sandbox without an entry command has no exit code of its own; it only
    ends by being killed (timeout or terminate), reported as -9 (SIGKILL) like
    an entry command killed the same way.
    """
    if exit_code is not None:
        return int(exit_code)
    return 0 if status == "exited" else -9


def _scrub(exc: BaseException, secrets: Sequence[str]) -> BaseException:
    """A copy of a runner error with any secret value replaced by '***'."""
    msg = str(exc)
    hidden = msg
    for v in sorted(secrets, key=len, reverse=True):
        if v:
            hidden = hidden.replace(v, "***")
    if hidden == msg or not isinstance(exc, SandboxError):
        return exc
    return type(exc)(hidden, code=exc.code, status=exc.status)


class Sandbox:
    """An ephemeral, isolated execution environment.

    Useful for running untrusted code, one-shot scripts, or multi-step
    workflows with shared state between ``exec()`` calls. Destroyed by
    :meth:`terminate`, on leaving a ``with``/``async with`` block, or when its
    ``timeout`` passes.

    Get one with :meth:`create`, :meth:`lookup` or :meth:`list` - not by
    calling the class.

    Attributes:
        sandbox_id: the runner's id, e.g. ``"sb-0123456789abcdef"``; pass it to
            :meth:`lookup` from any process to get the sandbox back.
        returncode: the entry command's exit code once :meth:`wait`/:meth:`poll`
            saw it end, else None.
    """

    def __init__(self, sandbox_id: str, *, session: Session, info: SandboxInfo | None = None) -> None:
        self.sandbox_id = sandbox_id
        self._session = session
        self._info = info
        self.returncode: int | None = None
        self._entry: SandboxProcess | None = None
        if info is not None and info.status != "running":
            self.returncode = _final_code(info.status, info.exit_code)

    # -- creating and finding ---------------------------------------------------
    @classop
    def create(
        cls: type[Sandbox],
        cmd: object = (),
        image: Image | None = None,
        secrets: Sequence[Secret] = (),
        volumes: Mapping[str, Volume] | None = None,
        timeout: float = 300.0,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        snapshot: SandboxSnapshot | None = None,
        *,
        session: Session | None = None,
        mounted_files: Mapping[str, str | os.PathLike[str]] | None = None,
        resources: ResourceOptions | Mapping[str, Any] | None = None,
        s3_mounts: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None = None,
        network: NetworkOptions | Mapping[str, Any] | None = None,
        ports: Sequence[int | Mapping[str, Any]] | None = None,
        output_policy: str = "drop_oldest",
        output_keep: int | None = None,
        isolation: str | None = None,
    ) -> Op[Sandbox]:
        """Start a sandbox running ``cmd``; returns once the command has started.

        Args:
            cmd: the entry command, a list/tuple of str or a shell string (run
                with ``/bin/sh -c``). ``()`` (default): no entry command, the
                sandbox idles until its timeout or :meth:`terminate`; use
                :meth:`exec` to run things in it.
            image: the root filesystem (default :meth:`Image.host`).
            secrets: :class:`Secret` objects whose variables are set in the
                environment of every process; values never appear in listings.
            volumes: ``{"/mount/path": Volume}``; persistent across sandboxes.
            timeout: lifetime in seconds (0 < t <= 86400). When it passes, every
                process is killed (exit code -9) and the status is ``"timeout"``.
            env: extra environment variables of the entry command and execs.
            workdir: absolute working directory inside the sandbox.
            snapshot: a :class:`SandboxSnapshot` (from :meth:`snapshot`) to
                start from instead of a cold start: the root is the snapshot's
                filesystem (files written, installed or deleted, over the same
                image) with a fresh writable layer, so many sandboxes can start
                from one snapshot without seeing each other's writes. ``env``,
                ``workdir`` and ``cmd`` default to the snapshot's (``env`` is
                merged, these values winning); ``image`` must be left out or be
                the snapshot's. Processes and memory do not come back (see
                :mod:`sandlot.snapshot`).
            session: the runner to use (default: :func:`sandlot.default_session`).
            mounted_files: ``{"/path/inside": "/host/path"}``: host files or
                directories bound read-only into the sandbox (writes fail with
                EROFS); the host paths are the runner's. RemoteFunction's
                ``mounted_files`` uses the same mechanism.
            resources: limits, a :class:`sandlot.ResourceOptions` or a dict with
                ``cpu`` (cores), ``memory`` (MiB or ``"512Mi"``), ``pids``,
                ``disk`` (writable layer, MiB or ``"1Gi"``), ``gpu`` (a count, ``"A100"`` or
                ``"A100:2"``: devices the runner was given with ``--gpu``).
                See :mod:`sandlot.resources`.
            s3_mounts: ``{"/path/inside": {"bucket": ..., "endpoint_url": ...,
                "prefix": ..., "access_key_id": ..., "secret_access_key": ...,
                "region": ..., "read_only": bool}}``: S3 buckets mounted with
                s3fs by the runner (see :mod:`sandlot.s3`). Bad credentials or
                an unreachable endpoint raise ``SpawnError`` within seconds.
            network: a :class:`sandlot.NetworkOptions` or ``{"egress": ...}``:
                ``"none"`` (default, only ``lo``), ``"all"``, or a list of IPv4
                CIDRs and host names; enforced by the runner's nftables rules,
                and the host and other sandboxes stay unreachable (see
                :mod:`sandlot.network`).
            ports: TCP ports inside (``[8000]`` or ``[{"container_port":
                8000}]``) exposed on host loopback ports; see :meth:`tunnels`.
            output_policy: what happens to a process's stdout/stderr that no
                client reads once ``output_keep`` bytes of it wait:
                ``"drop_oldest"`` (default: the oldest bytes go, and the reader
                is told, see :class:`sandlot.process.OutputStream`) or
                ``"block"`` (the runner stops reading, so the process blocks
                on its next write until a client reads).
            output_keep: bytes of unread output kept per stream (default
                8 MiB, 64 KiB .. 1 GiB). Kept in a spool file in the runner's
                state dir (under its ``--output-cap`` for all sandboxes), not
                in the runner's memory.
            isolation: ``"container"`` (namespaces, the default unless the
                runner was started with ``--default-isolation microvm``) or
                ``"microvm"``: a QEMU microVM with its own kernel, whose
                :meth:`snapshot` is a memory checkpoint (running processes
                resume on restore). ``resources.cpu`` is its vCPUs (rounded
                up) and ``resources.memory`` its RAM (default 256 MiB).
                Raises SandboxError naming what is missing where the host
                cannot run microVMs. See docs/architecture.md, "MicroVM tier".

        Raises:
            TypeError / ValueError: bad arguments (nothing was sent).
            SpawnError: the command could not be started (the message names it).
            NotFoundError: unknown image or volume.
            RunnerUnavailableError: no runner could be reached or started.

        Example:
            >>> sb = Sandbox.create("echo hi; exit 3")            # doctest: +SKIP
            >>> sb.wait(), sb.stdout.read()                        # doctest: +SKIP
            (3, 'hi\\n')
            >>> sb.terminate()                                     # doctest: +SKIP
        """
        argv = _validate.command(cmd, what="cmd")
        if output_policy not in ("drop_oldest", "block"):
            raise ValueError(f"output_policy must be 'drop_oldest' or 'block', got {output_policy!r}")
        if output_keep is not None and (isinstance(output_keep, bool) or not isinstance(output_keep, int)
                                        or not 64 << 10 <= output_keep <= 1 << 30):
            raise ValueError(f"output_keep must be an int of bytes from 65536 to 1073741824, got {output_keep!r}")
        res = resources_wire(resources)
        net = network_wire(network)
        port_list = ports_wire(ports)
        if image is None:
            image_spec = None
        elif isinstance(image, Image):
            image_spec = image.spec
        else:
            raise TypeError(
                f"image must be a sandlot.Image (Image.host(), Image.from_directory(path), Image.named(name)) "
                f"or None, got {type(image).__name__}"
            )
        if isinstance(secrets, Secret):
            raise TypeError("secrets takes a list of Secret objects: secrets=[secret]")
        if not isinstance(secrets, (list, tuple)):
            raise TypeError(f"secrets must be a list of sandlot.Secret, got {type(secrets).__name__}")
        secret_env: dict[str, str] = {}
        for i, s in enumerate(secrets):
            if not isinstance(s, Secret):
                raise TypeError(
                    f"secrets[{i}] must be a sandlot.Secret (Secret.from_dict(...)), got {type(s).__name__}"
                )
            secret_env.update(s._values())
        vols: dict[str, str] = {}
        if volumes is not None:
            if not isinstance(volumes, Mapping):
                raise TypeError(
                    f"volumes must be a mapping of mount path -> sandlot.Volume, got {type(volumes).__name__}"
                )
            for path, vol in volumes.items():
                p = _validate.abs_path(path, "volume mount path")
                if p == "/":
                    raise ValueError("a volume cannot be mounted on '/'; pick a directory such as '/mnt/data'")
                if not isinstance(vol, Volume):
                    raise TypeError(
                        f"volumes[{p!r}] must be a sandlot.Volume (Volume.from_name(...)), got {type(vol).__name__}"
                    )
                vols[p] = vol.name
        t = _validate.sandbox_timeout(timeout)
        env_map = _validate.env(env)
        wd = _validate.abs_path(workdir, "workdir", optional=True)
        mounts: dict[str, str] = {}
        if mounted_files is not None:
            if not isinstance(mounted_files, Mapping):
                raise TypeError(
                    "mounted_files must be a mapping of path inside -> host path, "
                    f"got {type(mounted_files).__name__}"
                )
            for inside, host in mounted_files.items():
                p = _validate.abs_path(inside, "mounted_files path inside the sandbox")
                if p == "/":
                    raise ValueError("mounted_files cannot mount over '/'")
                h = os.fspath(host)
                if not isinstance(h, str) or not h:
                    raise TypeError(f"mounted_files[{p!r}] must be a host path (str), got {host!r}")
                mounts[p] = os.path.abspath(h)
        s3_wire = s3_mounts_wire(s3_mounts)
        if snapshot is not None and not isinstance(snapshot, SandboxSnapshot):
            raise TypeError(
                "snapshot must be a sandlot.SandboxSnapshot (sb.snapshot() or SandboxSnapshot.lookup(id)), "
                f"got {type(snapshot).__name__}"
            )
        sess = _resolve(session)
        yield from sess._ensure()
        if isinstance(image, Image) and image._needs_build():
            # Chained image: build (or find cached) layers, start from the top one.
            if snapshot is not None:
                raise ValueError("give either snapshot= or a built Image (with steps), not both")
            built = yield Blocking(lambda: image.build(session=sess))
            image_spec = built.base if built.snapshot_id is None else None
            if built.snapshot_id is not None:
                snapshot = SandboxSnapshot(built.snapshot_id, _session=sess)
            env_map = {**built.env, **env_map}
            wd = wd if wd is not None else built.workdir
        body = {
            "cmd": argv,
            "image": image_spec,
            "env": env_map,
            "secrets": secret_env,
            "workdir": wd,
            "timeout": t,
            "volumes": vols,
        }
        if isolation is not None and isolation not in ("container", "microvm"):
            raise ValueError(f"isolation must be 'container' or 'microvm', got {isolation!r}")
        if snapshot is not None and snapshot.kind == "memory":
            if isolation == "container":
                raise ValueError(
                    f"snapshot {snapshot.snapshot_id} is a memory checkpoint of a microVM; it resumes only as a "
                    "microVM (leave isolation out)"
                )
            isolation = "microvm"
        if isolation is None:
            isolation = yield from sess._default_isolation()
        body["isolation"] = isolation
        if snapshot is not None:
            body["snapshot"] = snapshot.snapshot_id
        if snapshot is None and image_spec in (None, "host") and isolation != "microvm":
            # The host image promises the client's own Python and sandlot
            # inside; where they live under a directory sandboxes mask (a
            # pyenv under /root, a checkout under /tmp), bind them read-only.
            taken = list(mounts) + list(vols)
            for p in _interpreter_mounts(image_spec):
                if not any(p == t or p.startswith(t.rstrip("/") + "/") for t in taken):
                    mounts[p] = p
        if mounts:
            body["mounts"] = mounts
        if res:
            body["resources"] = res
        if net:
            body["network"] = net
        if port_list:
            body["ports"] = port_list
        if s3_wire:
            body["s3_mounts"] = s3_wire
        if output_policy != "drop_oldest":
            body["output_policy"] = output_policy
        if output_keep is not None:
            body["output_keep"] = output_keep
        try:
            resp = yield sess.request("POST", "/v1/sandboxes", body, timeout=CREATE_TIMEOUT)
        except SandboxError as exc:
            scrubbed = _scrub(exc, list(secret_env.values()) + s3_secrets_of(s3_wire))
            if scrubbed is exc:
                raise
            raise scrubbed from None
        info = SandboxInfo.from_wire(resp["sandbox"])
        log.debug("created %s (cmd %s)", info.sandbox_id, info.cmd)
        return cls(info.sandbox_id, session=sess, info=info)

    @classop
    def lookup(cls: type[Sandbox], sandbox_id: str, *, session: Session | None = None) -> Op[Sandbox]:
        """The sandbox with this id, from any process talking to the same runner.

        Raises NotFoundError if the id is unknown or the sandbox was terminated.

        Example:
            >>> sb = Sandbox.lookup("sb-0123456789abcdef")        # doctest: +SKIP
        """
        sid = _validate.sandbox_id(sandbox_id)
        sess = _resolve(session)
        yield from sess._ensure()
        resp = yield sess.request("GET", f"/v1/sandboxes/{sid}")
        info = SandboxInfo.from_wire(resp["sandbox"])
        return cls(info.sandbox_id, session=sess, info=info)

    @classop
    def list(cls: type[Sandbox], *, session: Session | None = None) -> Op[builtins.list[Sandbox]]:
        """Every sandbox the runner holds (running or ended, not terminated), oldest first.

        Example:
            >>> [(sb.sandbox_id, sb.info().status) for sb in Sandbox.list()]   # doctest: +SKIP
            [('sb-0123456789abcdef', 'running')]
        """
        sess = _resolve(session)
        yield from sess._ensure()
        resp = yield sess.request("GET", "/v1/sandboxes")
        out = []
        for d in resp["sandboxes"]:
            info = SandboxInfo.from_wire(d)
            out.append(cls(info.sandbox_id, session=sess, info=info))
        return out

    # -- state --------------------------------------------------------------------
    @op
    def info(self) -> Op[SandboxInfo]:
        """Fresh :class:`SandboxInfo` from the runner (NotFoundError once terminated)."""
        resp = yield self._session.request("GET", f"/v1/sandboxes/{self.sandbox_id}")
        info = SandboxInfo.from_wire(resp["sandbox"])
        self._remember(info)
        return info

    @property
    def status(self) -> str:
        """The current status (asks the runner; ``"terminated"`` once terminated).

        asyncio code should use ``(await sb.info.aio()).status`` instead.
        """
        try:
            return self.info().status
        except NotFoundError:
            if self._info is not None and self._info.status != "running":
                return self._info.status
            return "terminated"

    def _remember(self, info: SandboxInfo) -> None:
        self._info = info
        if info.status != "running" and self.returncode is None:
            self.returncode = _final_code(info.status, info.exit_code)

    def __repr__(self) -> str:
        parts = [f"sandbox_id={self.sandbox_id!r}"]
        if self._info is not None:
            if self._info.cmd is not None:
                parts.append(f"cmd={list(self._info.cmd)!r}")
            if self._info.image != "host":
                parts.append(f"image={self._info.image!r}")
        if self.returncode is not None:
            parts.append(f"returncode={self.returncode}")
        return f"Sandbox({', '.join(parts)})"

    @op
    def tunnels(self) -> Op[dict[int, Tunnel]]:
        """The ports given to ``create(ports=...)``: ``{container_port: Tunnel}``.

        Each :class:`sandlot.Tunnel` has ``host`` (``127.0.0.1``), ``port`` (an
        ephemeral port on the runner's host), ``url`` and unpacks as
        ``host, port``. Empty once the sandbox has ended (the tunnels close
        with it). The host is the runner's: for a runner reached over TCP from
        another machine, the tunnels are on that machine's loopback.

        Example:
            >>> sb = Sandbox.create("python3 -m http.server 8000", ports=[8000])   # doctest: +SKIP
            >>> urllib.request.urlopen(sb.tunnels()[8000].url).status               # doctest: +SKIP
            200
        """
        resp = yield self._session.request("GET", f"/v1/sandboxes/{self.sandbox_id}/tunnels")
        out: dict[int, Tunnel] = {}
        for t in resp.get("tunnels") or ():
            tun = Tunnel(int(t["container_port"]), str(t["host"]), int(t["port"]))
            out[tun.container_port] = tun
        return out

    # -- lifecycle ------------------------------------------------------------------
    @op
    def wait(self, timeout: float | None = None) -> Op[int]:
        """Block until the entry command exits; return its exit code.

        ``-N`` means killed by signal N; a sandbox killed by its timeout or by
        :meth:`terminate` reports -9. Raises the builtin TimeoutError if
        ``timeout`` seconds pass first (the sandbox keeps running). Waits as a
        series of server long-polls of at most 30 s each.

        Example:
            >>> Sandbox.create("exit 7").wait()                    # doctest: +SKIP
            7
            >>> await (await Sandbox.create.aio("exit 7")).wait.aio()   # doctest: +SKIP
            7
        """
        limit = _validate.wait_timeout(timeout)
        if self.returncode is not None:
            return self.returncode
        resp = yield from _long_wait(self._session, f"/v1/sandboxes/{self.sandbox_id}/wait", limit)
        if resp is _TIMED_OUT:
            raise TimeoutError(f"sandbox {self.sandbox_id} still running after {timeout} s")
        self.returncode = _final_code(str(resp.get("status", "")), resp.get("exit_code"))
        return self.returncode

    @op
    def poll(self) -> Op[int | None]:
        """The entry command's exit code if it has finished, else None. Does not block."""
        if self.returncode is not None:
            return self.returncode
        resp = yield from _long_wait(self._session, f"/v1/sandboxes/{self.sandbox_id}/wait", 0.0)
        if resp is _TIMED_OUT:
            return None
        self.returncode = _final_code(str(resp.get("status", "")), resp.get("exit_code"))
        return self.returncode

    @op
    def terminate(self) -> Op[None]:
        """Stop the sandbox now, kill every process in it, and remove it from the runner.

        Idempotent: terminating an already terminated sandbox does nothing.
        Its output can no longer be read afterwards.
        """
        try:
            resp = yield self._session.request(
                "POST", f"/v1/sandboxes/{self.sandbox_id}/terminate", {}, timeout=CREATE_TIMEOUT
            )
        except NotFoundError:
            log.debug("terminate %s: already gone", self.sandbox_id)
            if self.returncode is None:
                self.returncode = -9
            return
        self._remember(SandboxInfo.from_wire(resp["sandbox"]))
        log.debug("terminated %s", self.sandbox_id)

    @op
    def snapshot(self) -> Op[SandboxSnapshot]:
        """Capture the running sandbox's filesystem as a :class:`SandboxSnapshot`.

        The sandbox's processes are frozen while its written files are copied
        (so the capture is consistent) and keep running afterwards. The
        snapshot records the image, env, workdir and entry command, and lives
        in the runner's state dir until deleted. ``kind`` is ``"filesystem"``:
        processes and memory are not captured (see :mod:`sandlot.snapshot`).

        Raises:
            SandboxNotRunningError: the sandbox has ended.
            NotFoundError: unknown sandbox.
        """
        resp = yield self._session.request(
            "POST", f"/v1/sandboxes/{self.sandbox_id}/snapshot", {}, timeout=SNAPSHOT_TIMEOUT
        )
        snap = SandboxSnapshot._from_wire(resp["snapshot"], self._session)
        log.debug("snapshot %s of %s", snap.snapshot_id, self.sandbox_id)
        return snap

    # -- processes ------------------------------------------------------------------
    @op
    def exec(
        self,
        cmd: object = (),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
    ) -> Op[SandboxProcess]:
        """Run another command inside this sandbox and return its process handle.

        Shares the filesystem and the process namespace with the entry command
        and earlier execs. ``cmd`` is a list/tuple of str or a shell string.

        Raises SandboxNotRunningError if the sandbox ended, SpawnError if the
        command cannot be started.

        Example:
            >>> p = sb.exec(["ls", "/"])                           # doctest: +SKIP
            >>> p.wait(), "etc" in p.stdout.read().split()         # doctest: +SKIP
            (0, True)
        """
        argv = _validate.command(cmd, what="cmd")
        if argv is None:
            raise ValueError("exec() needs a command, e.g. sb.exec(['ls', '-l']) or sb.exec('ls -l')")
        env_map = _validate.env(env)
        wd = _validate.abs_path(workdir, "workdir", optional=True)
        resp = yield self._session.request(
            "POST",
            f"/v1/sandboxes/{self.sandbox_id}/exec",
            {"cmd": argv, "env": env_map, "workdir": wd},
            timeout=CREATE_TIMEOUT,
        )
        return SandboxProcess(self._session, ProcessInfo.from_wire(resp["process"]))

    @op
    def processes(self) -> Op[builtins.list[ProcessInfo]]:
        """:class:`ProcessInfo` of every process started in the sandbox (0: entry command)."""
        resp = yield self._session.request("GET", f"/v1/sandboxes/{self.sandbox_id}/procs")
        return [ProcessInfo.from_wire(p) for p in resp["processes"]]

    def _entry_process(self) -> SandboxProcess:
        if self._entry is None:
            cmd = self._info.cmd if self._info is not None and self._info.cmd is not None else ()
            info = ProcessInfo(0, self.sandbox_id, tuple(cmd), "running", None, None)
            self._entry = SandboxProcess(self._session, info)
        return self._entry

    @property
    def stdout(self) -> OutputStream:
        """stdout of the entry command."""
        return self._entry_process().stdout

    @property
    def stderr(self) -> OutputStream:
        """stderr of the entry command."""
        return self._entry_process().stderr

    @property
    def stdin(self) -> InputStream:
        """stdin of the entry command."""
        return self._entry_process().stdin

    # -- files ----------------------------------------------------------------------
    @op
    def read_file(self, path: str) -> Op[bytes]:
        """The contents of the file at absolute ``path`` inside the sandbox (at most 64 MiB).

        Raises NotFoundError if there is no such file.

        Example:
            >>> sb.read_file("/etc/hostname")                      # doctest: +SKIP
            b'sb-0123456789abcdef\\n'
        """
        p = _validate.abs_path(path, "path")
        if (yield from self._is_microvm()):
            return (yield from self._guest_read(p))
        resp = yield self._session.request("POST", f"/v1/sandboxes/{self.sandbox_id}/files/read", {"path": p})
        return bytes(resp["data"])

    @op
    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> Op[int]:
        """Write ``data`` (str is encoded as UTF-8) to absolute ``path`` inside the sandbox.

        Creates or replaces the file with permission bits ``mode``; the parent
        directory must exist. Returns the number of bytes written.

        Example:
            >>> sb.write_file("/tmp/hello.txt", "hi\\n")           # doctest: +SKIP
            3
        """
        p = _validate.abs_path(path, "path")
        if isinstance(data, str):
            raw = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise TypeError(f"data must be bytes or str, got {type(data).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"mode must be an int such as 0o644, got {type(mode).__name__}")
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"mode must be permission bits between 0 and 0o7777, got {oct(mode)}")
        if (yield from self._is_microvm()):
            return (yield from self._guest_write(p, raw, mode))
        resp = yield self._session.request(
            "POST", f"/v1/sandboxes/{self.sandbox_id}/files/write", {"path": p, "data": raw, "mode": mode}
        )
        return int(resp.get("written", len(raw)))

    # -- microVM file access ---------------------------------------------------------
    # A microVM's filesystem lives inside the guest (the runner cannot open
    # it from the host), so files move through a process in the guest: cat
    # for reading, cat > path for writing, the same exec path as any command.
    def _is_microvm(self) -> Op[bool]:
        if self._info is None or self._info.isolation is None:
            resp = yield self._session.request("GET", f"/v1/sandboxes/{self.sandbox_id}")
            self._info = SandboxInfo.from_wire(resp["sandbox"])
        return self._info.isolation == "microvm"

    def _guest_read(self, path: str) -> Op[bytes]:
        proc = yield from self.exec.gen(["/bin/sh", "-c", 'test -f "$1" && exec cat -- "$1"; echo "$1: no such file" >&2; exit 2', "sh", path])
        data = yield from proc.stdout.read_bytes.gen()
        err = yield from proc.stderr.read.gen()
        code = yield from proc.wait.gen()
        if code == 2 and "no such file" in err:
            raise NotFoundError(f"no file {path} in {self.sandbox_id}", status=404)
        if code != 0:
            raise SandboxError(f"reading {path} in {self.sandbox_id} failed: {err.strip()}", status=500)
        return data

    def _guest_write(self, path: str, raw: bytes, mode: int) -> Op[int]:
        script = 'cat > "$1" && chmod "$2" "$1"'
        proc = yield from self.exec.gen(["/bin/sh", "-c", script, "sh", path, oct(mode)[2:]])
        if raw:
            yield from proc.stdin.write.gen(raw)
        yield from proc.stdin.close.gen()
        err = yield from proc.stderr.read.gen()
        code = yield from proc.wait.gen()
        if code != 0:
            if "No such file" in err:
                raise NotFoundError(f"cannot write {path} in {self.sandbox_id}: {err.strip()}", status=404)
            raise SandboxError(f"writing {path} in {self.sandbox_id} failed: {err.strip()}", status=500)
        return len(raw)

    # -- context managers ---------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.terminate.aio()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and other.sandbox_id == self.sandbox_id

    def __hash__(self) -> int:
        return hash(self.sandbox_id)
