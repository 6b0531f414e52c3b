#!/usr/bin/env python3
"""Smoke test for sandlotd against the runner API (docs/protocol.md section 1).

A development script, not a pytest module: it starts real runners (real
sockets, real sandboxes) in a temporary directory and drives every endpoint,
the garbage cases and the start-up/shutdown paths. Run as root:

    python3 tests/runner_smoke.py --sandlotd /tmp/runner/sandlotd \
        --init /tmp/runner/sandlot-init [-k name-substring] [-v]

With a runner built with -fsanitize=address,undefined, any sanitizer report in
a runner's log fails the run. Exit status 0 means every check passed.
"""

import argparse
import http.client
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import msgpack

VERBOSE = False


def log(*a):
    if VERBOSE:
        print("   ", *a, flush=True)


class Fail(AssertionError):
    pass


def check(cond, what, *detail):
    if not cond:
        raise Fail(what + ("" if not detail else ": " + " ".join(repr(d) for d in detail)))


def check_error(resp, status, code, contains=None):
    st, body = resp
    check(st == status, f"expected HTTP {status}", st, body)
    check(isinstance(body, dict) and isinstance(body.get("error"), dict), "error body shape", body)
    check(body["error"].get("code") == code, f"expected error code {code}", body)
    check(isinstance(body["error"].get("message"), str), "error message is a str", body)
    if contains is not None:
        check(contains in body["error"]["message"], f"message mentions {contains!r}", body)


class UnixConn(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Runner:
    """One sandlotd process with its own socket, state dir and log."""

    def __init__(self, args, root, name, extra=(), env=None, tcp=None, token=None):
        self.args = args
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, mode=0o700)
        self.sock = os.path.join(self.dir, "sock", "sandlotd.sock")
        self.state = os.path.join(self.dir, "state")
        self.logpath = os.path.join(self.dir, "log")
        self.extra = list(extra)
        self.env = env
        self.tcp = tcp
        self.token = token
        self.proc = None

    def cmdline(self):
        return [self.args.sandlotd, "--socket", self.sock, "--state-dir", self.state,
                "--init", self.args.init, "--log-level", "debug"] + self.extra

    def start(self):
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if self.env:
            env.update(self.env)
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.cmdline(), stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, env=env)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Fail(f"runner exited early with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                if self.call("GET", "/v1/health", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise Fail("runner did not come up")

    def conn(self, timeout=60):
        if self.tcp:
            return http.client.HTTPConnection(self.tcp[0], self.tcp[1], timeout=timeout)
        return UnixConn(self.sock, timeout=timeout)

    def call(self, method, path, body=None, raw=None, headers=None, conn=None, timeout=60,
             token=None):
        c = conn or self.conn(timeout)
        hdrs = {}
        data = b""
        if raw is not None:
            data = raw
            hdrs["Content-Type"] = "application/msgpack"
        elif body is not None:
            data = msgpack.packb(body, use_bin_type=True)
            hdrs["Content-Type"] = "application/msgpack"
        tok = token if token is not None else self.token
        if tok:
            hdrs["Authorization"] = "Bearer " + tok
        if headers:
            hdrs.update(headers)
        c.request(method, path, body=data, headers=hdrs)
        r = c.getresponse()
        payload = r.read()
        if conn is None:
            c.close()
        try:
            value = msgpack.unpackb(payload, raw=False) if payload else None
        except Exception:
            value = payload
        return r.status, value

    # convenience wrappers
    def create(self, **kw):
        st, b = self.call("POST", "/v1/sandboxes", kw)
        check(st == 201, "create -> 201", st, b)
        return b["sandbox"]

    def sb(self, sid, op, body=None):
        return self.call("POST", f"/v1/sandboxes/{sid}/{op}", body if body is not None else {})

    def exec(self, sid, cmd, **kw):
        kw["cmd"] = cmd
        st, b = self.sb(sid, "exec", kw)
        check(st == 201, "exec -> 201", st, b)
        return b["process"]["process_id"]

    def pwait(self, sid, n, timeout=20):
        st, b = self.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/wait", {"timeout": timeout})
        check(st == 200 and b["done"], "process finished", st, b)
        return b["exit_code"]

    def output(self, sid, n, stream="stdout", timeout=20):
        """Read a stream to EOF."""
        out, off = b"", 0
        deadline = time.time() + timeout
        while time.time() < deadline:
            st, b = self.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                              {"stream": stream, "offset": off, "timeout": 5})
            check(st == 200, "output -> 200", st, b)
            out += b["data"]
            off = b["offset"]
            if b["eof"]:
                return out
        raise Fail("output did not reach EOF")

    def terminate(self, sid):
        return self.sb(sid, "terminate")

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail("runner did not stop on SIGTERM")
        self.logf.close()
        return rc

    def check_log_clean(self):
        text = self.log_text()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "SUMMARY: UndefinedBehaviorSanitizer", "bug:"):
            check(bad not in text, f"runner log contains {bad!r}",
                  text[max(0, text.find(bad) - 200):text.find(bad) + 3000])


def raw_request(path_or_addr, data, read=True, timeout=10):
    """Send raw bytes on a fresh connection; return what came back."""
    if isinstance(path_or_addr, tuple):
        s = socket.create_connection(path_or_addr, timeout=timeout)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(path_or_addr)
    try:
        s.sendall(data)
        if not read:
            return s
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            buf += chunk
            if b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(rest) >= int(line.split(b":")[1]):
                            return buf
        return buf
    finally:
        if read:
            s.close()


def status_of(raw):
    try:
        return int(raw.split(b" ", 2)[1])
    except Exception:
        return None


def only_pool_shells(rt):
    """The sandboxes dir holds nothing but the runner's pre-set-up sandboxes
    (--pool, default 2; each named in the debug log when it starts)."""
    names = os.listdir(os.path.join(rt.state, "sandboxes"))
    with open(rt.logpath, errors="replace") as f:
        log = f.read()
    return len(names) <= 2 and all(f"pool: {n} starting" in log for n in names)


