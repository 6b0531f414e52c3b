"""A small msgpack-over-HTTP/1.1 test server for the transport tests.

Run as a script it serves the same handler on a unix socket and on TCP
(127.0.0.1, ephemeral port), prints ``READY <port>`` and runs until stdin
closes. Imported, it offers ``ServerProcess`` to start and query it. It runs in
its own process so that the client under test shares no GIL with it.

Endpoints (any method):
  /echo               -> {"method", "path", "body", "content_type", "auth", "expect"}
  /sleep/<s>          -> sleeps s seconds (noticing a client that goes away), then {"slept": s}
  /error/<status>/<code> -> status with {"error": {"code": code, "message": ...}}
  /huge/<n>[?chunked=1]  -> {"data": <n bytes>}, with Content-Length or chunked
  /close              -> drops the connection without an answer
  /raw/<status>       -> status with a text/plain body
  /badmsgpack         -> 200 with bytes that are not msgpack
  /empty              -> 200 with an empty body
  /stats, /reset      -> counters: connections, requests, aborted
"""

import http.client
import http.server
import os
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time

import msgpack

STATS = {"connections": 0, "requests": 0, "aborted": 0}
LOCK = threading.Lock()


def bump(key, n=1):
    with LOCK:
        STATS[key] += n


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self):
        super().setup()
        bump("connections")

    def log_message(self, *args):
        pass

    def send(self, status, obj=None, raw=None, ctype="application/msgpack"):
        data = raw if raw is not None else msgpack.packb(obj, use_bin_type=True)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def client_gone(self):
        r, _, _ = select.select([self.connection], [], [], 0)
        if not r:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def route(self):
        bump("requests")
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        head = parts[0]
        if head == "echo":
            body = msgpack.unpackb(raw, raw=False) if raw else None
            self.send(200, {"method": self.command, "path": self.path, "body": body,
                            "content_type": self.headers.get("Content-Type"),
                            "auth": self.headers.get("Authorization"),
                            "expect": self.headers.get("Expect")})
        elif head == "sleep":
            secs = float(parts[1])
            end = time.monotonic() + secs
            while time.monotonic() < end:
                if self.client_gone():
                    bump("aborted")
                    self.close_connection = True
                    return
                time.sleep(0.01)
            self.send(200, {"slept": secs})
        elif head == "error":
            status, code = int(parts[1]), parts[2]
            self.send(status, {"error": {"code": code, "message": f"{code} happened"}})
        elif head == "huge":
            size = int(parts[1])
            data = msgpack.packb({"data": b"x" * size}, use_bin_type=True)
            if "chunked=1" in query:
                self.send_response(200)
                self.send_header("Content-Type", "application/msgpack")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                step = 1 << 20
                for i in range(0, len(data), step):
                    chunk = data[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send(200, raw=data)
        elif head == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif head == "raw":
            self.send(int(parts[1]), raw=b"plain text failure", ctype="text/plain")
        elif head == "badmsgpack":
            self.send(200, raw=b"\xc1")
        elif head == "empty":
            self.send(200, raw=b"")
        elif head == "stats":
            with LOCK:
                self.send(200, dict(STATS))
        elif head == "reset":
            with LOCK:
                for k in STATS:
                    STATS[k] = 0
            self.send(200, {})
        else:
            self.send(404, {"error": {"code": "not_found", "message": f"no route {path}"}})

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = route


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 4096  # a burst of 1,000 connects must not hit EAGAIN

    def handle_error(self, request, client_address):
        pass


class TCPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096

    def handle_error(self, request, client_address):
        pass


def serve(unix_path, backlog=None):
    if backlog is not None:
        UnixServer.request_queue_size = backlog
    userver = UnixServer(unix_path, Handler)
    tserver = TCPServer(("127.0.0.1", 0), Handler)
    for s in (userver, tserver):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"READY {tserver.server_address[1]}", flush=True)
    sys.stdin.read()  # until the test process closes our stdin (or dies)


class ServerProcess:
    """The server in a child process; .unix_url, .tcp_url, .stats(), .reset()."""

    def __init__(self, directory, backlog=None):
        self.sock = os.path.join(str(directory), "srv.sock")
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)  # the server need not run under ASan
        args = [sys.executable, __file__, self.sock]
        if backlog is not None:
            args.append(str(backlog))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"test server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.unix_url = "unix://" + self.sock
        self.tcp_url = f"http://127.0.0.1:{self.port}"

    def _get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            return msgpack.unpackb(conn.getresponse().read(), raw=False)
        finally:
            conn.close()

    def stats(self):
        """Counters, minus the connection and request this query itself made."""
        s = self._get("/stats")
        s["connections"] -= 1
        s["requests"] -= 1
        return s

    def reset(self):
        self._get("/reset")

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
