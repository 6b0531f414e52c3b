"""Snapshots: a sandbox's filesystem captured so new sandboxes start from it.

``sb.snapshot()`` captures everything written, installed or deleted since the
sandbox's image (the overlay's upper layer) into the runner's state dir, as one
read-only EROFS image file (``storage == "erofs"``), or as a directory copy on
hosts that cannot mount one (``"dir"``). The sandbox keeps running during the
bulk of the work and is frozen only briefly, so the layer is its filesystem at
one instant. ``Sandbox.create(snapshot=snap)`` then
starts a sandbox whose root is that layer (and its parents' layers) over the
same image, with a fresh writable layer on top: sandboxes started from one
snapshot never see each other's writes. Snapshots persist across runner
restarts until deleted.

What comes back is the **filesystem** (``kind == "filesystem"``) plus the
recorded env, workdir and entry command; running processes, their memory and
the contents of tmpfs mounts (``/tmp``, ``/run``, ``/dev/shm``, and ``/root``
and ``/home`` on the host image) do not. A memory checkpoint needs CRIU and a
host where ``criu check`` passes; :func:`criu_check` tells whether this one
does (this project's reference host, Debian bookworm's criu 3.17 on kernel
6.18, does not), so containers never get ``kind == "memory"`` snapshots.

**MicroVM sandboxes** (``Sandbox.create(..., isolation="microvm")``) do:
their ``snapshot()`` is a memory checkpoint (``kind == "memory"``,
``storage == "vm"``): vCPUs paused, guest RAM and device state saved (the
writable layer is a tmpfs in guest RAM, so the files come along), then the
sandbox continues. ``Sandbox.create(snapshot=snap)`` resumes it: every
process is where it was, with its memory, open files and listening sockets;
restores map the saved RAM copy-on-write, so they are lazy and share pages.
The resumed processes' stdout/stderr are detached (what they print after the
restore is dropped): talk to them over sockets, files or new ``exec`` calls.

Example:
    >>> sb = Sandbox.create()                                  # doctest: +SKIP
    >>> sb.exec("pip install requests").wait()                 # doctest: +SKIP
    >>> snap = sb.snapshot()                                   # doctest: +SKIP
    >>> sb2 = Sandbox.create(snapshot=snap)                    # doctest: +SKIP
    >>> SandboxSnapshot.lookup(snap.snapshot_id).delete()      # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._aio import Op, classop, op
from .session import Session, _resolve

__all__ = ["SandboxSnapshot", "criu_check"]

_ID_RE = re.compile(r"sn-[0-9a-f]{16}")

#: Capturing copies the sandbox's written files; big trees take a while.
SNAPSHOT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class SandboxSnapshot:
    """A captured sandbox filesystem, restorable with ``Sandbox.create(snapshot=...)``.

    Attributes:
        snapshot_id: ``"sn-"`` + 16 hex digits; pass it to :meth:`lookup`.
        kind: ``"filesystem"`` (containers) or ``"memory"`` (microVMs: a
            memory checkpoint whose restore resumes the running processes).
        storage: how the runner stores the layer: ``"erofs"`` (one read-only
            EROFS image file, mounted for restores; the fast capture) or
            ``"dir"`` (a directory copy: hosts whose kernel cannot mount an
            erofs image file, a runner started with ``--snapshot-storage dir``,
            or a tree whose sparse files hold more than 64 MiB of holes).
        image: the image the sandbox ran; a restore always uses it.
        env, workdir, cmd: what the snapshotted sandbox was created with; a
            restore uses them unless ``Sandbox.create`` is given its own
            (``env`` is merged, the new values winning).
        parent: the snapshot the sandbox itself was restored from, or None.
        label: a tag given at capture (the image builder's layer cache key), or None.
        sandbox_id: the sandbox it was taken from.
        created_at: unix time. capture_seconds: how long the sandbox was frozen.
        size: bytes the snapshot takes on disk (memory snapshots: the touched
            guest RAM plus device state), or None when the runner did not say.
    """

    snapshot_id: str
    kind: str = "filesystem"
    image: str = "host"
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    cmd: tuple[str, ...] | None = None
    parent: str | None = None
    label: str | None = None
    sandbox_id: str | None = None
    created_at: float | None = None
    capture_seconds: float | None = None
    storage: str = "dir"
    size: float | None = None
    _session: Session | None = field(default=None, compare=False, repr=False)

    @classmethod
    def _from_wire(cls, d: Mapping[str, Any], session: Session | None) -> SandboxSnapshot:
        cmd = d.get("cmd")
        return cls(
            snapshot_id=d["snapshot_id"],
            kind=d.get("kind", "filesystem"),
            storage=d.get("storage", "dir"),
            image=d.get("image", "host"),
            env=dict(d.get("env") or {}),
            workdir=d.get("workdir"),
            cmd=tuple(cmd) if cmd is not None else None,
            parent=d.get("parent"),
            label=d.get("label"),
            sandbox_id=d.get("sandbox_id"),
            created_at=d.get("created_at"),
            capture_seconds=d.get("capture_seconds"),
            size=d.get("size") or None,
            _session=session,
        )

    @classop
    def lookup(
        cls: type[SandboxSnapshot], snapshot_id: str, *, session: Session | None = None
    ) -> Op[SandboxSnapshot]:
        """The snapshot with this id. Raises NotFoundError (naming it) if it is unknown or deleted."""
        if not isinstance(snapshot_id, str):
            raise TypeError(f"snapshot_id must be a str, got {type(snapshot_id).__name__}")
        if not _ID_RE.fullmatch(snapshot_id):
            raise ValueError(f"invalid snapshot id {snapshot_id!r}: snapshot ids look like 'sn-' + 16 hex digits")
        sess = _resolve(session)
        yield from sess._ensure()
        resp = yield sess.request("GET", f"/v1/snapshots/{snapshot_id}")
        return cls._from_wire(resp["snapshot"], sess)

    @classop
    def list(cls: type[SandboxSnapshot], *, session: Session | None = None) -> Op[builtins.list[SandboxSnapshot]]:
        """Every snapshot the runner keeps, oldest first."""
        sess = _resolve(session)
        yield from sess._ensure()
        resp = yield sess.request("GET", "/v1/snapshots")
        return [cls._from_wire(d, sess) for d in resp["snapshots"]]

    @op
    def delete(self) -> Op[None]:
        """Delete the snapshot. Raises NotFoundError if it is gone, and
        SandboxNotRunningError (409) while a running sandbox uses it or another
        snapshot was taken on top of it."""
        sess = _resolve(self._session)
        yield from sess._ensure()
        yield sess.request("POST", f"/v1/snapshots/{self.snapshot_id}/delete", {})


def criu_check(timeout: float = 30.0) -> tuple[bool, str]:
    """Can this host take memory checkpoints with CRIU? ``(ok, why)``.

    Runs ``criu check`` (CRIU's own test of the kernel features it needs).
    ``ok`` is False with the reason when criu is not installed or the check
    fails, as it does with Debian bookworm's criu 3.17 on kernel 6.18.
    """
    exe = os.environ.get("SANDLOT_CRIU") or shutil.which("criu")
    if exe is None:
        return False, "criu is not installed"
    try:
        p = subprocess.run([exe, "check"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"criu check could not run: {exc}"
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        lines = out.splitlines()
        detail = lines[0] if len(lines) == 1 else (f"{lines[0]} ... {lines[-1]}" if lines else "")
        return False, f"criu check failed (exit {p.returncode}): {detail}"
    return True, out or "Looks good."