def wait_until(fn, timeout=10, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if fn():
            return True
        time.sleep(step)
    return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- tests


def test_version(rt, ctx):
    out = subprocess.run([ctx.args.sandlotd, "--version"], capture_output=True, text=True)
    check(out.returncode == 0 and out.stdout.startswith("sandlotd "), "--version", out.stdout)


def test_health(rt, ctx):
    st, b = rt.call("GET", "/v1/health")
    check(st == 200, "health 200", st)
    for k, t in (("ok", bool), ("version", str), ("runner_id", str), ("pid", int),
                 ("cgroup", str), ("sandboxes", int), ("uptime", float)):
        check(isinstance(b.get(k), t), f"health.{k} is {t.__name__}", b)
    check(b["ok"] is True and b["cgroup"] in ("v1", "v2", "hybrid", "none"), "health values", b)
    check(b["pid"] == rt.proc.pid, "health pid is the runner's", b)


def test_create_echo_wait_output(rt, ctx):
    info = rt.create(cmd=["sh", "-c", "echo hello; echo oops >&2; echo \"$FOO $TOKEN\"; exit 3"],
                     env={"FOO": "bar"}, secrets={"TOKEN": "s3cret-value"}, timeout=30)
    sid = info["sandbox_id"]
    check(sid.startswith("sb-") and len(sid) == 19 and all(c in "0123456789abcdef" for c in sid[3:]),
          "sandbox id format", sid)
    keys = {"sandbox_id", "status", "exit_code", "cmd", "image", "workdir", "env", "secret_names",
            "volumes", "timeout", "created_at", "finished_at", "pid", "resources", "oom_killed", "network",
            "isolation"}
    check(set(info) == keys, "SandboxInfo keys", sorted(info))
    check(info["resources"] is None and info["oom_killed"] is False, "no limits asked, none shown", info)
    check(info["network"] is None, "no network asked: only lo, none shown", info)
    check(info["image"] == "host" and info["env"] == {"FOO": "bar"}, "image/env", info)
    check(info["secret_names"] == ["TOKEN"], "secret names listed", info)
    check("s3cret-value" not in repr(info), "secret value not listed")
    check(info["timeout"] == 30.0 and isinstance(info["created_at"], float), "timeout/created_at")
    st, w = rt.sb(sid, "wait", {"timeout": 20})
    check(st == 200 and w == {"done": True, "exit_code": 3, "status": "exited"}, "wait", st, w)
    check(rt.output(sid, 0) == b"hello\nbar s3cret-value\n", "stdout")
    check(rt.output(sid, 0, "stderr") == b"oops\n", "stderr")
    st, b = rt.call("GET", f"/v1/sandboxes/{sid}")
    s = b["sandbox"]
    check(st == 200 and s["status"] == "exited" and s["exit_code"] == 3, "get after exit", s)
    check(s["finished_at"] is not None and s["finished_at"] >= s["created_at"], "finished_at", s)
    check(s["pid"] is None, "pid is nil after exit", s)
    st, b = rt.call("GET", "/v1/sandboxes")
    check(st == 200 and sid in [x["sandbox_id"] for x in b["sandboxes"]], "listed", b)
    st, b = rt.call("GET", f"/v1/sandboxes/{sid}/procs")
    check(st == 200 and len(b["processes"]) == 1, "procs", b)
    p = b["processes"][0]
    check(p["process_id"] == 0 and p["exit_code"] == 3 and p["status"] == "exited"
          and p["sandbox_id"] == sid and p["cmd"][0] == "sh", "entry ProcessInfo", p)
    st, b = rt.call("GET", f"/v1/sandboxes/{sid}/procs/0")
    check(st == 200 and b["process"]["exit_code"] == 3, "procs/0", b)
    check(rt.pwait(sid, 0) == 3, "procs/0/wait")
    check_error(rt.call("GET", f"/v1/sandboxes/{sid}/procs/1"), 404, "not_found")
    check_error(rt.call("GET", f"/v1/sandboxes/{sid}/procs/x"), 404, "not_found")
    check_error(rt.sb(sid, "exec", {"cmd": ["true"]}), 409, "conflict")
    # output stays readable after the end, a second terminate is a 404
    st, b = rt.terminate(sid)
    check(st == 200 and b["sandbox"]["status"] == "exited", "terminate of an ended sandbox", b)
    check_error(rt.terminate(sid), 404, "not_found")
    check("s3cret-value" not in rt.log_text(), "secret value never logged")


def test_pid_and_isolation(rt, ctx):
    info = rt.create(cmd=["sleep", "30"], timeout=30)
    sid = info["sandbox_id"]
    check(isinstance(info["pid"], int) and os.path.exists(f"/proc/{info['pid']}"), "init pid", info)
    # The runner's state and socket dirs are hidden (missing or empty) inside.
    n = rt.exec(sid, ["sh", "-c", f"echo $$; ls -A {rt.state} {os.path.dirname(rt.sock)} "
                      f"2>/dev/null; echo end"])
    check(rt.pwait(sid, n) == 0, "ls ok")
    out = rt.output(sid, n).split(b"\n")
    check(out[0] != b"" and int(out[0]) < 100, "pid namespace", out)
    check(b"sandboxes" not in out and b"sandlotd.sock" not in out, "state and socket masked", out)
    rt.terminate(sid)
    check(wait_until(lambda: not os.path.exists(f"/proc/{info['pid']}")), "init gone after terminate")
    check(wait_until(lambda: not os.path.exists(os.path.join(rt.state, "sandboxes", sid))),
          "per-sandbox dir removed")


def test_exec_stdin_signal(rt, ctx):
    sid = rt.create(timeout=60)["sandbox_id"]
    n = rt.exec(sid, ["cat"])
    check(n == 1, "exec'd processes count from 1", n)
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/1/stdin", {"data": b"abc"})
    check(st == 200 and b == {"written": 3}, "stdin", st, b)
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/1/stdin", {"data": b"def", "close": True})
    check(st == 200 and b == {"written": 3}, "stdin+close", st, b)
    check(rt.pwait(sid, 1) == 0, "cat exit 0")
    check(rt.output(sid, 1) == b"abcdef", "cat echoes stdin")
    check_error(rt.call("POST", f"/v1/sandboxes/{sid}/procs/1/stdin", {"data": b"x"}), 409,
                "conflict")
    # large stdin, through the buffered write path
    n = rt.exec(sid, ["sh", "-c", "wc -c"])
    big = os.urandom(3 * 1024 * 1024)
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/stdin", {"data": big, "close": True})
    check(st == 200 and b["written"] == len(big), "big stdin", st, b)
    check(rt.pwait(sid, n) == 0 and rt.output(sid, n).strip() == str(len(big)).encode(), "wc -c")
    n = rt.exec(sid, ["sh", "-c", "exit 7"])
    check(rt.pwait(sid, n) == 7, "exit 7")
    n = rt.exec(sid, ["pwd"], workdir="/tmp")
    check(rt.pwait(sid, n) == 0 and rt.output(sid, n) == b"/tmp\n", "workdir")
    n = rt.exec(sid, ["sh", "-c", "echo $A"], env={"A": "1"})
    check(rt.pwait(sid, n) == 0 and rt.output(sid, n) == b"1\n", "exec env")
    check_error(rt.sb(sid, "exec", {"cmd": ["/no/such/binary"]}), 422, "spawn_failed",
                "/no/such/binary")
    check_error(rt.sb(sid, "exec", {"cmd": ["true"], "workdir": "/no/such/dir"}), 422,
                "spawn_failed", "/no/such/dir")
    check_error(rt.sb(sid, "exec", {"cmd": []}), 400, "bad_request")
    check_error(rt.sb(sid, "exec", {"cmd": "echo"}), 400, "bad_request",
                "field 'cmd' must be an array of strings, got str")
    check_error(rt.sb(sid, "exec", {"cmd": ["echo", 1]}), 400, "bad_request", "item 1")
    check_error(rt.sb(sid, "exec", {"cmd": ["echo"], "workdir": "rel"}), 400, "bad_request")
    check_error(rt.sb(sid, "exec", {}), 400, "bad_request", "'cmd'")
    n = rt.exec(sid, ["sleep", "100"])
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/signal", {"signal": 15})
    check(st == 200 and b == {}, "signal", st, b)
    check(rt.pwait(sid, n) == -15, "killed by SIGTERM -> -15")
    check_error(rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/signal", {"signal": 15}), 409,
                "conflict")
    check_error(rt.call("POST", f"/v1/sandboxes/{sid}/procs/1/signal", {"signal": 0}), 400,
                "bad_request")
    # process ids stay dense and listed in order; failed spawns are not listed
    st, b = rt.call("GET", f"/v1/sandboxes/{sid}/procs")
    ids = [p["process_id"] for p in b["processes"]]
    check(ids == sorted(ids) and ids[0] == 1 and 0 not in ids, "procs ids", ids)
    # long-poll returns when data arrives, and after its timeout when none does
    n = rt.exec(sid, ["sh", "-c", "sleep 1; echo late; sleep 100"])
    t0 = time.time()
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                    {"stream": "stdout", "offset": 0, "timeout": 10})
    check(st == 200 and b["data"] == b"late\n" and b["offset"] == 5 and not b["eof"],
          "long-poll output", b)
    check(0.5 < time.time() - t0 < 5, "long-poll answered when data arrived", time.time() - t0)
    t0 = time.time()
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                    {"stream": "stdout", "offset": 5, "timeout": 0.3})
    check(st == 200 and b["data"] == b"" and b["offset"] == 5 and not b["eof"], "poll timeout", b)
    check(0.25 < time.time() - t0 < 3, "poll waited its timeout", time.time() - t0)
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/wait", {"timeout": 0.2})
    check(st == 200 and b == {"done": False, "exit_code": None}, "proc wait timeout", b)
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                    {"stream": "stdout", "offset": 0, "max_bytes": 2})
    check(b["data"] == b"la" and b["offset"] == 2 and not b["eof"] and not b["truncated"],
          "max_bytes", b)
    check_error(rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output", {"stream": "stdin"}),
                400, "bad_request")
    check_error(rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output", {"offset": -1}), 400,
                "bad_request")
    # the 8 MiB window: older bytes are dropped and reported as truncated
    n = rt.exec(sid, ["head", "-c", "10000000", "/dev/zero"])
    check(rt.pwait(sid, n) == 0, "head ok")
    wait_until(lambda: rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                               {"offset": 10000000})[1]["eof"])
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                    {"offset": 0, "max_bytes": 64 << 20})
    check(st == 200 and b["truncated"] and len(b["data"]) == 8 << 20 and b["offset"] == 10000000
          and b["eof"], "truncated window", {k: v for k, v in b.items() if k != "data"})
    rt.terminate(sid)


