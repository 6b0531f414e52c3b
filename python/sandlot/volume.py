"""Volumes: persistent directories kept by the runner across sandboxes.

Mount one with ``Sandbox.create(volumes={"/mnt/data": vol})``; what a sandbox
writes there is still there for the next sandbox that mounts the volume.

Example:
    >>> from sandlot import Sandbox, Volume
    >>> vol = Volume.from_name("cache", create_if_missing=True)   # doctest: +SKIP
    >>> with Sandbox.create("echo hi > /mnt/data/f", volumes={"/mnt/data": vol}) as sb:  # doctest: +SKIP
    ...     sb.wait()
    0
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from ._aio import Op, classop, op
from .image import NAME_RE
from .session import Session, _resolve

__all__ = ["Volume"]


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"volume name must be a str, got {type(name).__name__}")
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid volume name {name!r}: use 1-63 characters from [A-Za-z0-9_.-], starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Volume:
    """A named persistent directory on the runner.

    Get one with :meth:`from_name` (``await Volume.from_name.aio(...)`` in asyncio).
    """

    name: str
    created_at: float | None = field(default=None, compare=False)
    _session: Session | None = field(default=None, compare=False, repr=False)

    @classop
    def from_name(
        cls: type[Volume], name: str, create_if_missing: bool = True, *, session: Session | None = None
    ) -> Op[Volume]:
        """The volume called ``name``; created if missing unless ``create_if_missing=False``.

        Raises NotFoundError if it does not exist and ``create_if_missing`` is False.

        Example:
            >>> Volume.from_name("scratch")                       # doctest: +SKIP
            Volume(name='scratch', created_at=1700000000.0)
        """
        _check_name(name)
        if not isinstance(create_if_missing, bool):
            raise TypeError(f"create_if_missing must be a bool, got {type(create_if_missing).__name__}")
        sess = _resolve(session)
        yield from sess._ensure()
        resp = yield sess.request("POST", "/v1/volumes", {"name": name, "create_if_missing": create_if_missing})
        v = resp["volume"]
        return cls(v["name"], v.get("created_at"), sess)

    @classop
    def list(cls: type[Volume], *, session: Session | None = None) -> Op[builtins.list[Volume]]:
        """All volumes on the runner, oldest first.

        Example:
            >>> [v.name for v in Volume.list()]                   # doctest: +SKIP
            ['cache', 'scratch']
        """
        sess = _resolve(session)
        yield from sess._ensure()
        resp = yield sess.request("GET", "/v1/volumes")
        return [cls(v["name"], v.get("created_at"), sess) for v in resp["volumes"]]

    @op
    def delete(self) -> Op[None]:
        """Delete the volume and its contents from the runner.

        Raises NotFoundError if it is already gone.
        """
        sess = _resolve(self._session)
        yield from sess._ensure()
        yield sess.request("POST", f"/v1/volumes/{self.name}/delete", {})
