"""Ids, outcomes and runners: the small parts a cluster session routes with.

* ids: ``<runner tag>.<the runner's own id>`` outside, the runner's own id on
  the wire to it (:func:`split_id`, ``_tagger``);
* :func:`relay`: a ``_core.Promise`` completed with any Python value or
  exception, which is how forwarded requests turn a broken connection into
  :class:`sandlot.NodeLostError`;
* :class:`Placement` (a session's constraints) and ``_Runner`` (one live
  runner as a client sees it: address, session, load for placement).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _core, errors
from ..resources import gpu_count
from ..session import Session

_ID_KEYS = ("sandbox_id", "snapshot_id", "parent")
_LOCAL_PREFIXES = ("sb-", "sn-")


def parse_cluster_url(url: str) -> str | None:
    """The Ray address for a cluster URL, or None if ``url`` is not one.

    ``"ray"`` means ``$RAY_ADDRESS`` or ``"auto"``; ``"ray://host:port"`` is a
    Ray Client address; ``"ray+gcs://host:port"`` connects as a driver to the
    GCS at host:port.

    Example:
        >>> parse_cluster_url("ray://head:10001"), parse_cluster_url("ray+gcs://10.0.0.1:6379")
        ('ray://head:10001', '10.0.0.1:6379')
        >>> parse_cluster_url("http://x:1") is None
        True
    """
    if not isinstance(url, str):
        return None
    if url == "ray":
        return os.environ.get("RAY_ADDRESS") or "auto"
    if url.startswith("ray://"):
        return url
    if url.startswith("ray+gcs://"):
        return url[len("ray+gcs://"):]
    return None


def split_id(cid: str) -> tuple[str | None, str]:
    """``("n-3f2a9c1e0b7d", "sb-0123")`` for ``"n-3f2a9c1e0b7d.sb-0123"``; ``(None, cid)`` if untagged."""
    if cid.startswith("n-") and "." in cid:
        tag, local = cid.split(".", 1)
        return tag, local
    return None, cid


def _tagger(tag: str) -> Callable[[Any], Any]:
    def tag_ids(obj: Any) -> Any:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in _ID_KEYS and isinstance(v, str) and v.startswith(_LOCAL_PREFIXES):
                    obj[k] = f"{tag}.{v}"
                elif isinstance(v, (dict, list)):
                    tag_ids(v)
            if "sandbox_id" in obj and "node" not in obj and isinstance(obj.get("status"), str):
                obj["node"] = tag
        elif isinstance(obj, list):
            for v in obj:
                if isinstance(v, (dict, list)):
                    tag_ids(v)
        return obj

    return tag_ids


def relay(label: str, on_cancel: Callable[[], object] | None = None) -> tuple[Any, Callable[..., bool]]:
    """A Promise and ``settle(value=None, exc=None)`` that completes it with any
    Python value or exception (the outcome lives in the transform's closure, so
    it goes away with the ref)."""
    box: list[tuple[BaseException | None, Any]] = []
    lock = threading.Lock()

    def take(_: Any) -> Any:
        exc, val = box[0]
        if exc is not None:
            raise exc
        return val

    p = _core.Promise(label, take, on_cancel)

    def settle(value: Any = None, exc: BaseException | None = None) -> bool:
        with lock:
            if box or p.done():
                return False
            box.append((exc, value))
        return bool(p.complete(200, b""))

    return p, settle


@dataclass(frozen=True)
class Placement:
    """Where a cluster session may put sandboxes and function pools.

    ``runner_ids``: node tags (``"n-3f2a9c1e0b7d"``), Ray node ids, runner
    ids (``health()["runner_id"]``) or node IPs; None: any. ``tier``: an
    isolation tier the node must offer (``"container"`` everywhere; others,
    e.g. ``"vm"``, as a node declares them with the Ray resource
    ``sandlot-tier-vm`` or its runner reports them); None: any.

    Example:
        >>> Placement(runner_ids=("n-3f2a9c1e0b7d",)).runner_ids
        ('n-3f2a9c1e0b7d',)
    """

    runner_ids: tuple[str, ...] | None = None
    tier: str | None = None


class _Runner:
    """One live runner as this client knows it."""

    def __init__(self, entry: dict[str, Any], token: str, resources: dict[str, Any]) -> None:
        self.tag: str = entry["tag"]
        self.node_id: str = entry["node_id"]
        self.ip: str = entry["ip"]
        self.url: str = entry["url"]
        self.runner_id: str = str(entry.get("runner_id") or "")
        self.tiers: list[str] = list(entry.get("tiers") or ["container"])
        self.pid = entry.get("pid")
        self.state_dir = entry.get("state_dir")
        self.resources = resources
        self.session = Session(self.url, token, autostart=False)
        self.lost: errors.NodeLostError | None = None
        self.lock = threading.Lock()
        self.inflight: set[tuple[Any, Callable[..., bool]]] = set()
        # What runs there, as placement counts it: the last listing ({id: (cpu,
        # MiB, gpus)}, running ones), plus this client's creates the listing may
        # not show yet ([done time or None, cpu, MiB, id, gpus]), minus the
        # sandboxes it terminated since ({id: time}).
        self.listed: dict[str, tuple[float, float, float]] = {}
        self.local: list[list[Any]] = []
        self.gone: dict[str, float] = {}
        self.calls = 0  # function calls / map items this client has outstanding here

    def matches(self, name: str) -> bool:
        return name in (self.tag, self.node_id, self.runner_id, self.ip)

    @property
    def cpu_total(self) -> float:
        return float(self.resources.get("CPU", 0.0))

    @property
    def mem_total(self) -> float:
        return float(self.resources.get("memory", 0.0)) / (1 << 20)

    @property
    def gpu_total(self) -> float:
        """The GPUs the node declares to Ray (``ray start --num-gpus``, or found by Ray)."""
        return float(self.resources.get("GPU", 0.0))

    def _boxes(self) -> list[tuple[float, float, float]]:
        out = [v for k, v in self.listed.items() if k not in self.gone]
        out += [(x[1], x[2], x[4]) for x in self.local if x[3] not in self.listed and x[3] not in self.gone]
        return out

    def load(self) -> int:
        with self.lock:
            return len(self._boxes())

    def free(self) -> tuple[float, float, float]:
        """cpu, MiB and GPUs not reserved by the sandboxes running there."""
        with self.lock:
            boxes = self._boxes()
        return (self.cpu_total - sum(b[0] for b in boxes), self.mem_total - sum(b[1] for b in boxes),
                self.gpu_total - sum(b[2] for b in boxes))

    def listing(self, boxes: list[dict[str, Any]], sent: float) -> None:
        """Take a listing sent at ``sent`` (time.time()) as the new truth."""
        listed = {}
        for b in boxes:
            if b.get("status") == "running":
                res = b.get("resources") or {}
                listed[str(b.get("sandbox_id"))] = (float(res.get("cpu") or 0), float(res.get("memory") or 0),
                                                    float(gpu_count(res.get("gpu"))))
        with self.lock:
            self.listed = listed
            # Creates answered before the listing was asked for are in it (or ended).
            self.local = [x for x in self.local if x[0] is None or x[0] >= sent]
            self.gone = {k: t for k, t in self.gone.items() if t >= sent}

    def describe(self) -> str:
        cpu, mem, gpu = self.free()
        gpus = f"{gpu:g}/{self.gpu_total:g} gpu, " if self.gpu_total else ""
        return (f"{self.tag} ({self.ip}): {cpu:g}/{self.cpu_total:g} cpu, {mem:.0f}/{self.mem_total:.0f} MiB, "
                f"{gpus}free, tiers {'/'.join(self.tiers)}")

    def lost_error(self, why: str) -> errors.NodeLostError:
        return errors.NodeLostError(
            f"sandlot runner {self.tag} on node {self.ip} (Ray node {self.node_id[:16]}) was lost: {why}; "
            "its sandboxes have ended and its calls failed: create them again (they go to a live node) or "
            "give the function retries=N",
            node_id=self.node_id, node_ip=self.ip, runner=self.tag,
        )

    def __repr__(self) -> str:
        return f"<runner {self.tag} {self.url} {self.runner_id}>"
