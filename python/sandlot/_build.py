"""Building chained images: each step a snapshot layer, cached by its inputs.

An :class:`~sandlot.Image` with steps (``run_commands``, ``copy_local_file``,
``copy_local_dir``, ``workdir``) or a tarball base is built on first use:

* the base is the image string the runner knows (``host``, ``dir:/path``, a
  registered name); ``Image.from_tar`` is unpacked once and registered as
  ``tar-<sha256 prefix>``, so a second build reuses it;
* every step runs in a sandbox started from the previous step's layer and is
  captured with ``Sandbox.snapshot`` under the label ``build-<key>``, where key
  = sha256(previous key, the step, and for copies the bytes copied);
* a step whose label exists is not run again ("cached"): a second build of the
  same image is a handful of requests, and a changed step rebuilds from there.

``env`` steps only change the environment of later steps and of the sandboxes
started from the image; they make no layer. Build output (each step's stdout and
stderr) streams to ``output`` (default: ``sys.stderr``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SandboxError

if TYPE_CHECKING:
    from .image import Image
    from .session import Session

__all__ = ["ImageBuildError", "Built", "build"]

COPY_SRC = "/tmp/.sandlot-copy-src"  # on the sandbox's /tmp tmpfs: never in a layer


class ImageBuildError(SandboxError):
    """A build step failed; the message names the step and carries its output's tail."""


