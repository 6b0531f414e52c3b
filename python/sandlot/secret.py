"""Secrets: environment variables whose values never show up anywhere.

A :class:`Secret` is passed to ``Sandbox.create(secrets=[...])``; its variables
are set in the environment of the sandbox's processes. The values are sent to
the runner once and never appear in ``repr()``, logs, ``Sandbox.list()``,
``sb.info()``, ``sandlot ps`` or error messages (only the *names* are listed).

Example:
    >>> from sandlot import Secret
    >>> s = Secret.from_dict({"API_KEY": "hunter2"})
    >>> s
    Secret(names=['API_KEY'])
    >>> "hunter2" in repr(s) or "hunter2" in str(s)
    False
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Secret"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_name(name: object, what: str) -> str:
    """Validate an environment variable name; returns it."""
    if not isinstance(name, str):
        raise TypeError(f"{what} names must be str, got {type(name).__name__}")
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits and '_' (not starting with a digit)")
    return name


class Secret:
    """A set of secret environment variables.

    Build one with :meth:`from_dict` or :meth:`from_env`. Immutable.
    """

    __slots__ = ("_items",)
    _items: tuple[tuple[str, str], ...]

    def __init__(self, _items: tuple[tuple[str, str], ...]) -> None:
        object.__setattr__(self, "_items", _items)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable; build a new one with Secret.from_dict()")

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> Secret:
        """Secret variables from a mapping of name -> value (both str).

        Example:
            >>> Secret.from_dict({"TOKEN": "abc", "USER": "me"}).names
            ['TOKEN', 'USER']
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"Secret.from_dict() takes a mapping of str -> str, got {type(values).__name__}")
        items: list[tuple[str, str]] = []
        for k, v in values.items():
            check_env_name(k, "secret")
            if not isinstance(v, str):
                # Never echo the value: only its type.
                raise TypeError(f"secret {k!r} must have a str value, got {type(v).__name__}")
            if "\0" in v:
                raise ValueError(f"secret {k!r} contains a NUL byte, which environment variables cannot hold")
            items.append((k, v))
        return cls(tuple(items))

    @classmethod
    def from_env(cls, *names: str) -> Secret:
        """Secret variables copied from this process's environment.

        Raises KeyError naming a variable that is not set.

        Example:
            >>> import os; os.environ["SANDLOT_DOC_SECRET"] = "x"
            >>> Secret.from_env("SANDLOT_DOC_SECRET").names
            ['SANDLOT_DOC_SECRET']
        """
        out: dict[str, str] = {}
        for n in names:
            check_env_name(n, "secret")
            if n not in os.environ:
                raise KeyError(f"Secret.from_env(): environment variable {n} is not set")
            out[n] = os.environ[n]
        return cls.from_dict(out)

    @property
    def names(self) -> list[str]:
        """The variable names (never the values)."""
        return [k for k, _ in self._items]

    def _values(self) -> Iterable[tuple[str, str]]:
        return self._items

    def __repr__(self) -> str:
        return f"Secret(names={self.names!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("sandlot.Secret cannot be pickled (it would write the values out)")
