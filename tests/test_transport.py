"""The C transport (csrc/transport + ext/client.c) against a real msgpack HTTP
server on a unix socket and on TCP (tests/_msgpack_server.py, its own process).

Independent of the runner: these test what the I/O thread does with sockets,
keep-alive, errors, limits, cancellation, threads and fork().
"""

import concurrent.futures
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sandlot import _core

from _core_helpers import RunnerError, mapper, server, wait_until  # noqa: F401 (fixtures)
from _msgpack_server import ServerProcess




@pytest.fixture(params=["unix", "tcp"])
def client(request, server):
    return _core.Client(server.unix_url if request.param == "unix" else server.tcp_url)



@pytest.fixture
def no_mapper():
    _core.set_error_mapper(None)  # sandlot installs one at import



# --- values and headers -----------------------------------------------------


def test_module_constants():
    assert _core.MAX_BODY == 65 * 1024 * 1024
    assert _core.MAX_DEPTH == 64
    assert _core.__version__ == "0.1.0"


def test_echo_roundtrip(client):
    body = {"s": "héllo", "n": [1, -2, 2**40], "b": b"\x00\xff", "f": 1.5, "none": None}
    v = client.request("POST", "/echo", body).result(timeout=10)
    assert v["body"] == body
    assert v["method"] == "POST"
    assert v["content_type"] == "application/msgpack"
    assert v["auth"] is None
    assert v["expect"] is None


def test_methods_and_no_body(client):
    assert client.request("GET", "/echo").result(timeout=10)["body"] is None
    for m in ("PUT", "PATCH", "DELETE", "POST"):
        v = client.request(m, "/echo", {"m": m}).result(timeout=10)
        assert v["method"] == m and v["body"] == {"m": m}
    v = client.request("POST", "/echo").result(timeout=10)
    assert v["method"] == "POST" and v["body"] is None


def test_bearer_token(server):
    c = _core.Client(server.tcp_url, token="s3cret")
    assert c.request("GET", "/echo").result(timeout=10)["auth"] == "Bearer s3cret"
    assert c.base_url == server.tcp_url


def test_large_request_body_sent_without_expect(client):
    # Over 1 MiB libcurl would send "Expect: 100-continue" unless disabled.
    data = os.urandom(3 << 20)
    t = time.monotonic()
    v = client.request("POST", "/echo", {"data": data}).result(timeout=20)
    assert v["body"]["data"] == data
    assert v["expect"] is None
    assert time.monotonic() - t < 5


def test_empty_2xx_body_is_empty_dict(client):
    assert client.request("GET", "/empty").result(timeout=10) == {}


def test_large_response_under_limit(client):
    v = client.request("GET", "/huge/5000000").result(timeout=30)
    assert v["data"] == b"x" * 5000000
    v = client.request("GET", "/huge/3000000?chunked=1").result(timeout=30)
    assert len(v["data"]) == 3000000


# --- errors -------------------------------------------------------------------


def test_error_response_goes_through_mapper(client, mapper):
    ref = client.request("GET", "/error/404/not_found")
    with pytest.raises(RunnerError) as ei:
        ref.result(timeout=10)
    assert (ei.value.status, ei.value.code) == (404, "not_found")
    assert ei.value.message == "not_found happened"
    assert ref.exception() is ei.value  # cached, not rebuilt


def test_error_without_mapper_is_runtime_error(client, no_mapper):
    with pytest.raises(RuntimeError, match=r"conflict: conflict happened \(HTTP 409\)"):
        client.request("POST", "/error/409/conflict").result(timeout=10)


def test_non_msgpack_error_body_is_internal(client, mapper):
    e = client.request("GET", "/raw/502").exception(timeout=10)
    assert (e.status, e.code) == (502, "internal")
    assert "HTTP 502" in e.message and "plain text failure" in e.message


def test_invalid_msgpack_in_2xx_is_internal(client, mapper):
    e = client.request("GET", "/badmsgpack").exception(timeout=10)
    assert (e.status, e.code) == (200, "internal")
    assert "invalid msgpack" in e.message


def test_unavailable_when_socket_missing(tmp_path, mapper):
    url = f"unix://{tmp_path}/nope.sock"
    e = _core.Client(url).request("GET", "/x").exception(timeout=10)
    assert (e.status, e.code) == (0, "unavailable")
    assert e.message == f"cannot connect to {url}: No such file or directory"


def test_unavailable_when_nobody_listens(tmp_path, mapper):
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)  # the file exists, but there is no listen()
    try:
        t = time.monotonic()
        e = _core.Client("unix://" + path).request("GET", "/x").exception(timeout=10)
        assert (e.status, e.code) == (0, "unavailable")
        assert "Connection refused" in e.message
        assert time.monotonic() - t < 2  # refused is not retried like a full backlog
    finally:
        s.close()


