"""Network isolation: the default (lo only), egress none/all/allow lists, port
tunnels, and what a sandbox must never reach (the host, the runner's port,
other sandboxes), against the real runner, real veth pairs and real nftables
rules.

NETWORK SAFETY: every packet these tests send goes to an address on this
machine: 127.0.0.1, the runner's pool (the sandboxes' own veth pairs), or the
"external host", a network namespace the ``ext_host`` fixture creates with a
private /24 and a veth; the fixture checks that the host routes that /24 to
its veth before any test uses it. No test resolves a name through a name
server: the TCP runner runs in a private mount namespace whose /etc/hosts
knows ``ext.sandlot.test`` and whose /etc/resolv.conf points at 127.0.0.1.
Every loop is bounded and every fixture cleans up in its finalizer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sandlot
from conftest import Runner, host_tool_env, runner_binary, start_runner, stop
from sandlot import (
    InvalidArgumentError,
    NetworkOptions,
    NotFoundError,
    RemoteFunction,
    Sandbox,
)

EXT_PORT = 8080

# Runs inside a sandbox: one TCP connection, prints OK:<first line> or ERR:<why>.
PROBE = r"""
import socket, sys
h, p = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((h, p), timeout=1.5)
    s.settimeout(2.0)
    print("OK:" + s.recv(64).decode(errors="replace").strip())
except Exception as e:
    print("ERR:" + type(e).__name__ + ":" + str(e))
"""

# A TCP server that greets every connection with one line; ends by itself.
GREETER = r"""
import socket, sys, time
host, port, word = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
s.settimeout(1.0)
end = time.monotonic() + 600
print("listening", flush=True)
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.sendall(word + b"\n")
    c.close()
"""


def sh(cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30, env=host_tool_env())
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
    return r.stdout


def probe(sb: Sandbox, host: str, port: int) -> str:
    p = sb.exec(["python3", "-c", PROBE, host, str(port)])
    assert p.wait(timeout=30) == 0, p.stderr.read()
    return p.stdout.read().strip()


def host_if(sb: Sandbox) -> str:
    """The host side of a sandbox's veth pair (net.c names it)."""
    return "sl" + sb.sandbox_id[3:15]


class Greeter:
    """A greeting TCP server in this process, bound to (host, port 0)."""

    def __init__(self, host: str, word: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.word = word.encode()
        self.accepted = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        end = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            c.sendall(self.word + b"\n")
            c.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


def greeting(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=3) as s:
        return s.recv(64).decode().strip()


# ---------------------------------------------------------------- fixtures


@dataclass
class ExtHost:
    ns: str
    cidr: str  # the /24 of the namespace
    addr: str  # the server's address inside it
    port: int


@pytest.fixture(scope="module")
def ext_host() -> Iterator[ExtHost]:
    """An "external host": a network namespace behind a veth, with a server."""
    tag = secrets.token_hex(3)
    ns, hif = f"slt-ext-{tag}", f"sltx{tag}"
    routes = sh("ip -4 route show table all")
    third = next(n for n in range(10, 250) if f"10.201.{n}." not in routes)
    net = f"10.201.{third}"
    server = None
    try:
        sh(f"ip netns add {ns}")
        sh(f"ip link add {hif} type veth peer name eth0 netns {ns}")
        sh(f"ip addr add {net}.1/24 dev {hif} && ip link set {hif} up")
        sh(f"ip -n {ns} addr add {net}.2/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up")
        # Safety: traffic to the external host must stay on this machine.
        assert f"dev {hif}" in sh(f"ip route get {net}.2"), "the test /24 is not routed to its veth"
        server = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", GREETER, f"{net}.2", str(EXT_PORT),
                                   "ext-ok"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=host_tool_env())
        assert server.stdout is not None and server.stdout.readline().strip() == "listening", server.stderr
        yield ExtHost(ns, f"{net}.0/24", f"{net}.2", EXT_PORT)
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        sh(f"ip link del {hif}", check=False)
        sh(f"ip netns del {ns}", check=False)


@dataclass
class TcpRunner:
    runner: Runner
    session: sandlot.Session
    port: int