def test_spawn_failed_create(rt, ctx):
    before = len(rt.call("GET", "/v1/sandboxes")[1]["sandboxes"])
    check_error(rt.call("POST", "/v1/sandboxes", {"cmd": ["/no/such/binary"]}), 422,
                "spawn_failed", "/no/such/binary")
    check_error(rt.call("POST", "/v1/sandboxes", {"cmd": ["true"], "workdir": "/no/such/dir"}),
                422, "spawn_failed", "/no/such/dir")
    after = len(rt.call("GET", "/v1/sandboxes")[1]["sandboxes"])
    check(before == after, "failed creates are not listed", before, after)
    info = rt.create(cmd=["pwd"], workdir="/tmp")
    check(info["workdir"] == "/tmp", "workdir listed")
    check(rt.pwait(info["sandbox_id"], 0) == 0 and rt.output(info["sandbox_id"], 0) == b"/tmp\n",
          "entry workdir")
    rt.terminate(info["sandbox_id"])


def test_validation(rt, ctx):
    cases = [
        ({"cmd": "echo"}, "field 'cmd' must be an array of strings, got str"),
        ({"timeout": "x"}, "field 'timeout' must be a number, got str"),
        ({"timeout": 0}, "'timeout'"),
        ({"timeout": -1}, "'timeout'"),
        ({"timeout": 86401}, "'timeout'"),
        ({"env": {"A": 1}}, "'env'"),
        ({"env": ["A"]}, "'env'"),
        ({"env": {"A=B": "x"}}, "'env'"),
        ({"secrets": {"S": None}}, "'secrets'"),
        ({"workdir": "relative"}, "'workdir'"),
        ({"workdir": 5}, "'workdir'"),
        ({"image": 5}, "'image'"),
        ({"image": "dir:relative"}, "absolute"),
        ({"image": "dir:/no/such/dir"}, "/no/such/dir"),
        ({"volumes": {"relative": "v"}}, "'volumes'"),
        ({"volumes": {"/": "v"}}, "'volumes'"),
        ({"volumes": {"/a/../b": "v"}}, "'volumes'"),
        ({"volumes": {"/data": "bad name!"}}, "'volumes'"),
        ({"cmd": ["a\x00b"]}, "NUL"),
    ]
    for body, msg in cases:
        check_error(rt.call("POST", "/v1/sandboxes", body), 400, "bad_request", msg)
    check_error(rt.call("POST", "/v1/sandboxes", {"image": "no-such-image"}), 404, "not_found",
                "registered images")
    check_error(rt.call("GET", "/v1/sandboxes/sb-0000000000000000"), 404, "not_found")
    check_error(rt.call("POST", "/v1/sandboxes/sb-0000000000000000/wait", {}), 404, "not_found")
    check_error(rt.call("POST", "/v1/sandboxes/nonsense/terminate", {}), 404, "not_found")
    check_error(rt.call("POST", "/v1/sandboxes/sb-0000000000000000/files/read", {"path": "/x"}),
                404, "not_found")


