"""sandlot on a real multi-node Ray cluster (issue 9, docs/cluster.md).

One ``ray.cluster_utils.Cluster`` for the whole module: a head and two more
nodes on this machine, each a real raylet whose ``SandlotNode`` actor starts
its own ``sandlotd`` (its own state dir under the module's temp dir, TCP on
the node's address with the cluster token). The nodes differ so placement is
observable: ``small`` (1 CPU, declares the isolation tier ``vm`` through the
Ray resource ``sandlot-tier-vm``), ``big`` (3 CPUs), the head (1 CPU).

Order matters (module scope): the destructive tests (a runner SIGKILLed, a
node removed mid-map) run near the end, the shutdown check last. Every wait
is bounded. Skipped, with the reason, only if Ray cannot start here.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sandlot
from sandlot import _core

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'sandlot[ray]')")

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
NODE_ARGS = dict(object_store_memory=80 * MiB, include_dashboard=False)


def _wait(pred, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Env:
    cluster = None
    sess = None
    root: Path
    tags: dict[str, str]  # role -> runner tag
    nodes: dict[str, object]
    created: list[str]
    client_port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ray.cluster_utils import Cluster

    e = Env()
    e.root = tmp_path_factory.mktemp("cluster")
    e.created = []
    own: set[int] = set()
    try:
        try:
            with socket.socket() as so:  # a free port for the Ray Client server
                so.bind(("127.0.0.1", 0))
                e.client_port = so.getsockname()[1]
            e.cluster = Cluster(initialize_head=True, head_node_args=dict(
                num_cpus=1, ray_client_server_port=e.client_port, **NODE_ARGS))
            e.nodes = {
                # The one node with a GPU (a stand-in device, tests/test_gpu.py):
                # Ray counts it, the runner there is given the device.
                "small": e.cluster.add_node(num_cpus=1, num_gpus=1, resources={"sandlot-tier-vm": 1}, **NODE_ARGS),
                "big": e.cluster.add_node(num_cpus=3, **NODE_ARGS),
            }
            ray.init(address=e.cluster.address, logging_level="WARNING", log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - the reason is the skip message
            if os.environ.get("CI"):
                raise  # CI installs everything (./dev): a cluster that cannot start is a failure there
            pytest.skip(f"Ray cannot start a local cluster here: {type(exc).__name__}: {exc}")
        e.gpu = str(e.root / "gpu0")
        os.mknod(e.gpu, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        e.sess = sandlot.Session(cluster="ray", state_root=str(e.root / "state"), runner_args=["--gpu", e.gpu])
        by_cpu = {}
        for r in e.sess.runners:
            own.add(r["pid"])
            res = r["resources"]
            if "node:__internal_head__" in res:
                by_cpu["head"] = r["tag"]
            elif "sandlot-tier-vm" in res:
                by_cpu["small"] = r["tag"]
            else:
                by_cpu["big"] = r["tag"]
        e.tags = by_cpu
        assert set(e.tags) == {"head", "small", "big"}, e.sess.runners
        yield e
    finally:
        if e.sess is not None:
            for r in e.sess.runners:
                own.add(r["pid"])
            try:
                e.sess.shutdown(timeout=30)
            except Exception:  # noqa: BLE001 - still take everything down below
                pass
        if ray.is_initialized():
            ray.shutdown()
        if e.cluster is not None:
            e.cluster.shutdown()
        for pid in own:  # only the runners this module started, if any survived
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().find(str(e.root).encode()) >= 0:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _tag(sid: str) -> str:
    return sid.split(".", 1)[0]


def _runner(env, tag):
    return next(r for r in env.sess.runners if r["tag"] == tag)


# ---------------------------------------------------------------------------


def test_plain_import_never_imports_ray(tmp_path):
    code = (
        "import sys, sandlot\n"
        "s = sandlot.Session('unix:///nonexistent/sandlotd.sock')\n"
        "f = sandlot.function()(lambda x: x)\n"
        "sandlot.Image.host()\n"
        "print('ray' in sys.modules, any(m.startswith('ray.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "SANDLOT_URL"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_one_runner_per_node_behind_the_token(env):
    runners = env.sess.runners
    assert len(runners) == 3
    assert len({r["node_id"] for r in runners}) == 3
    assert len({r["url"] for r in runners}) == 3
    for r in runners:
        assert r["url"].startswith("http://")
        assert Path(r["state_dir"]).is_relative_to(env.root)
        # The token is what a runner's TCP port wants: none, or a wrong one, is refused.
        with pytest.raises(sandlot.AuthenticationError):
            _core.Client(r["url"]).request("GET", "/v1/sandboxes", None, timeout=10).result()
        with pytest.raises(sandlot.AuthenticationError):
            _core.Client(r["url"], "wrong").request("GET", "/v1/sandboxes", None, timeout=10).result()
        ok = _core.Client(r["url"], env.sess.token).request("GET", "/v1/health", None, timeout=10).result()
        assert ok["runner_id"] == r["runner_id"]
    h = env.sess.health()
    assert h["ok"] and len(h["runners"]) == 3


def test_spreads_sandboxes_and_routes_by_id(env):
    boxes = [sandlot.Sandbox.create(["sleep", "60"], session=env.sess) for _ in range(3)]
    try:
        assert sorted(_tag(b.sandbox_id) for b in boxes) == sorted(env.tags.values())
        for b in boxes:
            p = b.exec(["sh", "-c", "echo $((6*7))"])
            assert p.wait(timeout=30) == 0 and p.stdout.read() == "42\n"
            again = sandlot.Sandbox.lookup(b.sandbox_id, session=env.sess)
            assert again.info().running
        listed = {b.sandbox_id for b in sandlot.Sandbox.list(session=env.sess)}
        assert {b.sandbox_id for b in boxes} <= listed
    finally:
        for b in boxes:
            b.terminate()
    with pytest.raises(sandlot.NotFoundError):
        sandlot.Sandbox.lookup(boxes[0].sandbox_id, session=env.sess)
    with pytest.raises(sandlot.NotFoundError, match="cluster id"):
        sandlot.Sandbox.lookup("sb-0123456789abcdef", session=env.sess)


def test_map_uses_each_nodes_cpus_and_leased_workers_on_this_host(env):
    """Each node's pool is sized by the CPUs the node offers (not this host's
    cores); runners on this host lend their workers to map() directly, and a
    worker crash there is a WorkerCrashedError, not a lost node."""

    @env.sess.function()
    def plus(x):
        if x == -1:
            import os as o

            o._exit(3)
        return x + 1

    n = 2000
    for _ in range(3):  # the first maps grow the pools; later ones lease them
        assert [r.result(timeout=120) for r in plus.map([(i,) for i in range(n)])] == [i + 1 for i in range(n)]
    runners = plus.info()["runners"]
    sizes = {tag: v["max_workers"] for tag, v in runners.items()}
    assert sizes == {env.tags["head"]: 1, env.tags["small"]: 1, env.tags["big"]: 3}, sizes
    leased = {tag: [w for w in v["workers"] if w.get("leased")] for tag, v in runners.items()}
    assert all(leased.values()), (leased, runners)  # every node's pool was lent out to this client's map()
    refs = plus.map([(i,) for i in range(n)] + [(-1,)])
    with pytest.raises(sandlot.WorkerCrashedError):
        refs[-1].result(timeout=120)
    assert not isinstance(refs[-1].exception(timeout=1), sandlot.NodeLostError)
    assert [r.result(timeout=120) for r in plus.map([(i,) for i in range(10)])] == list(range(1, 11))
    plus.delete()


def test_placement_honours_resources(env):
    first = sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"cpu": 2})
    try:
        assert _tag(first.sandbox_id) == env.tags["big"]  # the only node with 2 CPUs
        assert first.info().resources["cpu"] == 2
        # big has 1 of 3 CPUs left now; nobody has 2.
        with pytest.raises(sandlot.PlacementError, match="no node can take") as ei:
            sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"cpu": 2})
        assert env.tags["big"] in str(ei.value)
        one = sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"cpu": 1})
        one.terminate()
    finally:
        first.terminate()
    again = sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"cpu": 2})
    assert _tag(again.sandbox_id) == env.tags["big"]
    again.terminate()


def test_placement_honours_gpus(env):
    """gpu counts against the node's Ray GPU resource; only that node's runner
    was given the device (the others got no --gpu)."""
    gpu = {r["tag"]: r["resources"].get("GPU", 0) for r in env.sess.runners}
    assert gpu == {env.tags["small"]: 1, env.tags["head"]: 0, env.tags["big"]: 0}
    sb = sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"gpu": 1})
    try:
        assert _tag(sb.sandbox_id) == env.tags["small"]
        p = sb.exec(["sh", "-c", f"test -c {env.gpu} && head -c 2 {env.gpu} | od -An -tx1"])
        assert p.wait() == 0 and p.stdout.read().split() == ["00", "00"]
        with pytest.raises(sandlot.PlacementError, match="1 GPU"):
            sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"gpu": 1})
        # Pinned to a node without one: refused by placement, not sent.
        with pytest.raises(sandlot.PlacementError):
            sandlot.Sandbox.create(["sleep", "60"], session=env.sess.placement(runner_ids=[env.tags["big"]]),
                                   resources={"gpu": 1})
    finally:
        sb.terminate()
    again = sandlot.Sandbox.create(["sleep", "60"], session=env.sess, resources={"gpu": 1})
    assert _tag(again.sandbox_id) == env.tags["small"]
    again.terminate()
    gpus = {h["tag"]: h["limits"]["gpus"]["total"] for h in env.sess.health()["runners"]}
    assert gpus == {env.tags["small"]: 1, env.tags["head"]: 0, env.tags["big"]: 0}


def test_placement_honours_runner_ids_and_tier(env):
    only_small = env.sess.placement(runner_ids=[env.tags["small"]])
    boxes = [sandlot.Sandbox.create(["sleep", "60"], session=only_small) for _ in range(2)]
    vm = sandlot.Sandbox.create(["sleep", "60"], session=env.sess.placement(tier="vm"))
    try:
        assert {_tag(b.sandbox_id) for b in boxes} == {env.tags["small"]}
        assert _tag(vm.sandbox_id) == env.tags["small"]  # the only node declaring the tier
        with pytest.raises(sandlot.PlacementError, match="tier 'no-such-tier'"):
            sandlot.Sandbox.create(["sleep", "60"], session=env.sess.placement(tier="no-such-tier"))
    finally:
        for b in [*boxes, vm]:
            b.terminate()

    @env.sess.function(runner_ids=[env.tags["head"]])
    def where(x):
        return x + 1

    assert [r.result(timeout=60) for r in where.map([(i,) for i in range(50)])] == list(range(1, 51))
    assert set(where.info()["runners"]) == {env.tags["head"]}
    where.delete()

    # A profile only one runner has: the function's pool goes there only.
    small = _runner(env, env.tags["small"])
    from sandlot.function import create_profile

    create_profile("only-small", env={"WHO": "small"}, session=sandlot.Session(small["url"], env.sess.token))

    @env.sess.function(profile_names=["only-small"])
    def who(_):
        import os as o

        return o.environ.get("WHO")

    assert [r.result(timeout=60) for r in who.map([(i,) for i in range(20)])] == ["small"] * 20
    assert set(who.info()["runners"]) == {env.tags["small"]}
    who.delete()


def test_map_across_nodes_in_order_and_remote_spreads(env):
    @env.sess.function(max_workers=1)
    def square(x):
        return x * x

    n = 3000
    refs = square.map([(i,) for i in range(n)])
    assert [r.result(timeout=120) for r in refs] == [i * i for i in range(n)]
    info = square.info()["runners"]
    assert set(info) == set(env.tags.values())
    assert all(v["calls"] > 0 for v in info.values()), info  # every node's pool took chunks

    @env.sess.function(max_workers=1)
    def nap(x):
        import time as t

        t.sleep(0.5)
        return x

    refs = [nap.remote(i) for i in range(6)]
    assert [r.result(timeout=120) for r in refs] == list(range(6))
    # Least busy first: six concurrent calls, three pools, two each.
    assert sorted(v["calls"] for v in nap.info()["runners"].values()) == [2, 2, 2]
    ref = nap.remote(99)
    assert ref.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        ref.result(timeout=30)
    assert nap.remote(7).result(timeout=60) == 7
    square.delete()
    nap.delete()


def test_lookup_through_ray_client_and_ps_from_other_processes(env):
    sb = sandlot.Sandbox.create("echo ready; sleep 60", session=env.sess)
    try:
        child_env = {**os.environ, "RAY_ADDRESS": env.cluster.address, "SANDLOT_URL": "ray"}
        # The lookup goes through Ray Client (ray://), as from another machine.
        client_env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                      "SANDLOT_URL": f"ray://127.0.0.1:{env.client_port}"}
        code = (
            "import sys, sandlot\n"
            "sb = sandlot.Sandbox.lookup(sys.argv[1])\n"
            "p = sb.exec(['sh', '-c', 'echo from-$(hostname)'])\n"
            "p.wait(timeout=30)\n"
            "print(p.stdout.read().strip())\n"
        )
        out = subprocess.run([sys.executable, "-c", code, sb.sandbox_id], capture_output=True, text=True,
                             timeout=90, env=client_env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1].startswith("from-")
        ps = subprocess.run([sys.executable, "-m", "sandlot", "ps", "-q"], capture_output=True, text=True,
                            timeout=90, env=child_env)
        assert ps.returncode == 0, ps.stderr[-2000:]
        assert sb.sandbox_id in ps.stdout.split()
        st = subprocess.run([sys.executable, "-m", "sandlot", "cluster", "status"], capture_output=True, text=True,
                            timeout=90, env=child_env)
        assert st.returncode == 0, st.stderr[-2000:]
        lines = st.stdout.strip().splitlines()
        assert len(lines) == 4 and {ln.split()[0] for ln in lines[1:]} == set(env.tags.values())
    finally:
        sb.terminate()


def test_snapshot_restores_on_another_node_by_copy(env):
    src = sandlot.Sandbox.create(["sleep", "60"], session=env.sess.placement(runner_ids=[env.tags["head"]]))
    try:
        src.write_file("/etc/marker", "made on the head\n")
        snap = src.snapshot()
    finally:
        src.terminate()
    assert _tag(snap.snapshot_id) == env.tags["head"]
    dst = sandlot.Sandbox.create(["sleep", "60"], snapshot=snap,
                                 session=env.sess.placement(runner_ids=[env.tags["big"]]))
    try:
        assert _tag(dst.sandbox_id) == env.tags["big"]
        assert dst.read_file("/etc/marker") == b"made on the head\n"
    finally:
        dst.terminate()


def test_named_image_built_on_one_node_starts_on_another(env):
    on_head = env.sess.placement(runner_ids=[env.tags["head"]])
    img = sandlot.Image.host().run_commands("echo built-here > /etc/built").register("cluster-img", session=on_head)
    names = {i["name"]: i for i in on_head.request("GET", "/v1/images").result()["images"]}
    assert names["cluster-img"]["nodes"] == [env.tags["head"]]  # recorded where it lives
    sb = sandlot.Sandbox.create(["sleep", "60"], image=img, session=env.sess.placement(runner_ids=[env.tags["big"]]))
    try:
        assert _tag(sb.sandbox_id) == env.tags["big"]
        assert sb.read_file("/etc/built") == b"built-here\n"
    finally:
        sb.terminate()
    names = {i["name"]: i for i in env.sess.request("GET", "/v1/images").result()["images"]}
    assert sorted(names["cluster-img"]["nodes"]) == sorted([env.tags["head"], env.tags["big"]])


def test_runner_killed_with_sigkill_comes_back(env):
    tag = env.tags["big"]
    before = _runner(env, tag)
    sb = sandlot.Sandbox.create(["sleep", "60"], session=env.sess.placement(runner_ids=[tag]))
    local = sb.sandbox_id.split(".", 1)[1]
    env.created.append(local)
    cgroup = Path(f"/proc/{before['pid']}/cgroup").read_text()
    assert any(d.is_dir() for d in _cgroup_dirs(cgroup, local))
    os.kill(before["pid"], signal.SIGKILL)
    after = _wait(lambda: next((r for r in env.sess.runners if r["tag"] == tag
                                and r["runner_id"] != before["runner_id"]), None), 90, "the runner to come back")
    assert after["pid"] != before["pid"]
    # The sandbox died with its runner; the new runner swept its leftovers.
    with pytest.raises((sandlot.NotFoundError, sandlot.NodeLostError)):
        sb.exec(["true"])
    assert not (Path(before["state_dir"]) / "sandboxes" / local).exists()
    assert not [d for d in _cgroup_dirs(cgroup, local) if d.exists()]  # removed by the restarted actor
    fresh = sandlot.Sandbox.create(["sleep", "60"], session=env.sess.placement(runner_ids=[tag]))
    assert fresh.exec(["true"]).wait(timeout=30) == 0
    fresh.terminate()


def test_node_lost_mid_map_and_remote_fails_or_reruns(env):
    tag = env.tags["small"]
    small = _runner(env, tag)
    small_ip = small["ip"]
    small_cgroup = Path(f"/proc/{small['pid']}/cgroup").read_text()

    def slow(x):
        import time as t

        t.sleep(0.05)
        return -x

    def long(x):
        import time as t

        t.sleep(6)
        return x

    plain = env.sess.function(slow, max_workers=1)
    safe = env.sess.function(slow, max_workers=1, retries=2)
    items = [(i,) for i in range(240)]
    sb = sandlot.Sandbox.create(["sleep", "120"], session=env.sess.placement(runner_ids=[tag]))
    # remote(): least busy first, so two of each six land on every node, small included.
    long_plain = env.sess.function(long, max_workers=2)
    long_safe = env.sess.function(long, max_workers=2, retries=1)
    rem_plain = [long_plain.remote(i) for i in range(6)]
    rem_safe = [long_safe.remote(i) for i in range(6)]
    refs_plain = plain.map(items, chunksize=10)
    refs_safe = safe.map(items, chunksize=10)
    _wait(lambda: sum(r.done() for r in refs_plain) >= 10, 90, "the first results")
    env.cluster.remove_node(env.nodes["small"])
    # Never a hang: every ref ends.
    out_plain = []
    for r in refs_plain:
        try:
            out_plain.append(r.result(timeout=120))
        except sandlot.NodeLostError as exc:
            assert exc.runner == tag and small_ip in str(exc)
            out_plain.append(exc)
    lost = [i for i, v in enumerate(out_plain) if isinstance(v, sandlot.NodeLostError)]
    assert lost, "some chunks ran on the removed node"
    assert all(out_plain[i] == -i for i in range(len(items)) if i not in lost)
    assert [r.result(timeout=120) for r in refs_safe] == [-i for i in range(len(items))]
    out_rem = []
    for r in rem_plain:
        try:
            out_rem.append(r.result(timeout=120))
        except sandlot.NodeLostError as exc:
            assert exc.runner == tag
            out_rem.append(None)
    assert out_rem.count(None) == 2 and [v for v in out_rem if v is not None] == [
        i for i, v in enumerate(out_rem) if v is not None]
    assert [r.result(timeout=120) for r in rem_safe] == list(range(6))  # the two on small reran
    with pytest.raises(sandlot.NodeLostError):
        sb.wait(timeout=60)
    # The node's runner went down with it, cleanly: no sandbox dir, no cgroup left.
    _wait(lambda: not _alive(small["pid"]), 30, "the lost node's runner to exit")
    sdir = Path(small["state_dir"]) / "sandboxes"
    assert not sdir.exists() or not any(sdir.iterdir())
    assert not [d for d in _cgroup_dirs(small_cgroup, sb.sandbox_id.split(".", 1)[1]) if d.exists()]
    assert tag not in {r["tag"] for r in env.sess.runners}
    with pytest.raises(sandlot.PlacementError):
        sandlot.Sandbox.create(["true"], session=env.sess.placement(runner_ids=[tag]))
    # A node that joins gets a runner.
    env.nodes["late"] = env.cluster.add_node(num_cpus=1, **NODE_ARGS)
    _wait(lambda: len(env.sess.runners) == 3, 90, "a runner on the new node")
    for f in (plain, safe, long_plain, long_safe):
        f.delete()


def _cgroup_dirs(cgroup_file: str, local: str) -> list[Path]:
    """Where the runner (whose /proc/PID/cgroup this is) put the cgroups of sandbox ``local``."""
    out = []
    for line in cgroup_file.splitlines():
        _, ctrls, rel = line.split(":", 2)
        for ctrl in [c for c in ctrls.split(",") if c and not c.startswith("name=")] or ["", "unified"]:
            out.append(Path("/sys/fs/cgroup") / ctrl / rel.lstrip("/") / "sandlot" / local)
    return out


def test_shutdown_leaves_nothing_behind(env):
    boxes = [sandlot.Sandbox.create(["sleep", "120"], session=env.sess) for _ in range(3)]
    env.created += [b.sandbox_id.split(".", 1)[1] for b in boxes]
    pids = [b.info().pid for b in boxes]
    assert all(pids)
    runners = env.sess.runners
    cgroups = {r["pid"]: Path(f"/proc/{r['pid']}/cgroup").read_text() for r in runners}
    # The sandboxes' cgroups exist now (so the check below can fail).
    assert any(d.is_dir() for cg in cgroups.values() for b in boxes
               for d in _cgroup_dirs(cg, b.sandbox_id.split(".", 1)[1]))
    assert env.sess.shutdown(timeout=60) == len(runners)
    for r in runners:
        _wait(lambda: not _alive(r["pid"]), 30, "the runner to exit")
        sdir = Path(r["state_dir"]) / "sandboxes"
        assert not sdir.exists() or not any(sdir.iterdir())
    for pid in pids:
        _wait(lambda: not _alive(pid), 30, "the sandbox to end")
    assert str(env.root) not in Path("/proc/self/mountinfo").read_text()
    for cg in cgroups.values():
        for local in env.created:
            assert not [d for d in _cgroup_dirs(cg, local) if d.exists()], local


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