@pytest.fixture(scope="module")
def tcp_runner(ext_host: ExtHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcpRunner]:
    """A runner on TCP (every host address, with a token), in a private mount
    namespace whose /etc/hosts names the external host and whose name server
    is 127.0.0.1 (so no lookup leaves the machine)."""
    base = tmp_path_factory.mktemp("netrunner")
    os.chmod(base, 0o700)
    (base / "hosts").write_text(f"127.0.0.1 localhost\n{ext_host.addr} ext.sandlot.test\n")
    (base / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    token = secrets.token_hex(16)
    (base / "token").write_text(token)
    os.chmod(base / "token", 0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wrapper = base / "sandlotd-private-etc"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec unshare -m --propagation private sh -c 'mount --bind {base}/hosts /etc/hosts && "
        f"mount --bind {base}/resolv.conf /etc/resolv.conf && exec \"$0\" \"$@\"' {runner_binary()} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    old = os.environ.get("SANDLOT_RUNNER_BIN")
    os.environ["SANDLOT_RUNNER_BIN"] = str(wrapper)
    try:
        r = start_runner(base, ["--listen", f"0.0.0.0:{port}", "--token-file", str(base / "token")])
    finally:
        if old is None:
            os.environ.pop("SANDLOT_RUNNER_BIN", None)
        else:
            os.environ["SANDLOT_RUNNER_BIN"] = old
    s = sandlot.Session(f"http://127.0.0.1:{port}", token=token)
    try:
        assert s.health()["network"]["available"]
        yield TcpRunner(r, s, port)
    finally:
        s.close()
        stop(r)


@pytest.fixture
def boxes(tcp_runner: TcpRunner) -> Iterator[list[Sandbox]]:
    """Sandboxes a test creates on the TCP runner, terminated after it."""
    made: list[Sandbox] = []
    yield made
    for sb in made:
        sb.terminate()


def make(boxes: list[Sandbox], tcp: TcpRunner, **kw) -> Sandbox:  # type: ignore[no-untyped-def]
    sb = Sandbox.create(timeout=120, session=tcp.session, **kw)
    boxes.append(sb)
    return sb


# ---------------------------------------------------------------- validation


def test_default_sandbox_has_only_lo(sandbox: Sandbox) -> None:
    p = sandbox.exec("ls /sys/class/net; ip -4 route")
    assert p.wait(timeout=30) == 0
    assert p.stdout.read().split() == ["lo"]
    assert sandbox.info().network is None
    assert sandbox.tunnels() == {}
    assert not [l for l in sh("ip -br link").splitlines() if l.startswith(host_if(sandbox))]


def test_network_options_are_validated_before_anything_is_sent(session: sandlot.Session) -> None:
    with pytest.raises(ValueError, match="network.egress"):
        NetworkOptions(egress="some")
    with pytest.raises(TypeError, match="network.egress"):
        NetworkOptions(egress=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"network.egress\[0\].*IPv6"):
        NetworkOptions(egress=["fd00::/8"])
    with pytest.raises(ValueError, match=r"network.egress\[1\]"):
        NetworkOptions(egress=["10.1.0.0/16", "10.0.0.0/33"])
    with pytest.raises(ValueError, match=r"egress='all'"):
        NetworkOptions(egress=["0.0.0.0/0"])
    with pytest.raises(ValueError, match=r"network.egress\[0\]"):
        NetworkOptions(egress=["bad_name!"])
    with pytest.raises(ValueError, match="network: unknown key"):
        Sandbox.create(session=session, network={"egres": "all"})
    with pytest.raises(TypeError, match="network must be"):
        Sandbox.create(session=session, network="all")
    with pytest.raises(ValueError, match=r"ports\[0\]"):
        Sandbox.create(session=session, ports=[0])
    with pytest.raises(TypeError, match="ports must be"):
        Sandbox.create(session=session, ports="8000")
    with pytest.raises(ValueError, match="listed twice"):
        Sandbox.create(session=session, ports=[8000, {"container_port": 8000}])
    with pytest.raises(ValueError, match="only tcp"):
        Sandbox.create(session=session, ports=[{"container_port": 53, "protocol": "udp"}])
    with pytest.raises(ValueError, match="network.egress"):
        RemoteFunction(abs, session=session, network={"egress": "bogus"})
    with pytest.raises(TypeError, match=r"ports\[0\]"):
        RemoteFunction(abs, session=session, ports=[{"container_port": "80"}])
    # Accepted spellings.
    assert NetworkOptions(egress=["10.1.2.3", "10.1.0.0/16", "db.internal"]).to_wire()["egress"][2] == "db.internal"


BAD_BODIES = [
    ({"network": "all"}, "field 'network' must be a map"),
    ({"network": {"egress": 3}}, "field 'network.egress' must be"),
    ({"network": {"egress": "everything"}}, "field 'network.egress' must be"),
    ({"network": {"egress": "all", "dns": True}}, "field 'network': unknown key 'dns'"),
    ({"network": {"egress": ["fd00::/8"]}}, "IPv6"),
    ({"network": {"egress": ["10.0.0.0/40"]}}, "bad prefix length"),
    ({"network": {"egress": ["no spaces allowed"]}}, "neither a CIDR"),
    ({"network": {"egress": [7]}}, "field 'network.egress[0]'"),
    ({"network": {"egress": ["10.0.0.1"] * 65}}, "at most 64"),
    ({"ports": [0]}, "field 'ports[0]'"),
    ({"ports": ["80"]}, "field 'ports[0]'"),
    ({"ports": 80}, "field 'ports' must be a list"),
    ({"ports": [80, 80]}, "listed twice"),
    ({"ports": list(range(1, 18))}, "at most 16"),
]


def test_the_runner_checks_network_options_too(tcp_runner: TcpRunner) -> None:
    s = tcp_runner.session
    for body, msg in BAD_BODIES:
        with pytest.raises(InvalidArgumentError, match=msg.replace("[", r"\[").replace("]", r"\]")) as ei:
            s.request("POST", "/v1/sandboxes", {"cmd": None, **body}).result()
        assert ei.value.status == 400 and ei.value.code == "bad_request"
    # A name no resolver knows: the runner's name server is 127.0.0.1, so the
    # lookup fails on this machine.
    with pytest.raises(InvalidArgumentError, match="cannot resolve host name 'nowhere.sandlot.test'"):
        s.request("POST", "/v1/sandboxes", {"network": {"egress": ["nowhere.sandlot.test"]}}).result()
    # Still serving, and nothing was left behind.
    assert s.health()["ok"]
    with Sandbox.create(session=s, network={"egress": "all"}) as sb:
        assert sb.info().network["address"].startswith("10.200.")


# ---------------------------------------------------------------- egress


def test_egress_all_reaches_the_outside_and_nothing_of_the_host_or_other_sandboxes(
    tcp_runner: TcpRunner, ext_host: ExtHost, boxes: list[Sandbox]
) -> None:
    a = make(boxes, tcp_runner, network=NetworkOptions(egress="all"))
    b = make(boxes, tcp_runner, cmd=["python3", "-c", GREETER, "0.0.0.0", "8000", "b-ok"],
             network={"egress": "all"})
    na, nb = a.info().network, b.info().network
    assert na["egress"] == "all" and na["address"] != nb["address"]
    gw = na["gateway"]

    # (d) allowed: the external host.
    assert probe(a, ext_host.addr, ext_host.port) == "OK:ext-ok"

    # (a) the host itself: a server on its loopback and one on the host side
    # of this very sandbox's veth; both answer the host, neither the sandbox.
    lo_srv, gw_srv = Greeter("127.0.0.1", "host-lo"), Greeter(gw, "host-gw")
    try:
        assert greeting("127.0.0.1", lo_srv.port) == "host-lo"
        assert greeting(gw, gw_srv.port) == "host-gw"
        assert probe(a, "127.0.0.1", lo_srv.port).startswith("ERR:")
        assert probe(a, gw, gw_srv.port).startswith("ERR:")
        assert gw_srv.accepted == 1  # only the host's own connection got through
    finally:
        lo_srv.close()
        gw_srv.close()

    # (b) the runner's TCP API, listening on every host address: not through
    # the sandbox's gateway, not through the external host's side either.
    socket.create_connection((gw, tcp_runner.port), timeout=3).close()  # the host reaches it there
    for addr in (gw, ext_host.cidr.replace(".0/24", ".1"), "127.0.0.1"):
        assert probe(a, addr, tcp_runner.port).startswith("ERR:"), addr

    # (c) another sandbox's listening port: up (b reaches itself), refused to a.
    deadline = time.monotonic() + 20
    while probe(b, "127.0.0.1", 8000) != "OK:b-ok":
        assert time.monotonic() < deadline, "the server in sandbox b did not start"
        time.sleep(0.2)
    assert probe(a, nb["address"], 8000).startswith("ERR:")
    assert probe(b, na["address"], 8000).startswith("ERR:")


@pytest.mark.parametrize(
    "egress, reachable",
    [
        ("cidr", True),
        ("address", True),
        ("name", True),
        ("other", False),
        ("none-with-ports", False),
        ("none", False),
    ],
)
def test_allow_list_lets_through_only_what_it_names(
    tcp_runner: TcpRunner, ext_host: ExtHost, boxes: list[Sandbox], egress: str, reachable: bool
) -> None:
    kw: dict = {
        "cidr": {"network": {"egress": [ext_host.cidr]}},
        "address": {"network": {"egress": ["10.202.0.0/24", ext_host.addr]}},
        "name": {"network": {"egress": ["ext.sandlot.test"]}},
        "other": {"network": {"egress": ["10.202.0.0/24"]}},
        "none-with-ports": {"network": {"egress": "none"}, "ports": [9000]},
        "none": {},
    }[egress]
    sb = make(boxes, tcp_runner, **kw)
    got = probe(sb, ext_host.addr, ext_host.port)
    if reachable:
        assert got == "OK:ext-ok"
    else:
        assert got.startswith("ERR:"), got
    info = sb.info().network
    if egress == "name":
        assert info["allowed"] == [f"{ext_host.addr}/32"] and info["egress"] == ["ext.sandlot.test"]
    if egress == "none":
        assert info is None and "Network is unreachable" in got


def test_concurrent_creates_get_distinct_addresses(tcp_runner: TcpRunner, ext_host: ExtHost) -> None:
    async def main() -> list[Sandbox]:
        return list(await asyncio.gather(*[
            Sandbox.create.aio(network={"egress": [ext_host.cidr]}, timeout=120, session=tcp_runner.session)
            for _ in range(6)
        ]))

    sbs = asyncio.run(main())
    try:
        infos = [sb.info().network for sb in sbs]
        assert len({i["address"] for i in infos}) == 6 and len({i["gateway"] for i in infos}) == 6
        assert all(probe(sb, ext_host.addr, ext_host.port) == "OK:ext-ok" for sb in sbs[:2])
    finally:
        for sb in sbs:
            sb.terminate()
    for sb, i in zip(sbs, infos):
        gone(host_if(sb), i["gateway"])


def test_function_workers_get_the_network_policy(tcp_runner: TcpRunner, ext_host: ExtHost) -> None:
    opened = RemoteFunction(reach, session=tcp_runner.session, network=NetworkOptions(egress="all"), max_workers=1)
    closed = RemoteFunction(reach, session=tcp_runner.session, max_workers=1)
    try:
        assert opened.remote(ext_host.addr, ext_host.port).result(timeout=120) == "ext-ok"
        assert closed.remote(ext_host.addr, ext_host.port).result(timeout=120).startswith("ERR:")
        assert opened.info()["options"]["network"] == {"egress": "all"}
    finally:
        opened.delete()
        closed.delete()


def reach(host: str, port: int) -> str:
    """Worker side of test_function_workers_get_the_network_policy."""
    try:
        with socket.create_connection((host, port), timeout=1.5) as s:
            s.settimeout(2.0)
            return s.recv(64).decode().strip()
    except OSError as exc:
        return f"ERR:{type(exc).__name__}"


# ---------------------------------------------------------------- tunnels


SERVE = "mkdir -p /tmp/www && echo tunnelled > /tmp/www/index.txt && cd /tmp/www && " \
        "(python3 -m http.server 8001 --bind 0.0.0.0 >/dev/null 2>&1 &) && " \
        "exec python3 -m http.server 8000 --bind 0.0.0.0"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_ports_are_reachable_through_tunnels_and_nothing_else(session: sandlot.Session) -> None:
    sb = Sandbox.create(SERVE, ports=[8000], timeout=120, session=session)
    try:
        tunnels = sb.tunnels()
        assert list(tunnels) == [8000]
        t = tunnels[8000]
        host, port = t
        assert host == "127.0.0.1" and t.url == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                assert fetch(t.url + "/index.txt") == "tunnelled\n"
                break
            except OSError:
                assert time.monotonic() < deadline, "the server in the sandbox did not start"
                time.sleep(0.2)
        # Many requests, one after the other, and a large body both ways.
        for _ in range(20):
            assert fetch(t.url + "/index.txt") == "tunnelled\n"
        big = sb.exec("head -c 3000000 /dev/urandom > /tmp/www/big && sha256sum /tmp/www/big")
        assert big.wait(timeout=30) == 0
        import hashlib
        assert hashlib.sha256(urllib.request.urlopen(t.url + "/big", timeout=30).read()).hexdigest() == \
            big.stdout.read().split()[0]
        # 8001 is listening inside but not listed: no tunnel, and the host
        # cannot reach it on the sandbox's address either (8000 it can).
        addr = sb.info().network["address"]
        inside = sb.exec(["python3", "-c", PROBE, "127.0.0.1", "8001"])
        assert inside.wait(timeout=30) == 0
        assert fetch(f"http://{addr}:8000/index.txt") == "tunnelled\n"
        with pytest.raises(OSError):
            socket.create_connection((addr, 8001), timeout=1.5).close()
    finally:
        sb.terminate()
    # The tunnel closed with the sandbox.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(NotFoundError):
        sb.tunnels()


def test_tunnels_aio(session: sandlot.Session) -> None:
    async def main() -> dict:
        async with await Sandbox.create.aio(SERVE, ports=[{"container_port": 8000}], session=session) as sb:
            return await sb.tunnels.aio()

    tunnels = asyncio.run(main())
    assert list(tunnels) == [8000] and tunnels[8000].host == "127.0.0.1"


# ---------------------------------------------------------------- cleanup


def leftovers(ifname: str, addr: str | None = None) -> list[str]:
    """What of one sandbox's network is still on the host."""
    out = [l for l in sh("ip -br link").splitlines() if l.split()[0].split("@")[0] == ifname]
    out += [l for l in sh("nft list ruleset").splitlines() if ifname in l]
    if addr is not None:
        out += [l for l in sh("ip -4 -br addr").splitlines() if f" {addr}/" in l]
    return out


def gone(ifname: str, addr: str | None) -> None:
    """Wait (bounded) until nothing of that sandbox's network is left: the
    pair goes with the sandbox's network namespace and the set elements are
    removed by an nft child process, both a moment after init is reaped."""
    deadline = time.monotonic() + 15
    while leftovers(ifname, addr):
        assert time.monotonic() < deadline, leftovers(ifname, addr)
        time.sleep(0.1)


def test_terminate_timeout_and_runner_stop_leave_nothing_behind(tmp_path: Path, session: sandlot.Session) -> None:
    # terminate
    sb = Sandbox.create(network={"egress": "all"}, ports=[8000], session=session)
    try:
        info = sb.info().network
        assert len(leftovers(host_if(sb), info["gateway"])) >= 5  # link, address, set elements
    finally:
        sb.terminate()
    gone(host_if(sb), info["gateway"])
    # timeout
    sb = Sandbox.create(network={"egress": ["10.202.0.0/24"]}, timeout=1, session=session)
    try:
        info = sb.info().network
        assert sb.wait(timeout=30) == -9
    finally:
        sb.terminate()
    gone(host_if(sb), info["gateway"])
    # runner stop: its table goes too
    base = tmp_path / "r"
    base.mkdir(mode=0o700)
    r = start_runner(base)
    try:
        s = sandlot.Session(r.url)
        table = s.health()["network"]["table"]
        assert table in sh("nft list tables")
        sbs = [Sandbox.create(network={"egress": "all"}, ports=[8000], session=s) for _ in range(2)]
        infos = [x.info().network for x in sbs]
        s.close()
    finally:
        stop(r)  # kills what it still runs
        shutil.rmtree(base, ignore_errors=True)
    assert r.proc.returncode == 0
    assert table not in sh("nft list tables")
    for x, i in zip(sbs, infos):
        gone(host_if(x), i["gateway"])


def test_a_killed_runners_table_is_swept_by_the_next_runner(tmp_path: Path) -> None:
    dead, alive = tmp_path / "dead", tmp_path / "alive"
    dead.mkdir(mode=0o700)
    alive.mkdir(mode=0o700)
    r = start_runner(dead)
    try:
        s = sandlot.Session(r.url)
        table = s.health()["network"]["table"]
        s.close()
    finally:
        r.proc.kill()  # no chance to delete its table
        r.proc.wait(20)
    r2 = None
    try:
        assert table in sh("nft list tables")
        r2 = start_runner(alive)  # another state dir: another table, and a sweep
        assert table not in sh("nft list tables")
        s = sandlot.Session(r2.url)
        assert s.health()["network"]["table"] in sh("nft list tables")  # its own stays
        s.close()
    finally:
        if r2 is not None:
            stop(r2)
        sh(f"nft delete table inet {table}", check=False)
        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)