def test_files(rt, ctx):
    sid = rt.create(timeout=60)["sandbox_id"]
    data = b"\x00\x01hello\xff"
    st, b = rt.sb(sid, "files/write", {"path": "/tmp/f.bin", "data": data, "mode": 0o600})
    check(st == 200 and b == {"written": len(data)}, "write", st, b)
    st, b = rt.sb(sid, "files/read", {"path": "/tmp/f.bin"})
    check(st == 200 and b == {"data": data}, "read back", st, b)
    n = rt.exec(sid, ["stat", "-c", "%a", "/tmp/f.bin"])
    check(rt.pwait(sid, n) == 0 and rt.output(sid, n) == b"600\n", "mode applied")
    n = rt.exec(sid, ["sh", "-c", "printf inside > /tmp/g"])
    rt.pwait(sid, n)
    check(rt.sb(sid, "files/read", {"path": "/tmp/g"}) == (200, {"data": b"inside"}),
          "read what a process wrote")
    big = os.urandom(5 << 20)
    check(rt.sb(sid, "files/write", {"path": "/big", "data": big})[1] == {"written": len(big)},
          "write 5 MiB")
    check(rt.sb(sid, "files/read", {"path": "/big"})[1]["data"] == big, "read 5 MiB")
    check_error(rt.sb(sid, "files/read", {"path": "/no/such/file"}), 404, "not_found")
    check_error(rt.sb(sid, "files/read", {"path": "relative"}), 400, "bad_request")
    check_error(rt.sb(sid, "files/read", {"path": "/tmp"}), 400, "bad_request")
    check_error(rt.sb(sid, "files/read", {}), 400, "bad_request")
    check_error(rt.sb(sid, "files/write", {"path": "/no/such/dir/f", "data": b"x"}), 404,
                "not_found")
    check_error(rt.sb(sid, "files/write", {"path": "/tmp/x", "data": 5}), 400, "bad_request")
    # /proc/<pid>/root inside the sandbox is a magic link: refused
    st, b = rt.sb(sid, "files/read", {"path": "/proc/1/root/etc/hostname"})
    check(st in (400, 404), "magic link refused", st, b)
    # a 65 MiB file is above the read limit
    n = rt.exec(sid, ["sh", "-c", "head -c 68157440 /dev/zero > /huge"])
    check(rt.pwait(sid, n) == 0, "made a huge file")
    check_error(rt.sb(sid, "files/read", {"path": "/huge"}), 413, "payload_too_large")
    rt.terminate(sid)
    check_error(rt.sb(sid, "files/read", {"path": "/tmp/f.bin"}), 404, "not_found")

    # Symlinks inside the sandbox never lead to host files.
    img = os.path.join(ctx.tmp, "linkimg")
    os.makedirs(os.path.join(img, "etc"))
    with open(os.path.join(img, "etc", "hostname"), "w") as f:
        f.write("sandbox-hostname\n")
    hostfile = os.path.join(ctx.tmp, "host-secret.txt")
    with open(hostfile, "w") as f:
        f.write("HOST SECRET\n")
    os.symlink("/etc/hostname", os.path.join(img, "link"))
    os.symlink(hostfile, os.path.join(img, "hostlink"))
    os.symlink("../" * 12 + hostfile.lstrip("/"), os.path.join(img, "rellink"))
    os.symlink("/", os.path.join(img, "rootlink"))
    os.symlink("/no/such/dir/f", os.path.join(img, "nolink"))
    os.makedirs(os.path.join(img, os.path.dirname(hostfile).lstrip("/")))
    sid = rt.create(image="dir:" + img, timeout=60)["sandbox_id"]
    with open("/etc/hostname", "rb") as f:
        host_hostname = f.read()
    st, b = rt.sb(sid, "files/read", {"path": "/link"})
    check(st == 200 and b["data"] == b"sandbox-hostname\n", "link resolved inside", st, b)
    check(b["data"] != host_hostname or host_hostname == b"sandbox-hostname\n",
          "not the host's /etc/hostname")
    for p in ("/hostlink", "/rellink", "/rootlink" + hostfile, "/../../../.." + hostfile):
        st, b = rt.sb(sid, "files/read", {"path": p})
        check(st == 404, f"read {p} stays inside the sandbox", st, b)
    st, b = rt.sb(sid, "files/read", {"path": "/rootlink/etc/hostname"})
    check(st == 200 and b["data"] == b"sandbox-hostname\n", "/rootlink is the sandbox root", b)
    # Writing through the link lands inside as well (the image has the target's
    # parent dirs, so the write succeeds, in the sandbox's upper layer).
    st, b = rt.sb(sid, "files/write", {"path": "/hostlink", "data": b"PWNED"})
    check(st == 200, "write through a symlink", st, b)
    check(rt.sb(sid, "files/read", {"path": hostfile}) == (200, {"data": b"PWNED"}),
          "the write landed inside the sandbox")
    check(not os.path.exists(os.path.join(img, hostfile.lstrip("/"))), "image dir untouched")
    check_error(rt.sb(sid, "files/write", {"path": "/nolink", "data": b"x"}), 404, "not_found")
    with open(hostfile) as f:
        check(f.read() == "HOST SECRET\n", "host file untouched by a write through a symlink")
    rt.terminate(sid)


def test_timeout(rt, ctx):
    info = rt.create(cmd=["sleep", "100"], timeout=1.0)
    sid = info["sandbox_id"]
    n = rt.exec(sid, ["sleep", "100"])
    t0 = time.time()
    st, b = rt.sb(sid, "wait", {"timeout": 15})
    check(st == 200 and b == {"done": True, "exit_code": -9, "status": "timeout"}, "timeout", b)
    check(time.time() - t0 < 5, "timeout enforced promptly", time.time() - t0)
    st, b = rt.call("GET", f"/v1/sandboxes/{sid}/procs")
    codes = {p["process_id"]: (p["status"], p["exit_code"]) for p in b["processes"]}
    check(codes == {0: ("exited", -9), n: ("exited", -9)}, "every process -9", codes)
    check_error(rt.sb(sid, "exec", {"cmd": ["true"]}), 409, "conflict")
    check_error(rt.sb(sid, "files/read", {"path": "/etc/hostname"}), 409, "conflict")
    check_error(rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/stdin", {"data": b"x"}), 409,
                "conflict")
    check(rt.call("GET", f"/v1/sandboxes/{sid}")[1]["sandbox"]["status"] == "timeout", "status")
    rt.terminate(sid)
    idle = rt.create(timeout=0.5)["sandbox_id"]
    st, b = rt.sb(idle, "wait", {"timeout": 10})
    check(b["done"] and b["status"] == "timeout", "idle sandbox times out", b)
    rt.terminate(idle)


def test_terminate(rt, ctx):
    sid = rt.create(cmd=["sleep", "100"], timeout=60)["sandbox_id"]
    n = rt.exec(sid, ["sleep", "100"])
    results = {}

    def waiter(name, path, body):
        results[name] = rt.call("POST", path, body)

    threads = [threading.Thread(target=waiter, args=a) for a in (
        ("wait", f"/v1/sandboxes/{sid}/wait", {"timeout": 25}),
        ("pwait", f"/v1/sandboxes/{sid}/procs/{n}/wait", {"timeout": 25}),
        ("out", f"/v1/sandboxes/{sid}/procs/0/output", {"offset": 0, "timeout": 25}),
    )]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.time()
    st, b = rt.terminate(sid)
    check(st == 200 and b["sandbox"]["status"] == "terminated", "terminate", st, b)
    for t in threads:
        t.join(10)
    check(time.time() - t0 < 5, "held requests answered at terminate")
    check(results["wait"] == (200, {"done": True, "exit_code": -9, "status": "terminated"}),
          "held wait", results["wait"])
    check(results["pwait"] == (200, {"done": True, "exit_code": -9}), "held proc wait",
          results["pwait"])
    check(results["out"][0] == 200 and results["out"][1]["eof"], "held output", results["out"])
    check_error(rt.terminate(sid), 404, "not_found")
    check_error(rt.call("GET", f"/v1/sandboxes/{sid}"), 404, "not_found")
    check_error(rt.sb(sid, "wait", {}), 404, "not_found")
    check(sid not in [x["sandbox_id"] for x in rt.call("GET", "/v1/sandboxes")[1]["sandboxes"]],
          "not listed after terminate")


GARBAGE_BODIES = [
    b"\xdd\xff\x00\x00\x00",            # array32 of 4 billion, no items
    b"\xdf\xff\xff\xff\xff",            # map32 of 4 billion
    b"\xdc\xff\xff",                    # array16
    b"\xc6\xff\xff\xff\xff",            # bin32 of 4 GiB
    b"\xdb\x7f\xff\xff\xff",            # str32
    b"\x91" * 100 + b"\xc0",            # nested 100 deep
    b"\x92\x01\x02",                    # an array, not a map
    b"\x80\x80",                        # trailing bytes
    b"\xc1",                            # never used
    b"\x81\xa3cmd",                     # truncated
    b"{\"cmd\": [\"echo\"]}",           # JSON
]


