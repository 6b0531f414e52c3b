"""Resource limits of a sandbox: ``Sandbox.create(resources=...)`` and
``RemoteFunction(resources=...)``.

``ResourceOptions(cpu=0.5, memory="512Mi", pids=256, disk="1Gi")`` or the same
keys in a dict. The runner enforces them with cgroups (v1 or v2) and a
size-capped writable layer:

* ``cpu``: cores (float, 0.01-1024); a CPU hog is throttled to that share
  (CFS quota over a 100 ms period).
* ``memory``: MiB (int) or a string with a unit (``"512Mi"``, ``"1Gi"``,
  ``"256M"``); swap is not allowed on top. A process that goes over it is
  killed by the kernel's OOM killer inside the sandbox: it exits with -9 and
  ``proc.oom_killed`` / ``sb.info().oom_killed`` are ``True``.
* ``pids``: most processes and threads at once; ``fork`` then fails with
  EAGAIN.
* ``disk``: size of the writable layer (MiB or a string). Files written
  outside ``/tmp``, ``/run``, ``/var/tmp``, ``/dev/shm``, ``/root``, ``/home``
  and volumes land in it; when it is full writes fail with ENOSPC. It lives in
  memory (a tmpfs), so what is written also counts against ``memory``.
* ``gpu``: GPUs held for the sandbox's whole life: a count (``1``), a type
  (``"A100"``, one of them) or type and count (``"A100:2"``, Modal's
  spelling). Each is one of the devices the runner was started with
  (``sandlotd --gpu /dev/nvidia0[=A100]`` or ``--gpu auto``), bound into the
  sandbox's ``/dev`` with the vendor's control nodes; sandboxes that asked for
  none have no GPU node. A runner without GPUs refuses the request (400); one
  whose GPUs are all held refuses the create (503) until one ends. On a
  cluster, placement counts them against each node's Ray ``GPU`` resource.

``memory_mb`` and ``disk_mb`` are accepted as other spellings of ``memory``
and ``disk`` (MiB).

``sandlot runner status`` (``GET /v1/health`` ``"limits"``) says which of
them the runner's host can enforce; asking for one it cannot fails the
create instead of running unlimited.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ResourceOptions"]

_KEYS = ("cpu", "memory", "pids", "disk", "gpu", "memory_mb", "disk_mb")
# Spellings other APIs use, read as MiB; the runner takes them too, so the
# stored options keep the caller's key.
_ALIASES = {"memory_mb": "memory", "disk_mb": "disk"}
_MAX_MIB = 1 << 24
_UNITS = {
    "": 1.0,
    "b": 1.0 / (1 << 20),
    "k": 1000.0 / (1 << 20),
    "kb": 1000.0 / (1 << 20),
    "ki": 1.0 / 1024,
    "kib": 1.0 / 1024,
    "m": 1e6 / (1 << 20),
    "mb": 1e6 / (1 << 20),
    "mi": 1.0,
    "mib": 1.0,
    "g": 1e9 / (1 << 20),
    "gb": 1e9 / (1 << 20),
    "gi": 1024.0,
    "gib": 1024.0,
    "t": 1e12 / (1 << 20),
    "tb": 1e12 / (1 << 20),
    "ti": 1024.0 * 1024,
    "tib": 1024.0 * 1024,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _mib(name: str, v: Any, minimum: int) -> int:
    """A size in MiB from an int (MiB) or a string with a unit."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise TypeError(f"resources.{name} must be MiB (int) or a size string like '512Mi' or '1Gi', got {v!r}")
    if isinstance(v, str):
        m = _SIZE_RE.match(v)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"resources.{name}: cannot read {v!r} as a size; write MiB as an int (512) or a string "
                "with a unit: '512Mi', '1Gi', '256M', '2G'"
            )
        mib = float(m.group(1)) * _UNITS[unit]
    else:
        mib = float(v)
    if mib != mib or mib < minimum or mib > _MAX_MIB:
        raise ValueError(f"resources.{name} must be between {minimum} MiB and 16 TiB, got {v!r}")
    # Round up: a limit is never smaller than what was asked.
    whole = int(mib)
    return whole if whole == mib else whole + 1


