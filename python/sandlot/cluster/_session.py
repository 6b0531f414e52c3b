"""ClusterSession: one client view of every sandlot runner of a Ray cluster.

Routing: a sandbox id (and a snapshot id) made through a cluster session is
``<runner tag>.<the runner's own id>``, e.g. ``n-3f2a9c1e0b7d.sb-0123456789abcdef``.
The tag is ``n-`` plus the first 12 hex digits of the Ray node id, so it
survives runner restarts, and the registry (held by the ``sandlot-supervisor``
actor, see ``_actors.py``) maps it to the runner's URL. Any client that can
reach the Ray cluster can therefore ``Sandbox.lookup`` any id. Each runner is
reached with its own ``sandlot._core.Client`` (a plain :class:`Session`); a
:class:`ClusterSession` rewrites paths and ids and forwards.

Placement (``POST /v1/sandboxes``): the runners allowed by the session's
:class:`Placement` (``runner_ids``, isolation ``tier``) whose node has the
requested ``cpu`` / ``memory`` free (node total from Ray minus the limits of
the sandboxes running there), preferring the node that holds the snapshot or
named image, else the one with the fewest sandboxes (spreading).

Node failure: a request that loses its connection to a runner, and every
request in flight to a runner whose node Ray reports dead (checked every
second), fails with :class:`sandlot.NodeLostError` naming the node.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .. import _core, errors
from ..session import REQUEST_TIMEOUT, Session
from ..resources import gpu_count
from ._routing import Placement, _Runner, _tagger, parse_cluster_url, relay, split_id

__all__ = ["ClusterSession", "Placement", "parse_cluster_url", "shutdown_cluster"]

log = logging.getLogger("sandlot.cluster")

#: How often the session re-reads the registry, node liveness and each runner's load.
REFRESH_PERIOD = 1.0
#: How long a new session waits for every live node to have a runner.
START_TIMEOUT = 90.0
class _Core:
    """State shared by a cluster session and its placement views."""

    def __init__(self, address: str, token: str | None, state_root: str | None, runner_args: list[str] | None,
                 start_timeout: float) -> None:
        import ray

        from . import _actors

        self.ray = ray
        self.actors = _actors
        if not ray.is_initialized():
            try:
                ray.init(address=address, namespace=_actors.NAMESPACE, logging_level=logging.WARNING,
                         log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise errors.RunnerUnavailableError(
                    f"cannot connect to the Ray cluster at {address!r}: {exc}; start one with `ray start --head` "
                    "(docs/cluster.md) or set RAY_ADDRESS / SANDLOT_URL=ray://host:port", code="unavailable"
                ) from None
        self.address = address
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        head = next((n["NodeID"] for n in ray.nodes()
                     if n.get("Alive") and "node:__internal_head__" in (n.get("Resources") or {})), None)
        # On the head if it can (it goes down last); anywhere else if it cannot.
        where = NodeAffinitySchedulingStrategy(head, soft=True) if head else "DEFAULT"
        try:
            ray.get_actor(_actors.SUPERVISOR, namespace=_actors.NAMESPACE)
            existed = True
        except ValueError:
            existed = False
        self.sup = _actors.SandlotSupervisorActor.options(
            name=_actors.SUPERVISOR, namespace=_actors.NAMESPACE, lifetime="detached", get_if_exists=True,
            max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=8, scheduling_strategy=where,
        ).remote(token or secrets.token_urlsafe(32), state_root or _actors.default_state_root(), runner_args)
        self.token: str = ray.get(self.sup.get_token.remote(), timeout=start_timeout)
        if token is not None and token != self.token:
            log.warning("this cluster already has a sandlot token; the one given was ignored")
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.runners: dict[str, _Runner] = {}
        self.dead: dict[str, _Runner] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="sandlot-cluster")
        self.functions: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.rr = itertools.count()
        self.closed = False
        self.wake = threading.Event()
        deadline = time.monotonic() + start_timeout
        while True:
            self.refresh(poke=True)
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            have = {r.node_id for r in self.runners.values()}
            # A new cluster: wait for every node's runner. One that has run
            # for a while: the runners there are enough (a node that cannot
            # start one must not hold up every client).
            if alive <= have or (existed and have) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not self.runners:
            raise errors.RunnerUnavailableError(
                f"no sandlot runner came up on the Ray cluster at {address} within {start_timeout:g} s; "
                f"see sandlotd.log under {ray.get(self.sup.config.remote())['state_root']} on the nodes",
                code="unavailable")
        missing = alive - have
        if missing:
            log.warning("no sandlot runner yet on %d of %d nodes; going on with %d", len(missing), len(alive),
                        len(self.runners))
        self.thread = threading.Thread(target=self._monitor, name="sandlot-cluster-monitor", daemon=True)
        self.thread.start()

    # -- registry and load --------------------------------------------------------
    def refresh(self, poke: bool = False) -> None:
        with self.refresh_lock:
            self._refresh(poke)

    def _refresh(self, poke: bool) -> None:
        ray = self.ray
        entries = ray.get(self.sup.poke.remote() if poke else self.sup.runners.remote(), timeout=30)
        nodes = {n["NodeID"]: n for n in ray.nodes()}
        lost: list[tuple[_Runner, str]] = []
        with self.lock:
            new: dict[str, _Runner] = {}
            for e in entries:
                node = nodes.get(e["node_id"])
                if node is None or not node.get("Alive"):
                    continue
                old = self.runners.get(e["tag"])
                if old is not None and old.runner_id == str(e.get("runner_id") or "") and old.url == e["url"]:
                    old.resources = dict(node.get("Resources") or {})
                    new[old.tag] = old
                else:
                    new[e["tag"]] = _Runner(e, self.token, dict(node.get("Resources") or {}))
            for tag, old in self.runners.items():
                if new.get(tag) is old:
                    continue
                node = nodes.get(old.node_id)
                if node is None or not node.get("Alive"):
                    lost.append((old, "Ray reports its node dead"))
                elif tag in new:
                    lost.append((old, f"its runner restarted (now {new[tag].runner_id})"))
                else:
                    new[tag] = old  # not listed this pass (slow to answer): keep it
            self.runners = new
        for r, why in lost:
            self.mark_lost(r, why)
        self._load()

    def _load(self) -> None:
        runners = list(self.runners.values())
        t0 = time.time()
        reqs = [(r, r.session.request("GET", "/v1/sandboxes", timeout=10.0)) for r in runners]
        for r, ref in reqs:
            try:
                boxes = ref.result()["sandboxes"]
            except errors.SandboxError:
                continue
            r.listing(boxes, t0)

    def mark_lost(self, r: _Runner, why: str) -> None:
        with r.lock:
            if r.lost is not None:
                return
            r.lost = r.lost_error(why)
            inflight, r.inflight = list(r.inflight), set()
        with self.lock:
            if self.runners.get(r.tag) is r:
                del self.runners[r.tag]
            self.dead[r.tag] = r
        log.warning("%s", r.lost)
        for inner, settle in inflight:
            settle(exc=r.lost)
            inner.cancel()
        # Batched calls wait on the runner's channel: fail them now (the
        # collector would give up on its own after a few failed polls).
        from .._calls import _collectors

        coll = _collectors.get(r.session)
        if coll is not None:
            with coll._cv:
                ids = list(coll._pending)
            coll.fail(ids, 0, "node_lost", str(r.lost))
        for fn in list(self.functions.values()):
            fn.runner_lost(r)

    def _monitor(self) -> None:
        while not self.closed:
            self.wake.wait(REFRESH_PERIOD)
            self.wake.clear()
            if self.closed:
                return
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep watching
                log.debug("cluster refresh failed: %s", exc)

    def live(self) -> list[_Runner]:
        with self.lock:
            return list(self.runners.values())

    def runner(self, tag: str) -> _Runner:
        r = self.runners.get(tag)
        if r is None:
            dead = self.dead.get(tag)
            if dead is None:
                self.refresh(poke=True)
                r = self.runners.get(tag)
                dead = self.dead.get(tag)
            if r is None:
                if dead is not None and dead.lost is not None:
                    raise dead.lost
                raise errors.NotFoundError(
                    f"no runner {tag!r} in this cluster (nodes: {', '.join(sorted(self.runners)) or 'none'}); "
                    "the node may have left the cluster", code="not_found", status=404)
        return r

    def actor_of(self, r: _Runner) -> Any:
        return self.ray.get_actor(self.actors.node_actor_name(r.node_id), namespace=self.actors.NAMESPACE)

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        for r in self.live():
            r.session.close()
        self.pool.shutdown(wait=False)


def _convert(r: _Runner, exc: BaseException, core: _Core) -> BaseException:
    if isinstance(exc, errors.RunnerUnavailableError) and exc.status == 0 and not isinstance(exc, errors.NodeLostError):
        if r.lost is not None:
            return r.lost
        core.wake.set()  # find out now whether the node is gone
        return r.lost_error(f"the connection to it failed ({exc})")
    return exc


class ClusterSession(Session):
    """A :class:`sandlot.Session` over every sandlot runner of a Ray cluster.

    Made by ``Session(cluster="ray")`` (or ``"ray://host:port"``,
    ``"ray+gcs://host:port"``, or ``SANDLOT_URL=ray...``). Connects to Ray
    (``ray.init`` unless this process already did), makes sure the cluster
    has its supervisor and one runner per node, and fetches the cluster's
    token. Every Sandbox and RemoteFunction call works through it.

    Args:
        cluster: the cluster URL (see :func:`parse_cluster_url`).
        token: the bearer token for a new cluster's runners (default: a random one).
        state_root: where each node keeps its runner's files (default
            ``$SANDLOT_CLUSTER_STATE`` or ``/var/tmp/sandlot-cluster-<uid>``),
            used when this session is the first one on the cluster.
        start_timeout: seconds to wait for the runners.

    Example:
        >>> sess = Session(cluster="ray")                                 # doctest: +SKIP
        >>> big = sess.placement(runner_ids=["n-3f2a9c1e0b7d"])          # doctest: +SKIP
        >>> Sandbox.create("sleep 60", session=big).sandbox_id[:14]      # doctest: +SKIP
        'n-3f2a9c1e0b7d'
    """

    _cluster = True

    def __init__(self, base_url: str | None = None, token: str | None = None, *, autostart: bool = True,
                 cluster: str | None = None, state_root: str | None = None, runner_args: list[str] | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        url = cluster or base_url or os.environ.get("SANDLOT_URL") or "ray"
        address = parse_cluster_url(url)
        if address is None:
            raise ValueError(f"not a cluster URL: {url!r}; use 'ray', 'ray://host:port' or 'ray+gcs://host:port'")
        if token is None and base_url is None and cluster is None:
            token = os.environ.get("SANDLOT_TOKEN") or None
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ImportError('Session(cluster=...) needs Ray: pip install "sandlot[ray]"') from None
        self._core = _Core(address, token, state_root, runner_args, start_timeout)
        self._setup(url, Placement())

    def _setup(self, url: str, placement: Placement) -> None:
        self._paths = None
        self._base_url = url
        self._autostart = False
        self._ready_gen = 0
        self._lock = threading.Lock()
        self._placement = placement

    # Each node's runner is supervised (and restarted) by Ray and reached
    # through its own client; the routing layer handles one that is lost, so
    # there is no local runner process to watch or restart from here.
    def _note_runner(self, health: dict[str, Any]) -> None:
        return None

    def _check_runner(self) -> None:
        return None

    def _default_isolation(self) -> Any:
        """Op: "container", what every node's runner is started with; a
        microVM is asked for with ``isolation="microvm"`` (placed on a node
        offering the tier, ``placement(tier=...)``)."""
        return "container"
        yield  # an Op (a generator), like Session._default_isolation

    def placement(self, runner_ids: list[str] | tuple[str, ...] | None = None, tier: str | None = None
                  ) -> ClusterSession:
        """A view of this session whose sandboxes and function pools go only
        to the runners named in ``runner_ids`` and/or offering ``tier``.

        Example:
            >>> vm = sess.placement(tier="vm")                            # doctest: +SKIP
        """
        if runner_ids is not None and (isinstance(runner_ids, str) or not all(isinstance(x, str) for x in runner_ids)):
            raise TypeError(f"runner_ids must be a list of str, got {runner_ids!r}")
        if tier is not None and not isinstance(tier, str):
            raise TypeError(f"tier must be a str such as 'container', got {tier!r}")
        view = object.__new__(ClusterSession)
        view._core = self._core
        view._setup(self._base_url, Placement(tuple(runner_ids) if runner_ids is not None else None, tier))
        return view

    def __repr__(self) -> str:
        return f"ClusterSession({self._base_url!r}, runners={len(self._core.runners)})"

    @property
    def runners(self) -> list[dict[str, Any]]:
        """The live runners: tag, node id, ip, url, runner id, tiers, Ray resources, sandboxes running."""
        return [{"tag": r.tag, "node_id": r.node_id, "ip": r.ip, "url": r.url, "runner_id": r.runner_id,
                 "tiers": list(r.tiers), "resources": dict(r.resources), "sandboxes": r.load(),
                 "pid": r.pid, "state_dir": r.state_dir} for r in self._core.live()]

    @property
    def token(self) -> str:
        """The cluster's bearer token (what every runner's TCP port wants)."""
        return self._core.token

    # -- placement ----------------------------------------------------------------
    def _eligible(self, runner_ids: list[str] | None = None) -> list[_Runner]:
        pl = self._placement
        out = []
        for r in self._core.live():
            if pl.runner_ids is not None and not any(r.matches(x) for x in pl.runner_ids):
                continue
            if runner_ids is not None and not any(r.matches(x) for x in runner_ids):
                continue
            if pl.tier is not None and pl.tier not in r.tiers:
                continue
            out.append(r)
        return out

    def _no_runner(self, what: str, runner_ids: list[str] | None = None) -> errors.PlacementError:
        pl = self._placement
        want = []
        if pl.runner_ids is not None or runner_ids is not None:
            want.append(f"runner_ids {list(runner_ids or pl.runner_ids or ())}")
        if pl.tier is not None:
            want.append(f"tier {pl.tier!r}")
        nodes = "; ".join(r.describe() for r in self._core.live()) or "none"
        return errors.PlacementError(
            f"no node can take {what}" + (f" with {', '.join(want)}" if want else "") + f". Nodes: {nodes}",
            code="unschedulable", status=409)

    def _place(self, res: dict[str, Any], prefer: set[str], what: str) -> _Runner:
        cands = self._eligible()
        if not cands:
            raise self._no_runner(what)
        cpu = float(res.get("cpu") or 0)
        mem = float(res.get("memory") or 0)
        gpu = gpu_count(res.get("gpu"))
        fits = []
        for r in cands:
            fc, fm, fg = r.free()
            if (cpu == 0 or fc >= cpu - 1e-9) and (mem == 0 or fm >= mem) and (gpu == 0 or fg >= gpu - 1e-9):
                fits.append(r)
        if not fits:
            gpus = f" and {gpu} GPU(s)" if gpu else ""
            raise self._no_runner(f"{what} needing {cpu:g} cpu, {mem:.0f} MiB memory{gpus} free")
        near = [r for r in fits if r.tag in prefer]
        pool = near or fits
        turn = next(self._core.rr)
        return min(pool, key=lambda r: (r.load(), (pool.index(r) - turn) % len(pool)))

    # -- requests -----------------------------------------------------------------
    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float | None = REQUEST_TIMEOUT) -> _core.OperationRef[Any]:
        """Route one runner API request (see the module docstring); returns its ref at once."""
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1] != "v1":
            raise errors.InvalidArgumentError(f"not a runner API path: {path!r}")
        kind, rest = parts[2], parts[3:]
        if kind == "health":
            return self._spawn(path, self._health)
        if kind in ("sandboxes", "snapshots") and rest:
            return self._routed(method, parts, body, timeout)
        if kind == "sandboxes" and method == "POST":
            return self._spawn(path, lambda: self._create(dict(body or {}), timeout))
        if method == "GET" and not rest and kind in ("sandboxes", "snapshots", "images", "volumes", "profiles",
                                                     "functions"):
            return self._spawn(path, lambda: {kind: self._gather(path, kind)})
        if kind in ("images", "volumes", "profiles") and method == "POST":
            return self._spawn(path, lambda: self._broadcast(method, path, body, timeout))
        raise errors.InvalidArgumentError(
            f"{method} {path} is not available through a cluster session: "
            "remote functions go through RemoteFunction, everything else through Sandbox")

    def _spawn(self, label: str, fn: Callable[[], Any]) -> _core.OperationRef[Any]:
        p, settle = relay(label)

        def run() -> None:
            try:
                settle(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the ref
                settle(exc=exc)

        self._core.pool.submit(run)
        return p.ref

    def _forward(self, r: _Runner, method: str, path: str, body: Any, timeout: float | None,
                 after: Callable[[BaseException | None], None] | None = None) -> Any:
        """Send to runner r; the ref fails with NodeLostError if r is lost meanwhile.
        ``after(exc or None)`` runs once the runner answered, before the ref completes."""
        if r.lost is not None:
            raise r.lost
        inner = r.session.request(method, path, body, timeout=timeout)
        p, settle = relay(path, inner.cancel)
        entry = (inner, settle)
        with r.lock:
            r.inflight.add(entry)
        tag_ids = _tagger(r.tag)
        core = self._core

        def done(ref: Any) -> None:
            with r.lock:
                r.inflight.discard(entry)
            try:
                value = ref.result()
            except BaseException as exc:  # noqa: BLE001 - handed on
                if after is not None:
                    after(exc)
                settle(exc=_convert(r, exc, core))
                return
            if after is not None:
                after(None)
            settle(tag_ids(value))

        inner.add_done_callback(done)
        return p.ref

    def _routed(self, method: str, parts: list[str], body: Any, timeout: float | None) -> Any:
        tag, local = split_id(parts[3])
        if tag is None:
            raise errors.NotFoundError(
                f"{parts[3]!r} is not a cluster id: ids made through a cluster session start with their "
                "runner's tag, e.g. 'n-3f2a9c1e0b7d.sb-0123456789abcdef'", code="not_found", status=404)
        r = self._core.runner(tag)
        path = "/".join(parts[:3] + [local] + parts[4:])
        if parts[2] != "sandboxes" or parts[4:] != ["terminate"]:
            return self._forward(r, method, path, body, timeout)
        # Its resources are free again for placement (before the next listing shows it).
        with r.lock:
            r.gone[local] = float("inf")  # until answered; then from that time

        def terminated(exc: BaseException | None) -> None:
            with r.lock:
                if exc is None or isinstance(exc, errors.NotFoundError):
                    r.gone[local] = time.time()
                else:
                    r.gone.pop(local, None)

        return self._forward(r, method, path, body, timeout, terminated)

    def _health(self) -> dict[str, Any]:
        runners = self._core.live()
        refs = [(r, r.session.request("GET", "/v1/health", timeout=10.0)) for r in runners]
        out = []
        for r, ref in refs:
            try:
                h = dict(ref.result())
            except errors.SandboxError as exc:
                h = {"ok": False, "error": str(exc)}
            h.update(tag=r.tag, node_id=r.node_id, ip=r.ip, url=r.url, tiers=list(r.tiers))
            out.append(h)
        return {"ok": bool(out) and all(h.get("ok") for h in out), "cluster": self._base_url,
                "runner_id": "cluster", "sandboxes": sum(int(h.get("sandboxes") or 0) for h in out),
                "version": out[0].get("version") if out else None, "runners": out}

    def _gather(self, path: str, key: str) -> list[Any]:
        runners = self._core.live()
        refs = [(r, r.session.request("GET", path, timeout=30.0)) for r in runners]
        out: list[Any] = []
        seen: dict[str, dict[str, Any]] = {}
        for r, ref in refs:
            try:
                items = ref.result()[key]
            except errors.SandboxError as exc:
                log.warning("listing %s on %s failed: %s", key, r.tag, exc)
                continue
            items = _tagger(r.tag)(items)
            for it in items:
                if key in ("images", "volumes", "profiles") and isinstance(it, dict) and "name" in it:
                    # One entry per name, with the nodes that have it.
                    first = seen.get(it["name"])
                    if first is not None:
                        first["nodes"].append(r.tag)
                        continue
                    it["nodes"] = [r.tag]
                    seen[it["name"]] = it
                elif isinstance(it, dict):
                    it.setdefault("node", r.tag)
                out.append(it)
        if key in ("sandboxes", "snapshots"):
            out.sort(key=lambda d: float(d.get("created_at") or 0))
        return out

    def _broadcast(self, method: str, path: str, body: Any, timeout: float | None) -> Any:
        runners = self._core.live()
        refs = [(r, r.session.request(method, path, body, timeout=timeout)) for r in runners]
        first: Any = None
        failures = []
        for r, ref in refs:
            try:
                resp = ref.result()
                first = resp if first is None else first
            except errors.NotFoundError as exc:
                failures.append((r, exc))
            except errors.SandboxError as exc:
                failures.append((r, exc))
        if first is None and failures:
            raise failures[0][1]
        if failures and not all(isinstance(e, errors.NotFoundError) for _, e in failures):
            r, exc = next((r, e) for r, e in failures if not isinstance(e, errors.NotFoundError))
            raise type(exc)(f"on node {r.tag} ({r.ip}): {exc}", code=exc.code, status=exc.status)
        return first

    def _create(self, body: dict[str, Any], timeout: float | None) -> Any:
        prefer: set[str] = set()
        snap = body.get("snapshot")
        snap_tag = None
        if isinstance(snap, str):
            snap_tag, local = split_id(snap)
            if snap_tag is None:
                raise errors.NotFoundError(f"snapshot {snap!r} is not a cluster id (n-<node>.sn-...)",
                                           code="not_found", status=404)
            body["snapshot"] = local
            prefer.add(snap_tag)
        image = body.get("image")
        image_nodes: list[str] = []
        if isinstance(image, str) and image != "host" and not image.startswith("dir:"):
            image_nodes = [n for it in self._gather("/v1/images", "images") if it.get("name") == image
                           for n in it.get("nodes", [])]
            prefer.update(image_nodes)
        r = self._place(body.get("resources") or {}, prefer, "the sandbox")
        if snap_tag is not None and r.tag != snap_tag:
            self._copy_snapshot(snap_tag, body["snapshot"], r)
        if image_nodes and r.tag not in image_nodes:
            self._copy_image(image, image_nodes, r)
        res = body.get("resources") or {}
        mine = [None, float(res.get("cpu") or 0), float(res.get("memory") or 0), None, float(gpu_count(res.get("gpu")))]
        with r.lock:
            r.local.append(mine)
        try:
            resp = self._forward(r, "POST", "/v1/sandboxes", body, timeout).result()
        except BaseException:
            with r.lock:
                if mine in r.local:
                    r.local.remove(mine)
            raise
        with r.lock:
            mine[3] = split_id(resp["sandbox"]["sandbox_id"])[1]
            mine[0] = time.time()
        return resp

    # -- snapshots and images across nodes -------------------------------------------
    def _copy_snapshot(self, src_tag: str, snap_id: str, dst: _Runner) -> None:
        """Copy a snapshot (and the snapshots it stacks on) from its node to dst."""
        try:
            src = self._core.runner(src_tag)
        except errors.NodeLostError as exc:
            raise errors.NotFoundError(
                f"snapshot {src_tag}.{snap_id} lives on node {exc.node_ip}, which is gone: it cannot be restored; "
                "snapshots are kept on the node that made them", code="not_found", status=404) from None
        chain = []
        sid: str | None = snap_id
        while sid:
            info = src.session.request("GET", f"/v1/snapshots/{sid}", timeout=30.0).result()["snapshot"]
            chain.append(sid)
            sid = info.get("parent")
        ray = self._core.ray
        src_actor, dst_actor = self._core.actor_of(src), self._core.actor_of(dst)
        for sid in reversed(chain):
            try:
                dst.session.request("GET", f"/v1/snapshots/{sid}", timeout=30.0).result()
                continue  # already there
            except errors.NotFoundError:
                pass
            try:
                data = ray.get(src_actor.export_snapshot.remote(sid), timeout=600)
                ray.get(dst_actor.import_snapshot.remote(sid, data), timeout=600)
            except Exception as exc:  # noqa: BLE001 - say what failed
                raise errors.SandboxError(
                    f"cannot copy snapshot {src_tag}.{sid} from node {src.ip} to node {dst.ip}: {exc}",
                    code="snapshot_copy_failed") from None
            log.info("copied snapshot %s from %s to %s", sid, src.tag, dst.tag)

    def _copy_image(self, name: str, nodes: list[str], dst: _Runner) -> None:
        """A named image from a snapshot: copy the snapshot to dst and register the name there."""
        src = self._core.runner(nodes[0])
        # The runner lists names only; the alias's target is in its state dir.
        sid = self._core.ray.get(self._core.actor_of(src).image_snapshot.remote(name), timeout=60)
        if not sid:
            raise errors.PlacementError(
                f"image {name!r} is on nodes {', '.join(nodes)} only and is not a snapshot, so it cannot be "
                f"copied to {dst.tag}: register it on every node (Image from a directory present everywhere) "
                "or place the sandbox with runner_ids", code="unschedulable", status=409)
        self._copy_snapshot(src.tag, sid, dst)
        try:
            dst.session.request("POST", f"/v1/snapshots/{sid}/register", {"name": name}, timeout=30.0).result()
        except errors.SandboxNotRunningError:
            pass  # registered meanwhile

    # -- remote functions -----------------------------------------------------------
    def _functions(self, rf: Any) -> Any:
        from ._functions import ClusterFunction

        core = self._core
        cf = core.functions.get(rf)
        if cf is None or cf.session is not self:
            cf = core.functions[rf] = ClusterFunction(rf, self)
        return cf

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Stop this client's watcher and connections (the cluster's runners keep running)."""
        self._core.close()

    def shutdown(self, timeout: float = 60.0) -> int:
        """Stop the runners of every node (their sandboxes end) and the sandlot actors.

        Returns how many runners were stopped. Ray itself keeps running.
        """
        return shutdown_cluster(self, timeout)


def shutdown_cluster(session: ClusterSession, timeout: float = 60.0) -> int:
    """Stop every node's runner cleanly and remove sandlot's actors from the cluster."""
    core = session._core
    ray = core.ray
    n = int(ray.get(core.sup.stop_all.remote(timeout), timeout=timeout * 2))
    try:
        ray.kill(core.sup, no_restart=True)
    except Exception:  # noqa: BLE001
        pass
    core.close()
    return n
