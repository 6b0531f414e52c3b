"""Images: the read-only root filesystem a sandbox starts from.

An :class:`Image` is an immutable value naming a root filesystem the runner
knows how to use; the sandbox gets a private writable overlay on top, so
nothing it writes reaches the image.

Example:
    >>> from sandlot import Image
    >>> Image.host()
    Image('host')
    >>> Image.from_directory("/srv/rootfs").spec
    'dir:/srv/rootfs'
    >>> Image.named("python-3.11")
    Image('python-3.11')
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._build import Built
    from ._pull import PullOptions
    from .secret import Secret
    from .session import Session

__all__ = ["Image"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Image:
    """A sandbox root filesystem, as the runner's image string (``spec``).

    Build one with :meth:`host`, :meth:`from_directory` or :meth:`named`.
    """

    spec: str
    #: build steps on top of ``spec`` (run_commands, copies, env, workdir);
    #: an image with steps is built on first use (sandlot._build)
    _steps: tuple[tuple[Any, ...], ...] = field(default=(), repr=False)
    #: how to pull an ``oci:`` spec (credentials, platform, limits)
    _pull: PullOptions | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec:
            raise TypeError("use Image.host(), Image.from_directory(path) or Image.named(name)")

    @classmethod
    def host(cls) -> Image:
        """The host's own root filesystem, read-only below the sandbox's overlay (default)."""
        return cls("host")

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Image:
        """A directory holding a root filesystem (e.g. an unpacked container image).

        Relative paths are made absolute against the current directory. The path
        is resolved by the runner, i.e. on the runner's host.

        Example:
            >>> Image.from_directory("/srv/alpine")
            Image('dir:/srv/alpine')
        """
        p = os.fspath(path)
        if not isinstance(p, str):
            raise TypeError(f"path must be a str or os.PathLike[str], got {type(p).__name__}")
        if not p:
            raise ValueError("Image.from_directory() needs a directory path, got ''")
        return cls("dir:" + os.path.abspath(p))

    @classmethod
    def named(cls, name: str) -> Image:
        """An image registered with the runner under ``name``.

        Names match ``[A-Za-z0-9][A-Za-z0-9_.-]{0,62}``.
        """
        if not isinstance(name, str):
            raise TypeError(f"image name must be a str, got {type(name).__name__}")
        if not NAME_RE.fullmatch(name) or name == "host":
            raise ValueError(
                f"invalid image name {name!r}: use 1-63 characters from [A-Za-z0-9_.-], "
                "starting with a letter or digit (and not 'host')"
            )
        return cls(name)

    @classmethod
    def from_registry(
        cls,
        ref: str,
        *,
        secret: Secret | None = None,
        platform: str | None = None,
        insecure: bool = False,
        max_bytes: int | None = None,
        stall_timeout: float | None = None,
        storage: str | None = None,
    ) -> Image:
        """An image from an OCI/Docker registry, pulled by the runner on first use.

        ``ref`` is what docker takes: ``python:3.12-slim``,
        ``registry.example.com:5000/team/app:1.2``, ``name@sha256:...`` (no
        tag means ``latest``). Layers are stored once per content (shared with
        other images) as read-only snapshot layers, so later sandboxes start
        as fast as from the host image. The image's ``Env`` and
        ``WorkingDir`` apply to sandboxes unless ``env``/``workdir`` override
        them; its ``Entrypoint``/``Cmd`` are kept (``sandlot image pull``
        shows them) but a sandbox without ``cmd`` idles as always.

        Args:
            secret: credentials as ``REGISTRY_USERNAME`` / ``REGISTRY_PASSWORD``
                (default: ``~/.docker/config.json``, else anonymous).
            platform: ``"linux/arm64"`` etc. when the ref is a multi-platform
                index (default: the runner host's).
            insecure: plain HTTP to a non-loopback registry (loopback
                registries always use HTTP).
            max_bytes: refuse an image whose layers unpack to more (default 64 GiB).
            stall_timeout: seconds without a byte before the registry counts
                as hanging (default 60).
            storage: how new layers are stored: ``"dir"`` (default: unpacked
                straight into the layer directory) or ``"erofs"`` (one image
                file per layer, like snapshot captures; slower to pull, fewer
                inodes on the host). Layers already stored are reused either way.

        Raises (at build / first use): ImagePullError.

        Example:
            >>> Image.from_registry("127.0.0.1:5000/busybox:1")
            Image('oci:127.0.0.1:5000/busybox:1')
        """
        from ._pull import PullOptions

        if not isinstance(ref, str) or not ref or len(ref) > 512 or any(c.isspace() for c in ref):
            raise ValueError(f"Image.from_registry() needs a reference like 'busybox:1.36', got {ref!r}")
        if platform is not None and (not isinstance(platform, str) or not platform.startswith("linux/")):
            raise ValueError(f"platform must look like 'linux/amd64', got {platform!r}")
        if storage not in (None, "dir", "erofs"):
            raise ValueError(f"storage must be 'dir' or 'erofs', got {storage!r}")
        opts = PullOptions(
            secret=secret, platform=platform, insecure=insecure, max_bytes=max_bytes, stall_timeout=stall_timeout, storage=storage
        )
        return cls("oci:" + ref, _pull=opts)

    @classmethod
    def from_dockerfile(
        cls,
        path: str | os.PathLike[str],
        context: str | os.PathLike[str] | None = None,
        *,
        build_args: Mapping[str, str] | None = None,
        secret: Secret | None = None,
    ) -> Image:
        """An image described by a Dockerfile, built step by step (each step a
        cached layer, like :meth:`run_commands`).

        Supported: FROM (one stage, a registry image), RUN, COPY and ADD of
        local files and directories (relative to ``context``, default the
        Dockerfile's directory), ENV, WORKDIR, USER, ENTRYPOINT, CMD, ARG
        (``build_args`` override defaults), and LABEL/EXPOSE as no-ops. Any
        other instruction raises ``ValueError`` naming it and its line.

        Example:
            >>> import tempfile, pathlib
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> lines = ["FROM busybox:1", "ENV A=1", "RUN echo hi > /x"]
            >>> _ = (d / "Dockerfile").write_text(chr(10).join(lines))
            >>> Image.from_dockerfile(d / "Dockerfile")
            Image('oci:busybox:1', 2 steps)
        """
        from ._dockerfile import parse

        return parse(cls, os.fspath(path), None if context is None else os.fspath(context), dict(build_args or {}), secret)

    def __repr__(self) -> str:
        if self._steps:
            return f"Image({self.spec!r}, {len(self._steps)} steps)"
        return f"Image({self.spec!r})"

    # -- the builder: each call returns a new Image -------------------------------
    @classmethod
    def from_tar(cls, path: str | os.PathLike[str]) -> Image:
        """A root filesystem tarball (``debootstrap``, ``docker export``, ...).

        Unpacked and registered with the runner on first use as
        ``tar-<sha256 prefix>`` (once per distinct tarball).
        """
        p = os.path.abspath(os.fspath(path))
        if not os.path.isfile(p):
            raise FileNotFoundError(f"Image.from_tar: {p} is not a file")
        return cls("tar:" + p)

    def _add(self, step: tuple[Any, ...]) -> Image:
        return replace(self, _steps=self._steps + (step,))

    def run_commands(self, *commands: str) -> Image:
        """Run shell commands (``sh -c``, in order, stopping at the first
        failure) in a sandbox of the image so far; their result is one layer."""
        if not commands or not all(isinstance(c, str) and c for c in commands):
            raise TypeError("run_commands() takes one or more non-empty shell command strings")
        return self._add(("run", tuple(commands)))

    def copy_local_file(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a host file into the image at ``remote_path`` (absolute)."""
        if not isinstance(remote_path, str) or not remote_path.startswith("/"):
            raise ValueError(f"remote_path must be an absolute path, got {remote_path!r}")
        return self._add(("copy_file", os.path.abspath(os.fspath(local_path)), remote_path))

    def copy_local_dir(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a host directory's contents into ``remote_path`` (absolute)."""
        if not isinstance(remote_path, str) or not remote_path.startswith("/"):
            raise ValueError(f"remote_path must be an absolute path, got {remote_path!r}")
        return self._add(("copy_dir", os.path.abspath(os.fspath(local_path)), remote_path))

    def env(self, vars: Mapping[str, str]) -> Image:
        """Environment for later steps and for sandboxes started from the image."""
        if not isinstance(vars, Mapping) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in vars.items()
        ):
            raise TypeError("env() takes a mapping of variable name (str, no '=') to str")
        return self._add(("env", tuple(sorted(vars.items()))))

    def workdir(self, path: str) -> Image:
        """Create ``path`` (absolute) and make it the working directory."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"workdir must be an absolute path, got {path!r}")
        return self._add(("workdir", path))

    def _needs_build(self) -> bool:
        return bool(self._steps) or self.spec.startswith(("tar:", "oci:"))

    def build(self, *, session: Session | None = None, output: Callable[[str], Any] | None = None) -> Built:
        """Build now (``Sandbox.create`` does it on first use); cached steps are
        skipped. ``output`` receives the build log (default: ``sys.stderr``)."""
        from ._build import build
        from .session import _resolve

        return build(self, _resolve(session), output)

    def pull(self, *, session: Session | None = None, progress: bool | Callable[[list[dict[str, Any]]], Any] = True) -> Any:
        """Pull a :meth:`from_registry` image now (asking the registry again
        even if this process pulled it before); returns a ``PullResult``
        (``digest``, ``snapshot_id``, ``env``, ``workdir``, ``user``,
        ``entrypoint``, ``cmd``). ``progress``: draw per-layer progress on
        stderr (default), ``False``, or a callable given the layer list.

        Raises ImagePullError (``.status``: 404, 401, 422, 502, 504).
        """
        from ._pull import PullOptions, pull
        from .session import _resolve

        if not self.spec.startswith("oci:"):
            raise ValueError("pull() is for Image.from_registry() images")
        return pull(self.spec[4:], self._pull or PullOptions(), _resolve(session), progress=progress)

    def register(
        self, name: str, *, session: Session | None = None, output: Callable[[str], Any] | None = None
    ) -> Image:
        """Build, then register the result with the runner as ``name``.

        Returns ``Image.named(name)``; the name works wherever an image name
        does (``Sandbox.create(image=...)``, RemoteFunction ``container_image``),
        is listed by ``sandlot image ls`` and removed by ``sandlot image rm``.
        Raises SandboxError (409) if the name is taken.
        """
        from ._build import register
        from .session import _resolve

        named = Image.named(name)  # validates the name first
        register(self, name, _resolve(session), output)
        return named