def test_garbage(rt, ctx):
    for body in GARBAGE_BODIES:
        st, b = rt.call("POST", "/v1/sandboxes", raw=body)
        check(st == 400 and b["error"]["code"] == "bad_request", f"garbage {body[:12]!r}", st, b)
    rnd = random.Random(1234)
    for i in range(200):
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
        st, b = rt.call("POST", "/v1/sandboxes/sb-0000000000000000/exec", raw=body)
        check(400 <= st < 500, "random bytes -> 4xx", st, body[:16])
    check_error(rt.call("POST", "/v1/sandboxes", raw=b"\x80",
                        headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    c = rt.conn()
    c.putrequest("POST", "/v1/sandboxes")
    c.putheader("Content-Length", "1")
    c.endheaders(b"\x80")
    r = c.getresponse()
    check(r.status == 415, "body without a content type -> 415", r.status)
    c.close()
    check_error(rt.call("GET", "/v1/nope"), 404, "not_found")
    check_error(rt.call("GET", "/v1/health/extra"), 404, "not_found")
    check_error(rt.call("GET", "//v1//health"), 404, "not_found")
    check_error(rt.call("PUT", "/v1/health"), 405, "method_not_allowed")
    check_error(rt.call("DELETE", "/v1/sandboxes/sb-0000000000000000"), 405, "method_not_allowed")
    check_error(rt.call("GET", "/v1/sandboxes/sb-0000000000000000/exec"), 405,
                "method_not_allowed")
    check_error(rt.call("POST", "/v1/health"), 405, "method_not_allowed")
    check(rt.call("GET", "/v1/health?x=1")[0] == 200, "query string ignored")
    # a body above SL_MAX_BODY (65 MiB): 413 before it is read
    s = raw_request(rt.sock, b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/msgpack\r\nContent-Length: %d\r\n\r\n"
                    % (70 * 1024 * 1024), read=False)
    try:
        chunk = b"\0" * (1 << 20)
        for _ in range(70):
            s.sendall(chunk)
    except OSError:
        pass
    resp = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            resp += d
    except OSError:
        pass
    s.close()
    check(status_of(resp) == 413, "70 MB body -> 413", resp[:200])
    # broken HTTP
    for junk in (b"GARBAGE\r\n\r\n", b"POST /v1/sandboxes HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                 b"GET /v1/health HTTP/1.1\r\n" + b"X: " + b"a" * 100000 + b"\r\n\r\n",
                 b"\x00\xff" * 100 + b"\r\n\r\n"):
        resp = raw_request(rt.sock, junk)
        check(resp == b"" or 400 <= (status_of(resp) or 0) < 500, "junk HTTP", resp[:100])
    check(rt.call("GET", "/v1/health")[0] == 200, "runner still serves after garbage")


def test_disconnects(rt, ctx):
    sid = rt.create(timeout=60)["sandbox_id"]
    n = rt.exec(sid, ["sh", "-c", "read x; echo got $x; sleep 100"])
    before = rt.log_text().count("hung up during a held request")
    socks = []
    for i in range(30):
        path = [f"/v1/sandboxes/{sid}/wait", f"/v1/sandboxes/{sid}/procs/{n}/wait",
                f"/v1/sandboxes/{sid}/procs/{n}/output"][i % 3]
        body = msgpack.packb({"timeout": 20, "offset": 0})
        socks.append(raw_request(rt.sock, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                 b"application/msgpack\r\nContent-Length: %d\r\n\r\n%s"
                                 % (path.encode(), len(body), body), read=False))
    time.sleep(0.5)
    for s in socks:
        s.close()
    check(wait_until(lambda: rt.log_text().count("hung up during a held request") - before >= 30,
                     5), "runner noticed every hung-up client",
          rt.log_text().count("hung up during a held request") - before)
    # now the awaited things happen: nobody must be answered (and nothing crash)
    rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/stdin", {"data": b"x\n"})
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output", {"offset": 0, "timeout": 5})
    check(b["data"] == b"got x\n", "output after disconnects", b)
    rt.terminate(sid)
    check(rt.call("GET", "/v1/health")[0] == 200, "alive after disconnects")


def test_concurrent_longpolls(rt, ctx):
    sid = rt.create(timeout=60)["sandbox_id"]
    n = rt.exec(sid, ["sh", "-c", "read x; echo go"])
    results = []
    lock = threading.Lock()

    def poll():
        try:
            r = rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/output",
                        {"stream": "stdout", "offset": 0, "timeout": 25}, timeout=40)
        except Exception as e:  # noqa: BLE001
            r = ("exc", repr(e))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=poll) for _ in range(200)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with lock:
        check(len(results) == 0, "all 200 long-polls are held", results[:3])
    check(rt.call("GET", "/v1/health")[0] == 200, "health answers while 200 polls are held")
    t0 = time.time()
    rt.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/stdin", {"data": b"x\n"})
    for t in threads:
        t.join(20)
    check(len(results) == 200, "every poll answered", len(results))
    bad = [r for r in results if r[0] != 200 or r[1]["data"] != b"go\n"]
    check(not bad, "every poll got the data", bad[:3])
    check(time.time() - t0 < 10, "answered promptly", time.time() - t0)
    rt.terminate(sid)


def test_keepalive(rt, ctx):
    c = rt.conn()
    for _ in range(50):
        check(rt.call("GET", "/v1/health", conn=c)[0] == 200, "keep-alive request")
    sid = rt.call("POST", "/v1/sandboxes", {"timeout": 30}, conn=c)[1]["sandbox"]["sandbox_id"]
    st, b = rt.call("POST", f"/v1/sandboxes/{sid}/wait", {"timeout": 0.2}, conn=c)
    check(st == 200 and b["done"] is False and b["status"] == "running", "wait on kept conn", b)
    check(rt.call("POST", f"/v1/sandboxes/{sid}/terminate", {}, conn=c)[0] == 200, "terminate")
    c.close()


def test_images(rt, ctx):
    src = os.path.join(ctx.tmp, "imgsrc")
    os.makedirs(os.path.join(src, "data"))
    with open(os.path.join(src, "data", "hello.txt"), "w") as f:
        f.write("from the image\n")
    st, b = rt.call("POST", "/v1/images", {"name": "img1", "source": src})
    check(st == 201 and b["image"]["name"] == "img1" and isinstance(b["image"]["created_at"], float),
          "register image", st, b)
    st, b = rt.call("GET", "/v1/images")
    check(st == 200 and [i["name"] for i in b["images"]] == ["img1"], "list images", b)
    check_error(rt.call("POST", "/v1/images", {"name": "img1", "source": src}), 409, "conflict")
    check_error(rt.call("POST", "/v1/images", {"name": "bad/name", "source": src}), 400,
                "bad_request")
    check_error(rt.call("POST", "/v1/images", {"name": ".hidden", "source": src}), 400,
                "bad_request")
    check_error(rt.call("POST", "/v1/images", {"name": "img2", "source": "rel"}), 400,
                "bad_request")
    check_error(rt.call("POST", "/v1/images", {"name": "img2", "source": "/no/such"}), 400,
                "bad_request")
    check_error(rt.call("POST", "/v1/images", {"name": "img2"}), 400, "bad_request")
    sid = rt.create(image="img1", timeout=60)["sandbox_id"]
    st, b = rt.sb(sid, "files/read", {"path": "/data/hello.txt"})
    check(st == 200 and b["data"] == b"from the image\n", "file from the image", st, b)
    check_error(rt.call("POST", "/v1/images/img1/delete"), 409, "conflict")
    rt.terminate(sid)
    check(wait_until(lambda: rt.call("POST", "/v1/images/img1/delete")[0] == 200), "delete image")
    check_error(rt.call("POST", "/v1/images/img1/delete"), 404, "not_found")
    check_error(rt.call("POST", "/v1/sandboxes", {"image": "img1"}), 404, "not_found",
                "image 'img1' not found")
    check(rt.call("GET", "/v1/images")[1] == {"images": []}, "no images left")