def test_unavailable_tcp_refused(mapper):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    e = _core.Client(f"http://127.0.0.1:{port}").request("GET", "/x").exception(timeout=10)
    assert (e.status, e.code) == (0, "unavailable")
    assert "Connection refused" in e.message


def test_connection_dropped_is_unavailable(client, mapper):
    # The server had the request and closed without answering: "runner_exited"
    # (sandlot.RunnerExitedError, a RunnerUnavailableError), not "cannot connect".
    e = client.request("GET", "/close").exception(timeout=10)
    assert (e.status, e.code) == (0, "runner_exited")
    assert "the runner exited while this call was running" in e.message
    # The transport is fine afterwards.
    assert client.request("GET", "/echo").result(timeout=10)["method"] == "GET"


def test_request_timeout(client, mapper):
    t = time.monotonic()
    e = client.request("GET", "/sleep/5", timeout=0.3).exception(timeout=10)
    assert (e.status, e.code) == (0, "timeout")
    assert "timed out after 0.300 s" in e.message
    assert time.monotonic() - t < 3


def test_response_larger_than_max_body(client, mapper, server):
    n = _core.MAX_BODY + 1
    for path in (f"/huge/{n}", f"/huge/{n}?chunked=1"):  # Content-Length, then streamed
        e = client.request("GET", path).exception(timeout=60)
        assert e.code == "payload_too_large", path
        assert "SL_MAX_BODY" in e.message and str(_core.MAX_BODY) in e.message


def test_request_body_too_large_raises_at_once(client):
    with pytest.raises(ValueError, match="MAX_BODY"):
        client.request("POST", "/echo", b"x" * (_core.MAX_BODY + 1))


@pytest.mark.parametrize("url", ["", "unix://rel.sock", "https://x", "ftp://x", "http://",
                                 "unix:///a b", "unix:///" + "x" * 200])
def test_bad_base_url(url):
    with pytest.raises(ValueError):
        _core.Client(url)


def test_bad_token():
    with pytest.raises(ValueError):
        _core.Client("http://127.0.0.1:1", token="a\r\nX-Evil: 1")


@pytest.mark.parametrize("method,path", [("GETX", "/a"), ("get", "/a"), ("GET", "a"),
                                         ("GET", "/a b"), ("GET", "/a\n")])
def test_bad_method_or_path(server, method, path):
    with pytest.raises(ValueError):
        _core.Client(server.unix_url).request(method, path)


def test_bad_arguments(server):
    c = _core.Client(server.unix_url)
    with pytest.raises(TypeError):
        c.request("GET", "/echo", transform=42)
    with pytest.raises(ValueError):
        c.request("GET", "/echo", timeout=-1)
    with pytest.raises(TypeError):
        c.request("POST", "/echo", {1, 2})  # packb refuses sets