@dataclass(frozen=True)
class Built:
    """What Sandbox.create needs to start from a built image."""

    base: str  # the runner's image string
    snapshot_id: str | None  # top layer, None when there are no layer steps
    env: dict[str, str]
    workdir: str | None
    #: a registry image's (or Dockerfile's) USER, ENTRYPOINT and CMD: recorded,
    #: not applied (sandboxes run as root and idle without a cmd)
    user: str | None = None
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def _digest_path(path: str) -> str:
    """sha256 of a file's bytes and mode, or of a tree's names, modes, link
    targets and bytes, in sorted order."""
    h = hashlib.sha256()

    def add_file(p: str, rel: str) -> None:
        st = os.lstat(p)
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if os.path.islink(p):
            h.update(os.readlink(p).encode())
        elif os.path.isfile(p):
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")

    if os.path.isdir(path) and not os.path.islink(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel = os.path.relpath(dirpath, path)
            add_file(dirpath, rel)
            for name in sorted(filenames):
                add_file(os.path.join(dirpath, name), os.path.join(rel, name))
    else:
        add_file(path, ".")
    return h.hexdigest()


def _tar_base(path: str, session: Session, say: Callable[[str], None]) -> str:
    """Register the tarball's tree with the runner once; its image name."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    name = "tar-" + h.hexdigest()[:16]
    have = {im["name"] for im in session.request("GET", "/v1/images").result()["images"]}
    if name in have:
        say(f"base {os.path.basename(path)}: cached as image {name}")
        return name
    say(f"base {os.path.basename(path)}: unpacking into image {name}")
    with tempfile.TemporaryDirectory(prefix="sandlot-tar-") as tmp:
        root = os.path.join(tmp, "rootfs")
        os.mkdir(root, 0o755)
        r = subprocess.run(
            ["tar", "-x", "-p", "--numeric-owner", "-f", path, "-C", root], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise ImageBuildError(f"Image.from_tar({path!r}): tar failed: {r.stderr.strip()}")
        try:
            session.request("POST", "/v1/images", {"name": name, "source": root}, timeout=3600).result()
        except SandboxError as exc:
            if "already exists" not in str(exc):  # a concurrent build registered it
                raise
    return name


def _step_script(step: tuple[Any, ...]) -> list[str]:
    kind = step[0]
    if kind == "run":
        return list(step[1])
    if kind == "workdir":
        return [f"mkdir -p '{step[1]}'"]
    if kind == "copy_file":
        dst = step[2]
        return [f"mkdir -p \"$(dirname '{dst}')\" && cp -a {COPY_SRC} '{dst}'"]
    if kind == "copy_dir":
        dst = step[2]
        return [f"mkdir -p '{dst}' && cp -a {COPY_SRC}/. '{dst}/'"]
    raise AssertionError(kind)


def build(image: Image, session: Session, output: Callable[[str], Any] | None = None) -> Built:
    """Build ``image`` (cached layers are reused); see the module docstring."""
    from .sandbox import Sandbox

    write = output if output is not None else sys.stderr.write

    def say(msg: str) -> None:
        write(f"[sandlot image] {msg}\n")

    spec = image.spec
    env: dict[str, str] = {}
    workdir: str | None = None
    top: str | None = None
    user: str | None = None
    entrypoint: tuple[str, ...] = ()
    img_cmd: tuple[str, ...] = ()
    if spec.startswith("tar:"):
        base = _tar_base(spec[4:], session, say)
    elif spec.startswith("oci:"):
        from ._pull import PullOptions, resolve

        res = resolve(spec[4:], image._pull or PullOptions(), session, out=_Out(write) if output is not None else None, say=say)
        base = "oci:" + res.digest  # the cache key: a moved tag rebuilds the steps
        top = res.snapshot_id
        env = dict(res.env)
        workdir = res.workdir
        user, entrypoint, img_cmd = res.user, tuple(res.entrypoint), tuple(res.cmd)
    else:
        base = spec
    key = hashlib.sha256(json.dumps(["base", base]).encode()).hexdigest()
    labels = {
        s["label"]: s["snapshot_id"]
        for s in session.request("GET", "/v1/snapshots").result()["snapshots"]
        if s.get("label")
    }
    steps = image._steps
    for i, step in enumerate(steps, 1):
        kind = step[0]
        ident: list[Any] = list(step)
        if kind in ("copy_file", "copy_dir"):
            src = step[1]
            if kind == "copy_file" and not os.path.isfile(src):
                raise ImageBuildError(f"copy_local_file: {src} is not a file")
            if kind == "copy_dir" and not os.path.isdir(src):
                raise ImageBuildError(f"copy_local_dir: {src} is not a directory")
            ident.append(_digest_path(src))
        key = hashlib.sha256(json.dumps([key, ident]).encode()).hexdigest()
        if kind == "env":
            env.update(dict(step[1]))
            continue
        if kind == "user":
            user = step[1]
            continue
        if kind == "entrypoint":
            entrypoint, img_cmd = tuple(step[1]), ()  # docker: ENTRYPOINT resets CMD
            continue
        if kind == "cmd":
            img_cmd = tuple(step[1])
            continue
        desc = f"step {i}/{len(steps)}: {kind} {' && '.join(_step_script(step)) if kind == 'run' else step[1:]}"
        label = "build-" + key[:40]
        if label in labels:
            say(f"{desc} (cached)")
            top = labels[label]
            if kind == "workdir":
                workdir = step[1]
            continue
        say(desc)
        mounts = {COPY_SRC: step[1]} if kind in ("copy_file", "copy_dir") else None
        sb = Sandbox.create(
            image=None if top is not None else _image_of(base),
            snapshot=None if top is None else _snap(top, session),
            env=env,
            workdir=workdir,
            timeout=86400.0,
            session=session,
            mounted_files=mounts,
        )
        try:
            for cmd in _step_script(step):
                p = sb.exec(["sh", "-c", "exec 2>&1\n" + cmd])
                tail: list[str] = []
                for line in p.stdout:
                    write(line)
                    tail = (tail + [line])[-20:]
                code = p.wait()
                if code != 0:
                    raise ImageBuildError(
                        f"image build {desc} failed: `{cmd}` exited with {code}; last output:\n" + "".join(tail)
                    )
            resp = session.request(
                "POST", f"/v1/sandboxes/{sb.sandbox_id}/snapshot", {"label": label}, timeout=3600
            ).result()
            top = resp["snapshot"]["snapshot_id"]
            labels[label] = top
        finally:
            sb.terminate()
        if kind == "workdir":
            workdir = step[1]
    if top is not None and image._steps:
        say(f"done: layer {top}")
    if user not in (None, "", "root", "0", "0:0", "root:root"):
        say(f"note: USER {user} is recorded but not applied (sandboxes run as root)")
    return Built(base=base, snapshot_id=top, env=env, workdir=workdir, user=user, entrypoint=entrypoint, cmd=img_cmd)


class _Out:
    """A text stream over a write callable (progress lines into ``output``)."""

    def __init__(self, write: Callable[[str], Any]) -> None:
        self.write = write

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _image_of(spec: str) -> Image:
    from .image import Image

    return Image(spec)


def _snap(snapshot_id: str, session: Session) -> Any:
    from .snapshot import SandboxSnapshot

    return SandboxSnapshot(snapshot_id, _session=session)


def register(image: Image, name: str, session: Session, output: Callable[[str], Any] | None = None) -> str:
    """Build ``image`` and register its top layer as image ``name``; the snapshot id.

    The runner starts a registered snapshot with the env and workdir recorded
    in it, so when the image's final env/workdir differ from the top layer's
    (an ``env``/``workdir`` step after the last layer, or no layer at all) a
    "seal" layer is captured with them first (cached like any step).
    """
    from .sandbox import Sandbox

    built = build(image, session, output)
    top = built.snapshot_id
    meta = session.request("GET", f"/v1/snapshots/{top}").result()["snapshot"] if top else None
    if meta is None or dict(meta.get("env") or {}) != built.env or meta.get("workdir") != built.workdir:
        key = hashlib.sha256(json.dumps(["seal", built.base, top, sorted(built.env.items()), built.workdir]).encode())
        label = "build-" + key.hexdigest()[:40]
        cached = [s for s in session.request("GET", "/v1/snapshots").result()["snapshots"] if s.get("label") == label]
        if cached:
            top = cached[0]["snapshot_id"]
        else:
            sb = Sandbox.create(
                image=None if top else _image_of(built.base),
                snapshot=_snap(top, session) if top else None,
                env=built.env,
                workdir=built.workdir,
                timeout=600.0,
                session=session,
            )
            try:
                resp = session.request(
                    "POST", f"/v1/sandboxes/{sb.sandbox_id}/snapshot", {"label": label}, timeout=3600
                ).result()
                top = resp["snapshot"]["snapshot_id"]
            finally:
                sb.terminate()
    session.request("POST", f"/v1/snapshots/{top}/register", {"name": name}).result()
    return top