def test_volumes(rt, ctx):
    check_error(rt.call("POST", "/v1/volumes", {"name": "v1", "create_if_missing": False}), 404,
                "not_found")
    st, b = rt.call("POST", "/v1/volumes", {"name": "v1", "create_if_missing": True})
    check(st == 200 and b["volume"]["name"] == "v1", "create volume", st, b)
    st, b = rt.call("POST", "/v1/volumes", {"name": "v1"})
    check(st == 200 and b["volume"]["name"] == "v1", "existing volume", st, b)
    check_error(rt.call("POST", "/v1/volumes", {"name": "../x", "create_if_missing": True}), 400,
                "bad_request")
    check([v["name"] for v in rt.call("GET", "/v1/volumes")[1]["volumes"]] == ["v1"], "list")
    info = rt.create(cmd=["sh", "-c", "echo hi > /data/f && cat /data/f"], volumes={"/data": "v1"})
    check(info["volumes"] == {"/data": "v1"}, "volumes listed", info)
    sid = info["sandbox_id"]
    check(rt.pwait(sid, 0) == 0 and rt.output(sid, 0) == b"hi\n", "write to the volume")
    with open(os.path.join(rt.state, "volumes", "v1", "f")) as f:
        check(f.read() == "hi\n", "volume content on the host")
    rt.terminate(sid)
    sid = rt.create(timeout=60, volumes={"/mnt/v": "v1"})["sandbox_id"]
    check(rt.sb(sid, "files/read", {"path": "/mnt/v/f"}) == (200, {"data": b"hi\n"}),
          "volume seen by another sandbox")
    check_error(rt.call("POST", "/v1/volumes/v1/delete"), 409, "conflict")
    rt.terminate(sid)
    check(wait_until(lambda: rt.call("POST", "/v1/volumes/v1/delete")[0] == 200), "delete volume")
    check_error(rt.call("POST", "/v1/volumes/v1/delete"), 404, "not_found")
    check(rt.call("GET", "/v1/volumes")[1] == {"volumes": []}, "no volumes left")


