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
from dataclasses import dataclass

__all__ = ["Image"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Image:
    """A sandbox root filesystem, as the runner's image string (``spec``).

    Build one with :meth:`host`, :meth:`from_directory` or :meth:`named`.
    """

    spec: str

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

    def __repr__(self) -> str:
        return f"Image({self.spec!r})"
