"""Test helpers for image pulls: a real registry (Debian's docker-registry,
the CNCF distribution registry) on 127.0.0.1, and images assembled here
(tar layers, OCI configs, manifests and indexes) pushed to it over the
registry API."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTRY_BIN = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    user: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "data" / "docker" / "registry" / "v2"

    def blob_file(self, digest: str) -> Path:
        h = digest.split(":", 1)[1]
        return self.storage / "blobs" / "sha256" / h[:2] / h / "data"

    def _req(self, method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if not url.startswith("http"):
            url = f"http://{self.host}{url}"
        h = dict(headers or {})
        if self.user is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        st, hd, _ = self._req("POST", f"/v2/{repo}/blobs/uploads/")
        assert st == 202, st
        loc = hd["Location"]
        sep = "&" if "?" in loc else "?"
        st, _, body = self._req("PUT", f"{loc}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"})
        assert st == 201, (st, body)
        return digest

    def push_manifest(self, repo: str, tag: str, manifest: dict[str, Any], media_type: str) -> str:
        data = json.dumps(manifest).encode()
        st, _, body = self._req("PUT", f"/v2/{repo}/manifests/{tag}", data, {"Content-Type": media_type})
        assert st == 201, (st, body)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def push_image(
        self,
        repo: str,
        tag: str,
        layers: list[bytes],
        *,
        config: dict[str, Any] | None = None,
        compress: str = "gzip",
        diff_ids: list[str] | None = None,
        arch: str = "amd64",
    ) -> dict[str, Any]:
        """Push tar layers (uncompressed bytes) as an OCI image; its descriptors."""
        descs, diffs = [], []
        for raw in layers:
            diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
            if compress == "gzip":
                blob = gzip.compress(raw, compresslevel=1, mtime=0)
                mt = "application/vnd.oci.image.layer.v1.tar+gzip"
            elif compress == "zstd":
                blob = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
                mt = "application/vnd.oci.image.layer.v1.tar+zstd"
            else:
                blob, mt = raw, "application/vnd.oci.image.layer.v1.tar"
            descs.append({"mediaType": mt, "digest": self.push_blob(repo, blob), "size": len(blob)})
        cfg = {
            "architecture": arch,
            "os": "linux",
            "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else diffs},
        }
        cdata = json.dumps(cfg).encode()
        cdesc = {"mediaType": OCI_CONFIG, "digest": self.push_blob(repo, cdata), "size": len(cdata)}
        man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": descs}
        digest = self.push_manifest(repo, tag, man, OCI_MANIFEST)
        size = len(json.dumps(man).encode())
        return {"digest": digest, "size": size, "layers": descs, "config": cdesc, "arch": arch}

    def push_index(self, repo: str, tag: str, images: list[dict[str, Any]]) -> str:
        idx = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": im["digest"], "size": im["size"], "platform": {"os": "linux", "architecture": im["arch"]}}
                for im in images
            ],
        }
        return self.push_manifest(repo, tag, idx, OCI_INDEX)


def start_registry(
    base: Path, htpasswd: tuple[str, str] | None = None, token: dict[str, str] | None = None, data: Path | None = None
) -> Registry:
    """docker-registry on 127.0.0.1: anonymous, htpasswd basic auth, or token
    auth (``token``: realm, service, issuer, rootcertbundle); ``data``: share
    another registry's storage (push through one, pull through the other)."""
    if not os.path.exists(REGISTRY_BIN):
        raise RuntimeError("needs Debian's docker-registry (apt-get install docker-registry; ./dev test installs it)")
    root = base
    (root / "data").mkdir(parents=True, exist_ok=True)
    store = data if data is not None else root / "data"
    port = free_port()
    auth = ""
    if htpasswd is not None:
        line = subprocess.run(["htpasswd", "-Bbn", *htpasswd], capture_output=True, text=True, check=True).stdout.strip()
        (root / "htpasswd").write_text(line + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: sandlot-test\n    path: {root / 'htpasswd'}\n"
    if token is not None:
        auth = "auth:\n  token:\n" + "".join(f"    {k}: {v}\n" for k, v in token.items())
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {store}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reg = Registry(root, port, proc, *(htpasswd or (None, None)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return reg
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("docker-registry exited: " + (root / "registry.log").read_text())
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("docker-registry did not start")


def stop_registry(reg: Registry) -> None:
    reg.proc.terminate()
    try:
        reg.proc.wait(5)
    except subprocess.TimeoutExpired:
        reg.proc.kill()
        reg.proc.wait()


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def tar_layer(entries: list[Entry]) -> bytes:
    """A layer tarball (PAX, as docker/buildkit write them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = e.type
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = 1_700_000_000
            ti.linkname = e.link
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                t.addfile(ti, io.BytesIO(e.data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def busybox_layer() -> bytes:
    """busybox-static and its applets, as a layer: a userland that is not the host's."""
    bb = shutil.which("busybox")
    if bb is None or "static" not in subprocess.run(["file", "-L", bb], capture_output=True, text=True).stdout:
        raise RuntimeError("needs busybox-static (apt-get install busybox-static)")
    data = Path(bb).read_bytes()
    ents = [Entry("bin", tarfile.DIRTYPE, mode=0o755), Entry("bin/busybox", data=data, mode=0o755)]
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    ents += [Entry(f"bin/{a}", tarfile.SYMTYPE, link="busybox", mode=0o777) for a in applets if a != "busybox"]
    ents += [Entry("etc", tarfile.DIRTYPE, mode=0o755), Entry("etc/os-release", data=b"NAME=sandlot-busybox-image\n")]
    ents += [Entry(d, tarfile.DIRTYPE, mode=0o755) for d in ("tmp", "root", "proc", "dev", "sys")]
    return tar_layer(ents)


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenServer:
    """A token server for registry token auth (the Docker Hub scheme): checks
    basic credentials, answers {"token": JWT} signed RS256 with a self-signed
    certificate the registry trusts (x5c header). Signing uses openssl(1)."""

    def __init__(self, base: Path, user: str, password: str, service: str = "sandlot-test") -> None:
        import http.server
        import threading

        self.base, self.user, self.password, self.service = base, user, password, service
        self.issuer = "sandlot-test-issuer"
        self.key, self.cert = base / "key.pem", base / "cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
             "-days", "2", "-subj", "/CN=sandlot-token"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[str] = []
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                q = parse_qs(urlparse(self.path).query)
                srv.requests.append(self.path)
                want = "Basic " + base64.b64encode(f"{srv.user}:{srv.password}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.end_headers()
                    return
                scope = q.get("scope", [""])[0]
                _, name, actions = (scope.split(":") + ["", "", ""])[:3]
                body = json.dumps({"token": srv.sign(name, actions.split(","))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, name: str, actions: list[str]) -> str:
        now = int(time.time())
        head = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": self.user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": [{"type": "repository", "name": name, "actions": actions}]}
        signing = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(), check=True, capture_output=True).stdout
        return f"{signing}.{_b64url(sig)}"

    def config(self) -> dict[str, str]:
        return {"realm": self.realm, "service": self.service, "issuer": self.issuer, "rootcertbundle": str(self.cert)}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FlakyProxy:
    """An HTTP front for a registry that misbehaves on purpose: the first
    ``fail`` GETs of a blob get 503 or 429, and the first GET of a blob
    without a Range header is cut after ``cut`` bytes (the connection closes
    mid-body). Also works as a forward proxy (absolute-form request lines),
    which is how libcurl talks to ``http_proxy``. Records every request."""

    def __init__(self, upstream: str, fail: int = 2, cut: int | None = None) -> None:
        import http.server
        import threading

        self.upstream, self.fail, self.cut = upstream, fail, cut
        self.log: list[tuple[str, str, str | None, int]] = []  # (request line target, host, range, status sent)
        self.failed: dict[str, int] = {}
        self.cuts: set[str] = set()
        px = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import urlparse

                target = self.path
                path = urlparse(target).path if target.startswith("http") else target
                rng = self.headers.get("Range")
                if "/blobs/" in path and px.failed.get(path, 0) < px.fail:
                    px.failed[path] = px.failed.get(path, 0) + 1
                    code = 503 if px.failed[path] == 1 else 429
                    px.log.append((target, self.headers.get("Host", ""), rng, code))
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                h = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization", "range")}
                req = urllib.request.Request(f"http://{px.upstream}{path}", headers=h)
                try:
                    r = urllib.request.urlopen(req, timeout=30)
                    code, hdrs, body = r.status, dict(r.headers), r.read()
                except urllib.error.HTTPError as e:
                    code, hdrs, body = e.code, dict(e.headers), e.read()
                px.log.append((target, self.headers.get("Host", ""), rng, code))
                self.send_response(code)
                for k, v in hdrs.items():
                    if k.lower() in ("content-type", "docker-content-digest", "content-range", "www-authenticate", "location"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if px.cut is not None and "/blobs/" in path and rng is None and path not in px.cuts and len(body) > px.cut:
                    px.cuts.add(path)
                    self.wfile.write(body[: px.cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