def test_tcp(rt, ctx):
    tokfile = os.path.join(ctx.tmp, "token")
    with open(tokfile, "w") as f:
        f.write("tok-" + "x" * 40 + "\n")
    os.chmod(tokfile, 0o600)
    token = "tok-" + "x" * 40
    # no token: refuses to start
    port = free_port()
    r = subprocess.run([ctx.args.sandlotd, "--socket", os.path.join(ctx.tmp, "nt", "s.sock"),
                        "--state-dir", os.path.join(ctx.tmp, "nt", "state"), "--init",
                        ctx.args.init, "--listen", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=20,
                       env={k: v for k, v in os.environ.items() if k != "SANDLOT_TOKEN"})
    check(r.returncode == 1 and "token" in r.stderr, "--listen without a token refuses", r.stderr)
    t = Runner(ctx.args, ctx.tmp, "tcp", extra=["--listen", f"127.0.0.1:{port}", "--token-file",
                                                 tokfile], tcp=("127.0.0.1", port), token=token)
    ctx.extra_runners.append(t)
    t.start()
    check(t.call("GET", "/v1/health")[0] == 200, "TCP with token")
    for tok in ("", "wrong", token + "x", token[:-1]):
        for method, path in (("GET", "/v1/health"), ("GET", "/v1/sandboxes/sb-0000000000000000"),
                             ("GET", "/v1/nope"), ("POST", "/v1/sandboxes")):
            c = t.conn()
            hdrs = {"Authorization": "Bearer " + tok} if tok else {}
            c.request(method, path, headers=hdrs)
            r = c.getresponse()
            body = msgpack.unpackb(r.read())
            c.close()
            check(r.status == 401 and body["error"]["code"] == "unauthorized",
                  "401 before routing", tok, method, path, r.status, body)
    check_error(t.call("POST", "/v1/sandboxes", raw=b"\xdd\xff\x00\x00\x00", token="nope"), 401,
                "unauthorized")
    info = t.create(cmd=["echo", "tcp"])
    check(t.pwait(info["sandbox_id"], 0) == 0 and t.output(info["sandbox_id"], 0) == b"tcp\n",
          "sandbox over TCP")
    check(t.terminate(info["sandbox_id"])[0] == 200, "terminate over TCP")
    # the unix socket of a TCP runner needs no token
    c = UnixConn(t.sock)
    c.request("GET", "/v1/health")
    check(c.getresponse().status == 200, "unix socket without a token")
    c.close()
    check("tok-xxxx" not in t.log_text(), "token never logged")
    check(t.stop() == 0, "TCP runner stops cleanly")
    t.check_log_clean()
    # SANDLOT_TOKEN works too
    port = free_port()
    t2 = Runner(ctx.args, ctx.tmp, "tcp2", extra=["--listen", f"127.0.0.1:{port}"],
                env={"SANDLOT_TOKEN": "envtoken"}, tcp=("127.0.0.1", port), token="envtoken")
    ctx.extra_runners.append(t2)
    t2.start()
    check(t2.call("GET", "/v1/health")[0] == 200, "SANDLOT_TOKEN")
    check(t2.call("GET", "/v1/health", token="bad")[0] == 401, "SANDLOT_TOKEN wrong")
    check(t2.stop() == 0, "stop")
    t2.check_log_clean()


def run_fail(ctx, args, what, needle):
    r = subprocess.run([ctx.args.sandlotd, "--init", ctx.args.init] + args, capture_output=True,
                       text=True, timeout=20)
    check(r.returncode == 1 and needle in r.stderr, what, r.returncode, r.stderr[-500:])


def test_startup_checks(rt, ctx):
    d = os.path.join(ctx.tmp, "open")
    os.makedirs(d)
    os.chmod(d, 0o777)
    run_fail(ctx, ["--socket", os.path.join(d, "s.sock"), "--state-dir", os.path.join(ctx.tmp, "st1")],
             "world-writable socket dir refused", "writable")
    run_fail(ctx, ["--socket", rt.sock, "--state-dir", os.path.join(ctx.tmp, "st2")],
             "live socket not taken over", "listening")
    run_fail(ctx, ["--socket", os.path.join(ctx.tmp, "other", "s.sock"), "--state-dir", rt.state],
             "state dir in use refused", "in use")
    run_fail(ctx, ["--state-dir", rt.state], "missing --socket", "--socket")
    run_fail(ctx, ["--socket", "/tmp/x.sock", "--state-dir", "/tmp/y", "--log-level", "loud"],
             "bad log level", "log-level")
    # a stale socket (nobody listening) is replaced
    stale_dir = os.path.join(ctx.tmp, "stale")
    os.makedirs(stale_dir, mode=0o700)
    sp = os.path.join(stale_dir, "s.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(sp)
    s.close()
    r = Runner(ctx.args, ctx.tmp, "stale-runner")
    r.sock = sp
    ctx.extra_runners.append(r)
    r.start()
    check(stat.S_IMODE(os.stat(sp).st_mode) == 0o600, "socket mode 0600")
    check(r.stop() == 0 and not os.path.exists(sp), "stops and removes its socket")
    r.check_log_clean()


def test_daemon(rt, ctx):
    d = os.path.join(ctx.tmp, "daemon")
    os.makedirs(d, mode=0o700)
    sock = os.path.join(d, "run", "s.sock")
    pidfile = os.path.join(d, "pid")
    logfile = os.path.join(d, "log")
    t0 = time.time()
    r = subprocess.run([ctx.args.sandlotd, "--socket", sock, "--state-dir", os.path.join(d, "st"),
                        "--init", ctx.args.init, "--daemon", "--pidfile", pidfile, "--log-file",
                        logfile], capture_output=True, timeout=20)
    check(r.returncode == 0, "daemon start", r.returncode, r.stderr)
    check(time.time() - t0 < 10, "daemon start is quick")
    with open(pidfile) as f:
        pid = int(f.read())
    try:
        c = UnixConn(sock)
        c.request("GET", "/v1/health")
        resp = c.getresponse()
        body = msgpack.unpackb(resp.read())
        check(resp.status == 200 and body["pid"] == pid, "socket answers right away", body)
        c.close()
        check(os.stat(os.path.join(d, "run")).st_mode & 0o777 == 0o700, "socket dir created 0700")
    finally:
        os.kill(pid, signal.SIGTERM)
    check(wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                     open(f"/proc/{pid}/stat").read().split()[2] == "Z", 10), "daemon stopped")
    check(not os.path.exists(sock) and not os.path.exists(pidfile), "socket and pidfile removed")
    with open(logfile) as f:
        text = f.read()
    check("ready" in text and "stopped" in text, "daemon log", text[-500:])
    # a start error reaches the starter's stderr with exit status 1, log file or not
    os.chmod(d, 0o777)
    for extra in ([], ["--log-file", os.path.join(ctx.tmp, "daemon2.log")]):
        r = subprocess.run([ctx.args.sandlotd, "--socket", os.path.join(d, "s2.sock"),
                            "--state-dir", os.path.join(d, "st2"), "--init", ctx.args.init,
                            "--daemon"] + extra, capture_output=True, text=True, timeout=20)
        check(r.returncode == 1 and "writable" in r.stderr, "daemon start error", extra,
              r.returncode, r.stderr)
    os.chmod(d, 0o700)


BAD_INIT_C = r"""
/* A sandlot-init that speaks the control protocol badly on purpose. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct hdr { uint32_t type, id, arg; };

static void sendm(uint32_t type, uint32_t id, uint32_t arg, const void *p, size_t n)
{
    char buf[8192];
    struct hdr h = {type, id, arg};
    memcpy(buf, &h, sizeof(h));
    if (n > sizeof(buf) - sizeof(h))
        n = sizeof(buf) - sizeof(h);
    if (n)
        memcpy(buf + sizeof(h), p, n);
    send(3, buf, sizeof(h) + n, MSG_NOSIGNAL);
}

static void send_fd(void)
{
    struct hdr h = {3, 1, 1};
    struct iovec iov = {&h, sizeof(h)};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    int fd = 0;
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    sendmsg(3, &m, MSG_NOSIGNAL);
}

int main(void)
{
    static char buf[300000];
    char junk[6000];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 7 + 1);
    sendm(1, 0, 0, NULL, 0); /* READY */
    for (;;) {
        char cbuf[256];
        struct iovec iov = {buf, sizeof(buf)};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                           .msg_controllen = sizeof(cbuf)};
        ssize_t n = recvmsg(3, &m, 0);
        if (n <= 0)
            return 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            int fds[8];
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(c), k * sizeof(int));
            for (size_t i = 0; i < k; i++)
                close(fds[i]);
        }
        struct hdr h;
        memcpy(&h, buf, sizeof(h));
        if (h.type == 6) { /* SIGNAL */
            if (h.arg == 31)
                exit(7); /* "crash" */
            sendm(5, h.id, h.arg, NULL, 0);
            continue;
        }
        if (h.type != 2)
            continue;
        /* garbage first */
        send(3, "xy", 2, MSG_NOSIGNAL);
        sendm(99, h.id, 0, NULL, 0);
        sendm(3, 99999, 1, NULL, 0);
        sendm(5, 0xffffffffu, 0, NULL, 0);
        sendm(4, 4242, 0xffffffffu, junk, sizeof(junk));
        sendm(1, 0, 0, NULL, 0);
        send_fd();
        /* payload: cwd, argc, argv0... */
        const char *cwd = buf + sizeof(h);
        const char *argc = cwd + strlen(cwd) + 1;
        const char *argv0 = argc + strlen(argc) + 1;
        if (strcmp(argv0, "fail") == 0) {
            sendm(4, h.id, 0xfffffff0u, "exec fail[31m", 15);
            continue;
        }
        sendm(3, h.id, 0xfffffffeu, NULL, 0);
        sendm(3, h.id, 43, NULL, 0);
        if (strcmp(argv0, "exit3") == 0) {
            sendm(5, h.id, 3 << 8, NULL, 0);
            sendm(5, h.id, 0x7fffffff, NULL, 0);
        }
    }
}
"""


def test_bad_init(rt, ctx):
    src = os.path.join(ctx.tmp, "bad_init.c")
    binary = os.path.join(ctx.tmp, "bad-init")
    with open(src, "w") as f:
        f.write(BAD_INIT_C)
    r = subprocess.run(["gcc", "-O1", "-static", "-o", binary, src], capture_output=True, text=True)
    check(r.returncode == 0, "compile the bad init", r.stderr)
    b = Runner(ctx.args, ctx.tmp, "badinit")
    b.args = argparse.Namespace(sandlotd=ctx.args.sandlotd, init=binary)
    ctx.extra_runners.append(b)
    b.start()
    check_error(b.call("POST", "/v1/sandboxes", {"cmd": ["fail"]}), 422, "spawn_failed",
                "exec fail")
    info = b.create(cmd=["exit3"])
    st, w = b.sb(info["sandbox_id"], "wait", {"timeout": 10})
    check(w == {"done": True, "exit_code": 3, "status": "exited"}, "odd init, entry exit", w)
    sid = b.create(timeout=30)["sandbox_id"]
    n = b.exec(sid, ["sleep"])
    check(b.output(sid, n) == b"", "output EOF when init drops the pipes")
    st, r2 = b.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/signal", {"signal": 15})
    check(b.pwait(sid, n) == -15, "raw wait status from init decoded", n)
    n = b.exec(sid, ["sleep"])
    b.call("POST", f"/v1/sandboxes/{sid}/procs/{n}/signal", {"signal": 31})  # init exits
    st, w = b.sb(sid, "wait", {"timeout": 10})
    check(w["done"] and w["status"] == "failed", "init died on its own -> failed", w)
    check(b.pwait(sid, n) == -9, "its processes are marked -9")
    check(b.call("GET", "/v1/health")[0] == 200, "runner survives a bad init")
    text = b.log_text()
    check("\x1b" not in text and "\x01" not in text, "init's text sanitised in the log")
    check(b.stop() == 0, "bad-init runner stops cleanly")
    b.check_log_clean()


def test_retention_and_capacity(rt, ctx):
    r = Runner(ctx.args, ctx.tmp, "small", extra=["--retention", "1", "--max-sandboxes", "2"])
    ctx.extra_runners.append(r)
    r.start()
    a = r.create(timeout=30)["sandbox_id"]
    e = r.create(cmd=["echo", "x"])["sandbox_id"]
    check(r.sb(e, "wait", {"timeout": 10})[1]["done"], "echo done")
    check(r.output(e, 0) == b"x\n", "output kept after the end")
    # capacity counts live sandboxes; ended ones kept for reading do not
    b = r.create(timeout=30)["sandbox_id"]
    check_error(r.call("POST", "/v1/sandboxes", {}), 503, "unavailable", "capacity")
    time.sleep(1.5)
    check_error(r.call("GET", f"/v1/sandboxes/{e}"), 404, "not_found")
    check(e not in [x["sandbox_id"] for x in r.call("GET", "/v1/sandboxes")[1]["sandboxes"]],
          "reaped after the retention period")
    r.terminate(a)
    check(wait_until(lambda: r.call("POST", "/v1/sandboxes", {"timeout": 5})[0] == 201, 5),
          "capacity freed by terminate")
    r.terminate(b)
    check(r.stop() == 0, "stop")
    r.check_log_clean()


def test_many_no_leaks(rt, ctx):
    """Sandboxes in parallel; afterwards the runner holds no more fds than before."""
    def nfds():
        return len(os.listdir(f"/proc/{rt.proc.pid}/fd"))

    base = nfds()
    errors = []

    def one(i):
        try:
            # The entry waits for /tmp/go, not for a fixed time: on a loaded
            # machine a `sleep 1` entry could end before the exec arrives.
            info = rt.create(cmd=["sh", "-c", f"echo {i}; while [ ! -e /tmp/go ]; do sleep 0.05; done"],
                             timeout=30)
            sid = info["sandbox_id"]
            n = rt.exec(sid, ["cat"]) if i % 2 else None
            rt.exec(sid, ["touch", "/tmp/go"])
            st, w = rt.sb(sid, "wait", {"timeout": 20})
            check(w["done"] and w["exit_code"] == 0, "parallel sandbox", w)
            check(rt.output(sid, 0) == f"{i}\n".encode(), "parallel output")
            if n is not None:
                check(rt.pwait(sid, n) == -9, "exec'd process killed with the sandbox")
            check(rt.terminate(sid)[0] == 200, "terminate")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not errors, "parallel sandboxes", errors[:3])
    check(wait_until(lambda: only_pool_shells(rt), 10), "all sandbox dirs removed")
    check(wait_until(lambda: nfds() <= base, 10), "no fd leak", base, nfds())
    check(rt.call("GET", "/v1/health")[1]["sandboxes"] == 0, "no sandboxes left")


