"""Pulling registry images through the runner (``Image.from_registry``).

The runner does the work (csrc/runner/images: the OCI distribution protocol
over libcurl, layers unpacked in C into snapshot layers); this module sends
``POST /v1/images/pull``, polls ``GET /v1/images/pulls/{id}`` and draws the
progress. Credentials come from a :class:`~sandlot.Secret`
(``REGISTRY_USERNAME`` / ``REGISTRY_PASSWORD``) or, failing that, from
``~/.docker/config.json`` (``auths.<host>.auth``, as ``docker login`` writes
it; credential helpers are not run).

Example:
    >>> _registry_host("127.0.0.1:5000/busybox:1")
    '127.0.0.1:5000'
    >>> _registry_host("python:3.12-slim")
    'docker.io'
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ImagePullError

if TYPE_CHECKING:
    from .secret import Secret
    from .session import Session

__all__ = ["PullOptions", "PullResult", "pull", "resolve", "Progress"]

log = logging.getLogger("sandlot.image")

_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 422: "unprocessable", 502: "bad_gateway", 504: "timeout"}


@dataclass(frozen=True)
class PullOptions:
    """How to pull: credentials, platform and limits (see ``Image.from_registry``)."""

    secret: Secret | None = None
    platform: str | None = None
    insecure: bool = False
    max_bytes: int | None = None
    stall_timeout: float | None = None
    storage: str | None = None


@dataclass(frozen=True)
class PullResult:
    """A pulled image: its top layer and the config that applies to sandboxes."""

    ref: str
    name: str
    digest: str
    snapshot_id: str
    env: dict[str, str]
    workdir: str | None
    user: str | None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    compressed_size: int = 0


def _registry_host(ref: str) -> str:
    first = ref.split("/", 1)[0] if "/" in ref else ""
    if first and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _docker_config_creds(host: str) -> tuple[str, str] | None:
    path = os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            auths = json.load(f).get("auths") or {}
    except (OSError, ValueError):
        return None
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for k in keys:
        ent = auths.get(k)
        if isinstance(ent, dict) and isinstance(ent.get("auth"), str):
            try:
                user, _, pw = base64.b64decode(ent["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if user:
                return user, pw
    return None


def _credentials(ref: str, opts: PullOptions) -> tuple[str, str] | None:
    if opts.secret is not None:
        vals = dict(opts.secret._values())
        user, pw = vals.get("REGISTRY_USERNAME"), vals.get("REGISTRY_PASSWORD")
        if not user or pw is None:
            raise ValueError(
                "the registry Secret needs REGISTRY_USERNAME and REGISTRY_PASSWORD, e.g. "
                "Secret.from_dict({'REGISTRY_USERNAME': 'me', 'REGISTRY_PASSWORD': token})"
            )
        return user, pw
    return _docker_config_creds(_registry_host(ref))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """Draws per-layer progress of a pull: redrawn in place on a terminal,
    one log line per change (at most every few seconds) otherwise.

    Example:
        >>> import io
        >>> p = Progress("img", out=io.StringIO(), tty=False)
        >>> p.update([{"digest": "sha256:" + "a" * 64, "size": 10, "done": 10, "phase": "done"}])
        >>> "aaaaaaaaaaaa: done" in p.out.getvalue()
        True
    """

    def __init__(self, what: str, out: TextIO | None = None, tty: bool | None = None, every: float = 5.0) -> None:
        self.what = what
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.every = every
        self.t0 = time.monotonic()
        self.drawn = 0
        self.last_phase: dict[int, str] = {}
        self.last_line = 0.0

    def update(self, layers: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        el = max(now - self.t0, 1e-6)
        lines = []
        total = sum(int(l.get("size") or 0) for l in layers)
        done = sum(int(l.get("done") or 0) for l in layers)
        rate = done / el
        for i, l in enumerate(layers):
            d = (l.get("digest") or "sha256:?").split(":")[-1][:12]
            size, got, ph = int(l.get("size") or 0), int(l.get("done") or 0), l.get("phase", "")
            if ph == "downloading" and size:
                eta = (size - got) / rate if rate > 0 else float("inf")
                eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
                lines.append(f"{d}: {_fmt_bytes(got)}/{_fmt_bytes(size)} {100 * got / size:.0f}% ({_fmt_bytes(rate)}/s, ETA {eta_s})")
            else:
                lines.append(f"{d}: {ph} ({_fmt_bytes(size)})")
        head = f"pulling {self.what}: {_fmt_bytes(done)}/{_fmt_bytes(total)} at {_fmt_bytes(rate)}/s"
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            for ln in [head] + lines:
                self.out.write("\x1b[2K" + ln + "\n")
            self.drawn = 1 + len(lines)
            self.out.flush()
            return
        changed = [i for i, l in enumerate(layers) if self.last_phase.get(i) != l.get("phase")]
        for i in changed:
            self.last_phase[i] = layers[i].get("phase", "")
            self.out.write(f"[sandlot image] {self.what} layer {lines[i]}\n")
        if not changed and now - self.last_line >= self.every and layers:
            self.out.write(f"[sandlot image] {head}\n")
        if changed or now - self.last_line >= self.every:
            self.last_line = now
        self.out.flush()


def start(ref: str, opts: PullOptions, session: Session) -> dict[str, Any]:
    """POST the pull; the runner's pull state (joined if already running)."""
    body: dict[str, Any] = {"ref": ref, "insecure": bool(opts.insecure)}
    creds = _credentials(ref, opts)
    if creds is not None:
        body["username"], body["password"] = creds
    if opts.platform is not None:
        body["platform"] = opts.platform
    if opts.max_bytes is not None:
        body["max_bytes"] = int(opts.max_bytes)
    if opts.stall_timeout is not None:
        body["stall_timeout"] = float(opts.stall_timeout)
    if opts.storage is not None:
        body["storage"] = opts.storage
    return session.request("POST", "/v1/images/pull", body).result()["pull"]