@dataclass(frozen=True)
class ResourceOptions:
    """Resource limits of one sandbox (or of each worker of a function).

    Every field defaults to ``None`` (no limit). See :mod:`sandlot.resources`.
    """

    cpu: float | None = None
    memory: int | str | None = None
    pids: int | None = None
    disk: int | str | None = None
    gpu: Any = None

    def __post_init__(self) -> None:
        _to_wire(dataclasses.asdict(self))  # validate at construction

    def to_wire(self) -> dict[str, Any]:
        """The runner's form: cpu in cores, memory and disk in MiB."""
        return _to_wire(dataclasses.asdict(self))


def _to_wire(d: Mapping[str, Any]) -> dict[str, Any]:
    unknown = [k for k in d if k not in _KEYS]
    if unknown:
        raise ValueError(
            f"resources: unknown key(s) {', '.join(map(repr, unknown))}; expected cpu, memory, pids, disk, gpu"
        )
    for alias, key in _ALIASES.items():
        if d.get(alias) is not None and d.get(key) is not None:
            raise ValueError(f"resources: give {key} or {alias}, not both")
    out: dict[str, Any] = {}
    cpu = d.get("cpu")
    if cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)):
            raise TypeError(f"resources.cpu must be a number of cores (e.g. 0.5 or 2), got {cpu!r}")
        if not 0.01 <= float(cpu) <= 1024:
            raise ValueError(f"resources.cpu must be between 0.01 and 1024 cores, got {cpu!r}")
        out["cpu"] = float(cpu)
    for k in ("memory", "memory_mb"):
        if d.get(k) is not None:
            out[k] = _mib(k, d[k], 4)
    pids = d.get("pids")
    if pids is not None:
        if isinstance(pids, bool) or not isinstance(pids, int):
            raise TypeError(f"resources.pids must be an int (most processes at once), got {pids!r}")
        if not 1 <= pids <= 4194304:
            raise ValueError(f"resources.pids must be between 1 and 4194304, got {pids!r}")
        out["pids"] = pids
    for k in ("disk", "disk_mb"):
        if d.get(k) is not None:
            out[k] = _mib(k, d[k], 1)
    gpu = d.get("gpu")
    if gpu is not None and gpu is not False and gpu != 0:
        out["gpu"] = _gpu(gpu)
    return out


_GPU_TYPE = re.compile(r"[A-Za-z0-9_.+-]{1,31}")


def _gpu(gpu: Any) -> int | str:
    """``gpu``: a count, ``"TYPE"`` or ``"TYPE:N"``, checked as the runner does."""
    if isinstance(gpu, bool) or not isinstance(gpu, (int, str)):
        raise TypeError(f"resources.gpu must be a count (int) or a GPU type string like 'A100' or 'A100:2', "
                        f"got {gpu!r}")
    if isinstance(gpu, int):
        if not 0 <= gpu <= 64:
            raise ValueError(f"resources.gpu must be between 0 and 64, got {gpu!r}")
        return gpu
    kind, sep, count = gpu.partition(":")
    if not _GPU_TYPE.fullmatch(kind) or (sep and not (count.isdigit() and 1 <= int(count) <= 64)):
        raise ValueError(f"resources.gpu must be a count, a GPU type ('A100') or type:count ('A100:2'), "
                         f"got {gpu!r}")
    return gpu


def gpu_count(v: Any) -> int:
    """How many GPUs a ``resources.gpu`` value (wire form) asks for."""
    if v is None or v is False:
        return 0
    if isinstance(v, int):
        return v
    kind, sep, count = str(v).partition(":")
    return int(count) if sep else 1


def resources_wire(v: Any) -> dict[str, Any] | None:
    """Validate ``resources=`` (``ResourceOptions``, dict or None) into the
    runner's form, or raise TypeError/ValueError saying what to fix."""
    if v is None:
        return None
    if isinstance(v, ResourceOptions):
        return v.to_wire()
    if isinstance(v, Mapping):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"resources keys must be str (cpu, memory, pids, disk, gpu), got {list(v)!r}")
        return _to_wire(v)
    raise TypeError(
        f"resources must be a sandlot.ResourceOptions or a dict with cpu/memory/pids/disk, got {type(v).__name__}"
    )