def test_shutdown(rt, ctx):
    """Last: SIGTERM kills every sandbox, answers held requests, removes state."""
    info = rt.create(cmd=["sleep", "100"], timeout=60)
    sid = info["sandbox_id"]
    result = {}

    def waiter():
        try:
            result["r"] = rt.call("POST", f"/v1/sandboxes/{sid}/wait", {"timeout": 25})
        except Exception as e:  # noqa: BLE001
            result["r"] = ("exc", repr(e))

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.5)
    t0 = time.time()
    rc = rt.stop()
    th.join(10)
    check(rc == 0, "runner exit status 0 after SIGTERM", rc)
    check(time.time() - t0 < 10, "shutdown is quick")
    check(result.get("r") == (200, {"done": True, "exit_code": -9, "status": "terminated"}),
          "held wait answered at shutdown", result)
    check(not os.path.exists(f"/proc/{info['pid']}"), "sandbox init killed")
    check(not os.path.exists(rt.sock), "socket removed")
    check(os.listdir(os.path.join(rt.state, "sandboxes")) == [], "sandbox dirs removed")


TESTS = [test_version, test_health, test_create_echo_wait_output, test_pid_and_isolation,
         test_exec_stdin_signal, test_spawn_failed_create, test_validation, test_files,
         test_timeout, test_terminate, test_garbage, test_disconnects, test_concurrent_longpolls,
         test_keepalive, test_images, test_volumes, test_tcp, test_startup_checks, test_daemon,
         test_bad_init, test_retention_and_capacity, test_many_no_leaks, test_shutdown]


class Ctx:
    pass


def main():
    global VERBOSE
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sandlotd", default=os.environ.get("SANDLOTD", "/tmp/runner/sandlotd"))
    ap.add_argument("--init", default=os.environ.get("SANDLOT_INIT", "/tmp/runner/sandlot-init"))
    ap.add_argument("-k", default="", help="run only tests whose name contains this")
    ap.add_argument("-v", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--tmp", default="/var/lib", help="where to make the temp dir")
    args = ap.parse_args()
    VERBOSE = args.v
    del here
    if os.geteuid() != 0:
        print("runner_smoke.py needs root (namespaces, cgroups, overlayfs)")
        return 2
    ctx = Ctx()
    ctx.args = args
    # Not under /tmp: sandboxes get a fresh /tmp, which would hide the state
    # dir anyway and make the masking check meaningless.
    os.makedirs(args.tmp, exist_ok=True)
    ctx.tmp = tempfile.mkdtemp(prefix="sandlot-smoke-", dir=args.tmp)
    ctx.extra_runners = []
    rt = Runner(args, ctx.tmp, "main")
    failed = []
    selected = [t for t in TESTS if args.k in t.__name__]
    try:
        rt.start()
        for t in selected:
            t0 = time.time()
            try:
                t(rt, ctx)
                print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
            except Exception as e:  # noqa: BLE001
                failed.append(t.__name__)
                print(f"FAIL {t.__name__}: {e}", flush=True)
                if VERBOSE or not isinstance(e, Fail):
                    traceback.print_exc()
            if rt.proc.poll() is not None and t is not test_shutdown:
                failed.append("runner died")
                print(f"FAIL runner exited with {rt.proc.returncode}", flush=True)
                break
        if rt.proc.poll() is None:
            check(rt.stop() == 0, "main runner stops cleanly")
        try:
            rt.check_log_clean()
        except Fail as e:
            failed.append("sanitizer/log")
            print(f"FAIL runner log: {e}")
    finally:
        for r in [rt] + ctx.extra_runners:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        if failed or args.keep:
            print(f"logs kept in {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    print(f"{len(selected) - len([f for f in failed if f.startswith('test_')])}/{len(selected)} "
          f"tests passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