def pull(
    ref: str,
    opts: PullOptions,
    session: Session,
    progress: bool | Callable[[list[dict[str, Any]]], Any] = True,
    out: TextIO | None = None,
) -> PullResult:
    """Pull ``ref`` (or join the pull already running) and wait for it.

    Raises ImagePullError (with the runner's status) when it fails.
    """
    st = start(ref, opts, session)
    draw: Callable[[list[dict[str, Any]]], Any] | None
    if callable(progress):
        draw = progress
    elif progress:
        draw = Progress(ref, out=out).update
    else:
        draw = None
    delay = 0.05
    while st["state"] == "running":
        if draw is not None and st["layers"]:
            draw(st["layers"])
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
        st = session.request("GET", f"/v1/images/pulls/{st['pull_id']}").result()["pull"]
    if draw is not None and st["layers"]:
        draw(st["layers"])
    if st["state"] != "done":
        status = int(st.get("error_status") or 500)
        raise ImagePullError(st.get("error") or f"pull of {ref} failed", code=_CODES.get(status, "pull_failed"), status=status)
    res = json.loads(st["result"])
    conf = res.get("config") or {}
    env: dict[str, str] = {}
    for kv in conf.get("Env") or []:
        k, sep, v = kv.partition("=")
        if sep and k:
            env[k] = v
    log.info("pulled %s (%s) as %s", ref, res["digest"], res["snapshot_id"])
    result = PullResult(
        ref=ref,
        name=res["name"],
        digest=res["digest"],
        snapshot_id=res["snapshot_id"],
        env=env,
        workdir=conf.get("WorkingDir") or None,
        user=conf.get("User") or None,
        entrypoint=list(conf.get("Entrypoint") or []),
        cmd=list(conf.get("Cmd") or []),
        compressed_size=int(res.get("compressed_size") or 0),
    )
    _resolved[(id(session), ref, opts.platform)] = result
    return result


#: (session, ref, platform) -> the last pull's result in this process: a
#: second sandbox from an image does not ask the registry again (as `docker
#: run` does not); Image.pull() and `sandlot image pull` always ask.
_resolved: dict[tuple[int, str, str | None], PullResult] = {}


def resolve(
    ref: str, opts: PullOptions, session: Session, out: TextIO | None = None, say: Callable[[str], Any] | None = None
) -> PullResult:
    """The image's layers, pulling them the first time this process needs them."""
    key = (id(session), ref, opts.platform)
    hit = _resolved.get(key)
    if hit is not None:
        try:
            session.request("GET", f"/v1/snapshots/{hit.snapshot_id}").result()
            return hit
        except Exception:  # removed since (sandlot image prune): pull again
            _resolved.pop(key, None)
    res = pull(ref, opts, session, out=out)
    _resolved[key] = res
    if say is not None:
        say(f"image {ref}: {res.digest} (layers up to {res.snapshot_id})")
    return res