def test_http_proxy_env_is_ignored(server):
    code = textwrap.dedent(f"""
        from sandlot import _core
        print(_core.Client({server.tcp_url!r}).request("GET", "/echo").result(timeout=10)["method"])
    """)
    env = dict(os.environ, http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.strip() == b"GET"


# --- connections --------------------------------------------------------------


def test_keepalive_reuses_one_connection(server):
    c = _core.Client(server.unix_url)
    c.request("GET", "/echo").result(timeout=10)  # warm up
    server.reset()
    for i in range(200):
        assert c.request("POST", "/echo", i).result(timeout=10)["body"] == i
    s = server.stats()
    assert s["requests"] == 200
    assert s["connections"] == 0  # all 200 on the connection opened before the reset


def test_clients_share_the_connection_pool(server):
    _core.Client(server.tcp_url).request("GET", "/echo").result(timeout=10)
    server.reset()
    for _ in range(20):
        _core.Client(server.tcp_url).request("GET", "/echo").result(timeout=10)
    assert server.stats()["connections"] == 0


def test_50_threads_x_100_requests(server):
    c = _core.Client(server.unix_url)
    server.reset()
    errors = []

    def worker(k):
        try:
            for i in range(100):
                v = c.request("POST", "/echo", [k, i]).result(timeout=30)
                assert v["body"] == [k, i]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    s = server.stats()
    assert s["requests"] == 5000
    assert s["connections"] <= 100  # at most ~one per thread: keep-alive works


def test_burst_of_1000_in_flight(server):
    c = _core.Client(server.unix_url)
    refs = [c.request("POST", "/echo", i) for i in range(1000)]
    assert [r.result(timeout=60)["body"] for r in refs] == list(range(1000))


def test_full_listen_backlog_is_retried(tmp_path):
    # Backlog 1 and a slow accept loop: most connect()s get EAGAIN at first.
    srv = ServerProcess(tmp_path, backlog=1)
    try:
        c = _core.Client(srv.unix_url)
        refs = [c.request("POST", "/echo", i) for i in range(300)]
        assert [r.result(timeout=60)["body"] for r in refs] == list(range(300))
    finally:
        srv.stop()


def test_long_polls_do_not_starve_short_requests(server):
    c = _core.Client(server.unix_url)
    polls = [c.request("GET", "/sleep/3") for _ in range(150)]
    time.sleep(0.3)
    t = time.monotonic()
    assert c.request("GET", "/echo").result(timeout=10)["method"] == "GET"
    assert time.monotonic() - t < 2.0  # queued behind the polls it would take >= 2.7 s
    for p in polls:
        p.cancel()


def test_request_returns_without_waiting(server):
    c = _core.Client(server.unix_url)
    t = time.monotonic()
    refs = [c.request("GET", "/sleep/1") for _ in range(20)]
    assert time.monotonic() - t < 0.5
    assert not any(r.done() for r in refs)
    for r in refs:
        assert r.result(timeout=10) == {"slept": 1.0}


# --- cancellation ---------------------------------------------------------------


def test_cancel_sleeping_request_drops_connection(server):
    c = _core.Client(server.unix_url)
    server.reset()
    ref = c.request("GET", "/sleep/20")
    time.sleep(0.3)  # let it reach the server
    t = time.monotonic()
    assert ref.cancel() is True
    assert ref.cancelled() and ref.done()
    assert ref.cancel() is False
    with pytest.raises(concurrent.futures.CancelledError):
        ref.result()
    with pytest.raises(concurrent.futures.CancelledError):
        ref.exception()
    assert time.monotonic() - t < 1
    assert wait_until(lambda: server.stats()["aborted"] == 1)


def test_cancel_after_done_returns_false(client):
    ref = client.request("GET", "/echo")
    ref.result(timeout=10)
    assert ref.cancel() is False
    assert not ref.cancelled()
    assert ref.result()["method"] == "GET"


def test_cancel_race_with_completion(server):
    c = _core.Client(server.unix_url)
    for _ in range(20):
        refs = [c.request("POST", "/echo", i) for i in range(50)]
        won = [r.cancel() for r in refs]
        for i, (r, w) in enumerate(zip(refs, won)):
            assert r.done()
            assert r.cancelled() == w
            if not w:
                assert r.result()["body"] == i
    assert c.request("GET", "/echo").result(timeout=10)["method"] == "GET"


def test_client_close_cancels_its_requests_only(server):
    a, b = _core.Client(server.unix_url), _core.Client(server.unix_url)
    ra = [a.request("GET", "/sleep/10") for _ in range(5)]
    rb = b.request("GET", "/sleep/0.5")
    time.sleep(0.2)
    a.close()
    a.close()  # idempotent
    for r in ra:
        with pytest.raises(concurrent.futures.CancelledError):
            r.result(timeout=5)
        assert r.cancelled()
    assert rb.result(timeout=10) == {"slept": 0.5}
    with pytest.raises(RuntimeError, match="closed"):
        a.request("GET", "/echo")


# --- process lifecycle ----------------------------------------------------------


def run_python(code, timeout=60):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          timeout=timeout)


def test_exit_with_pending_requests(server):
    out = run_python(f"""
        import threading, time
        from sandlot import _core
        c = _core.Client({server.unix_url!r})
        refs = [c.request("GET", "/sleep/30") for _ in range(50)]
        got = []
        def waiter():
            try:
                refs[0].result()
            except BaseException as e:
                got.append(e)
        threading.Thread(target=waiter, daemon=True).start()
        refs[1].add_done_callback(lambda r: None)
        time.sleep(0.3)
        print("exiting", flush=True)
    """)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.strip() == b"exiting"


def test_refs_fail_unavailable_after_shutdown(server):
    out = run_python(f"""
        from sandlot import _core
        _core.set_error_mapper(None)
        c = _core.Client({server.unix_url!r})
        ref = c.request("GET", "/sleep/30")
        _core._shutdown()
        print(ref.exception(timeout=5))
        print(c.request("GET", "/echo").exception(timeout=5))
    """)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines == ["unavailable: the sandlot client is shutting down"] * 2


def test_fork_child_requests_while_parent_keeps_requesting(server, mapper):
    c = _core.Client(server.unix_url)
    stop = threading.Event()
    errors = []

    def hammer():
        try:
            while not stop.is_set():
                assert c.request("GET", "/echo").result(timeout=30)["method"] == "GET"
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            inflight = c.request("GET", "/sleep/1")
            pid = os.fork()
            if pid == 0:  # child: only this thread exists; locks may be held
                rc = 1
                try:
                    e = inflight.exception(timeout=5)
                    assert isinstance(e, RunnerError) and e.code == "unavailable", e
                    assert "forked" in e.message
                    assert inflight.cancel() is False
                    v = _core.Client(server.unix_url).request("POST", "/echo", "child")
                    assert v.result(timeout=10)["body"] == "child"
                    assert c.request("GET", "/echo").result(timeout=10)["method"] == "GET"
                    rc = 0
                finally:
                    os._exit(rc)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert inflight.result(timeout=10) == {"slept": 1.0}  # parent unaffected
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
