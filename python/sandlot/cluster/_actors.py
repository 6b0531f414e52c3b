"""The Ray side of a sandlot cluster: one supervisor, one runner actor per node.

* ``SandlotSupervisor`` (detached, named ``sandlot-supervisor`` in the
  ``sandlot`` namespace, restarted by Ray when its node dies) holds the
  cluster's bearer token and the registry of runners. A thread of it watches
  Ray's node table and makes sure every live node has a ``SandlotNode``
  actor, so a node that joins gets a runner within a couple of seconds.
* ``SandlotNode`` (detached, named ``sandlot-node-<ray node id>``, pinned to
  its node with a hard ``NodeAffinitySchedulingStrategy``, ``num_cpus=0``,
  ``max_restarts=-1``) starts ``sandlotd`` on that node listening on the
  node's address with the token, and supervises it: when the runner dies
  (a crash, SIGKILL) the actor exits, Ray restarts it, and the new actor
  starts a new runner on the same state dir (which sweeps the old one's
  leftovers). The runner is started through ``setpriv --pdeathsig TERM`` by a
  thread that lives as long as the actor, so a killed actor process takes its
  runner down cleanly (SIGTERM: sandboxes killed, cgroups and mounts removed).

Importing this module imports ray; ``import sandlot`` never does.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger("sandlot.cluster")

#: The Ray namespace holding sandlot's named actors.
NAMESPACE = "sandlot"
SUPERVISOR = "sandlot-supervisor"
#: Custom Ray resources named ``sandlot-tier-<name>`` add isolation tiers to a node.
TIER_RESOURCE = "sandlot-tier-"


def node_actor_name(node_id: str) -> str:
    return f"sandlot-node-{node_id}"


def node_tag(node_id: str) -> str:
    """The cluster's short, stable name of a node's runner: what sandbox ids start with."""
    return "n-" + node_id[:12]


def default_state_root() -> str:
    return os.environ.get("SANDLOT_CLUSTER_STATE") or f"/var/tmp/sandlot-cluster-{os.geteuid()}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _leftover_cgroups(sandbox_ids: list[str], runner_pid: int) -> None:
    """rmdir the (empty) cgroups of sandboxes a killed runner left behind.

    Only the ids that were in this node's own state dir, only under the
    runner's own ``.../sandlot/`` cgroup parents: never anyone else's.
    """
    if not sandbox_ids:
        return
    try:
        lines = Path(f"/proc/{runner_pid}/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, ctrls, rel = line.split(":", 2)
        names = [c for c in ctrls.split(",") if c and not c.startswith("name=")] or [""]
        for ctrl in names:
            base = Path("/sys/fs/cgroup") / ctrl if ctrl else Path("/sys/fs/cgroup/unified")
            if not ctrl and not base.is_dir():
                base = Path("/sys/fs/cgroup")
            for sid in sandbox_ids:
                p = base / rel.lstrip("/") / "sandlot" / sid
                try:
                    p.rmdir()
                    log.info("removed leftover cgroup %s", p)
                except OSError:
                    pass


def gpu_args(runner_args: list[str], node_gpus: float) -> list[str]:
    """The runner's arguments on a node that declares ``node_gpus`` GPUs to Ray:
    a node with none gets no ``--gpu`` (the cluster-wide arguments may name
    devices that only the GPU nodes have); one with some gets ``--gpu auto``
    (every /dev/nvidia<N>) unless the arguments name devices.

    Example:
        >>> gpu_args(["--gpu", "/dev/nvidia0", "--pool", "2"], 0)
        ['--pool', '2']
        >>> gpu_args(["--pool", "2"], 1)
        ['--pool', '2', '--gpu', 'auto']
    """
    out: list[str] = []
    named = False
    skip = False
    for a in runner_args:
        if skip:
            skip = False
            continue
        if a == "--gpu" or a.startswith("--gpu="):
            named = True
            if node_gpus <= 0:
                skip = a == "--gpu"
                continue
        out.append(a)
    if node_gpus > 0 and not named:
        out += ["--gpu", "auto"]
    return out


class SandlotNode:
    """The runner of one Ray node (see the module docstring)."""

    def __init__(self, token: str, state_root: str, node_id: str, runner_args: list[str] | None = None) -> None:
        from .._runtime import runner_binary

        self.node_id = node_id
        self.tag = node_tag(node_id)
        self.ip = ray.util.get_node_ip_address()
        self.dir = Path(state_root) / self.tag
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.state_dir = self.dir / "state"
        self.token_file = self.dir / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        self._stopping = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = threading.Event()
        self._error: str | None = None
        # Sandboxes of a runner that died without cleaning up: their cgroups
        # are removed once the new runner runs (it sweeps their dirs itself).
        try:
            leftovers = [p.name for p in (self.state_dir / "sandboxes").iterdir() if p.name.startswith("sb-")]
        except OSError:
            leftovers = []
        binary = runner_binary()
        node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
        runner_args = gpu_args(list(runner_args or []), float((node.get("Resources") or {}).get("GPU", 0)))
        for attempt in range(5):
            self.port = _free_port(self.ip)
            self.cmd = [
                "setpriv", "--pdeathsig", "TERM", "--",
                binary,
                "--socket", str(self.dir / "sandlotd.sock"),
                "--state-dir", str(self.state_dir),
                "--listen", f"{self.ip}:{self.port}",
                "--token-file", str(self.token_file),
                "--log-file", str(self.dir / "sandlotd.log"),
                *(runner_args or []),
            ]
            self._started.clear()
            self._error = None
            # The thread that starts the runner is its parent for PDEATHSIG:
            # it must live as long as the actor, so it also waits for it.
            threading.Thread(target=self._keep, name="sandlot-runner-keeper", daemon=True).start()
            self._started.wait(30)
            if self._proc is not None and self._wait_healthy(30.0):
                break
            self._kill()
            if attempt == 4:
                raise RuntimeError(f"sandlotd did not start on node {self.ip}: {self._error or 'no answer'}; "
                                   f"see {self.dir / 'sandlotd.log'}")
        self.url = f"http://{self.ip}:{self.port}"
        self.health = self._health()
        _leftover_cgroups(leftovers, self._proc.pid if self._proc else 0)
        log.info("sandlot runner %s on node %s: %s", self.health.get("runner_id"), self.ip, self.url)

    # -- the runner process ---------------------------------------------------
    def _keep(self) -> None:
        try:
            self._proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            self._error = str(exc)
            self._started.set()
            return
        proc = self._proc
        self._started.set()
        _, err = proc.communicate()
        if self._stopping or proc is not self._proc:
            return
        self._error = err.decode("utf-8", "replace").strip()[-2000:]
        if self.__dict__.get("url"):
            # The runner died under a serving actor: exit, so that Ray
            # restarts this actor and with it a fresh runner.
            log.error("sandlotd on node %s exited with %s: %s; restarting", self.ip, proc.returncode, self._error)
            os._exit(1)

    def _health(self) -> dict[str, Any]:
        from .. import _core

        c = _core.Client(f"unix://{self.dir / 'sandlotd.sock'}")
        try:
            return dict(c.request("GET", "/v1/health", None, timeout=5.0).result())
        finally:
            c.close()

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                self._health()
                return True
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        return False

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    # -- methods ---------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Where this runner is and what it offers (the registry's entry)."""
        res = {}
        for n in ray.nodes():
            if n.get("NodeID") == self.node_id:
                res = dict(n.get("Resources") or {})
        tiers = ["container"] + sorted(k[len(TIER_RESOURCE):] for k in res if k.startswith(TIER_RESOURCE))
        for t in self.health.get("isolation_tiers") or ():
            if t not in tiers:
                tiers.append(str(t))
        return {
            "tag": self.tag,
            "node_id": self.node_id,
            "ip": self.ip,
            "url": self.url,
            "runner_id": self.health.get("runner_id"),
            "pid": self._proc.pid if self._proc else None,
            "state_dir": str(self.state_dir),
            "resources": res,
            "tiers": tiers,
            "started_at": time.time() - float(self.health.get("uptime") or 0.0),
        }

    def stop(self) -> bool:
        """Stop the runner cleanly (its sandboxes end); the actor stays until killed."""
        self._stopping = True
        self._kill()
        return True

    def export_snapshot(self, snapshot_id: str) -> bytes:
        """The snapshot's directory (meta and layer) as an uncompressed tar, for a copy elsewhere."""
        src = self.state_dir / "snapshots" / snapshot_id
        if not (src / "meta").is_file():
            raise FileNotFoundError(f"snapshot {snapshot_id} is not on node {self.ip}")
        # GNU tar keeps the overlay xattrs and whiteout devices of "dir" layers.
        out = subprocess.run(
            ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(src.parent), "-cf", "-",
             "--exclude", f"{snapshot_id}/mnt", snapshot_id],
            capture_output=True, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot pack snapshot {snapshot_id}: {out.stderr.decode(errors='replace')}")
        return out.stdout

    def image_snapshot(self, name: str) -> str | None:
        """The snapshot a named image was registered from (its ``snapshot`` file), or None."""
        if "/" in name or name in (".", ".."):
            return None
        try:
            sid = (self.state_dir / "images" / name / "snapshot").read_text().strip()
        except OSError:
            return None
        return sid if sid.startswith("sn-") and "/" not in sid else None

    def import_snapshot(self, snapshot_id: str, data: bytes) -> bool:
        """Unpack a snapshot exported by another node into this runner's state dir."""
        dst = self.state_dir / "snapshots"
        if (dst / snapshot_id / "meta").is_file():
            return False
        tmp = dst / f".import-{snapshot_id}-{secrets.token_hex(4)}"
        tmp.mkdir(parents=True, mode=0o700)
        try:
            out = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(tmp),
                                  "-xf", "-"], input=data, capture_output=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"cannot unpack snapshot {snapshot_id}: {out.stderr.decode(errors='replace')}")
            if (tmp / snapshot_id / "layer.erofs").exists():
                # Where the runner mounts the image (its contents stayed behind).
                (tmp / snapshot_id / "mnt").mkdir(mode=0o700, exist_ok=True)
            os.rename(tmp / snapshot_id, dst / snapshot_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True


class SandlotSupervisor:
    """Token, registry and the loop that gives every live node a runner."""

    def __init__(self, token: str, state_root: str, runner_args: list[str] | None = None,
                 period: float = 1.0) -> None:
        self.token = token
        self.state_root = state_root
        self.runner_args = list(runner_args or [])
        self.period = period
        self._lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._runners: dict[str, dict[str, Any]] = {}
        self._actors: dict[str, Any] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="sandlot-supervisor", daemon=True)
        self._thread.start()

    def get_token(self) -> str:
        return self.token

    def config(self) -> dict[str, Any]:
        return {"state_root": self.state_root, "runner_args": self.runner_args}

    def runners(self) -> list[dict[str, Any]]:
        """Registry entries of the runners that answered at the last pass."""
        with self._lock:
            return list(self._runners.values())

    def poke(self) -> list[dict[str, Any]]:
        """Run one pass now (a client met an unknown or dead runner); the registry after it."""
        self._pass()
        return self.runners()

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._pass()
            except Exception:  # noqa: BLE001 - keep supervising
                log.exception("sandlot supervisor pass failed")
            time.sleep(self.period)

    def _pass(self) -> None:
        with self._pass_lock:
            self._pass_locked()

    def _pass_locked(self) -> None:
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        pending = {}
        for nid in alive:
            actor = self._actors.get(nid)
            if actor is None:
                actor = SandlotNodeActor.options(
                    name=node_actor_name(nid), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                    max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=4,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
                ).remote(self.token, self.state_root, nid, self.runner_args)
                self._actors[nid] = actor
            pending[nid] = actor.info.remote()
        fresh: dict[str, dict[str, Any]] = {}
        for nid, ref in pending.items():
            try:
                fresh[nid] = ray.get(ref, timeout=max(2.0, self.period * 5))
            except Exception:  # noqa: BLE001 - starting, restarting or dead: not listed
                continue
        for nid in list(self._actors):
            if nid not in alive:
                self._actors.pop(nid, None)  # Ray ends it with its node
        with self._lock:
            self._runners = fresh

    def stop_all(self, timeout: float = 60.0) -> int:
        """Stop every node's runner cleanly, then end the node actors. Returns how many."""
        self._stopping = True
        actors = dict(self._actors)
        refs = {nid: a.stop.remote() for nid, a in actors.items()}
        n = 0
        for nid, ref in refs.items():
            try:
                ray.get(ref, timeout=timeout)
                n += 1
            except Exception:  # noqa: BLE001 - a dead node: nothing to stop
                pass
            try:
                ray.kill(actors[nid], no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        with self._lock:
            self._runners = {}
        self._actors.clear()
        return n


SandlotNodeActor = ray.remote(SandlotNode)
SandlotSupervisorActor = ray.remote(SandlotSupervisor)
