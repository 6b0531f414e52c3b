"""Argument checks done before anything is sent, with messages that say what to fix.

Example:
    >>> command("echo hi", what="cmd")
    ['/bin/sh', '-c', 'echo hi']
    >>> command(["ls", "-l"], what="cmd")
    ['ls', '-l']
    >>> command((), what="cmd") is None
    True
    >>> sandbox_timeout(0)
    Traceback (most recent call last):
    ...
    ValueError: timeout must be > 0 and at most 86400 seconds (24 h), got 0
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from .secret import check_env_name

#: Largest sandbox timeout the runner accepts (seconds).
MAX_SANDBOX_TIMEOUT = 86400.0

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{what} must be a number of seconds, got NaN")
    return v


def sandbox_timeout(value: object) -> float:
    """A sandbox lifetime: 0 < t <= 86400 seconds."""
    v = _number(value, "timeout")
    if not (0 < v <= MAX_SANDBOX_TIMEOUT):
        raise ValueError(f"timeout must be > 0 and at most 86400 seconds (24 h), got {value!r}")
    return v


def wait_timeout(value: object) -> float | None:
    """A wait limit: None (forever) or >= 0 seconds."""
    if value is None:
        return None
    v = _number(value, "timeout")
    if v < 0:
        raise ValueError(f"timeout must be None (wait forever) or >= 0 seconds, got {value!r}")
    return v


def _arg(x: object, what: str, i: int) -> str:
    if isinstance(x, os.PathLike):
        x = os.fspath(x)
    if not isinstance(x, str):
        raise TypeError(f"{what}[{i}] must be a str, got {type(x).__name__} ({x!r})")
    if "\0" in x:
        raise ValueError(f"{what}[{i}] contains a NUL byte")
    return x


def command(cmd: object, *, what: str) -> list[str] | None:
    """Normalise a command: list/tuple of str, or a shell string (-> /bin/sh -c).

    Returns None for an empty list/tuple (no command).
    """
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ValueError(f"{what} is an empty shell string; give a command such as 'echo hi' or ['ls', '-l']")
        if "\0" in cmd:
            raise ValueError(f"{what} contains a NUL byte")
        return ["/bin/sh", "-c", cmd]
    if cmd is None:
        return None
    if isinstance(cmd, (bytes, bytearray)):
        raise TypeError(f"{what} must be a str or a list of str, got bytes; decode it first")
    if not isinstance(cmd, (list, tuple)):
        raise TypeError(
            f"{what} must be a list/tuple of str (e.g. ['ls', '-l']) or a shell string, got {type(cmd).__name__}"
        )
    argv = [_arg(x, what, i) for i, x in enumerate(cmd)]
    if not argv:
        return None
    if not argv[0]:
        raise ValueError(f"{what}[0] (the program) is an empty string")
    return argv


def env(value: object, what: str = "env") -> dict[str, str]:
    """A str -> str mapping of environment variables (None -> {})."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping of str -> str, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        check_env_name(k, what)
        if not isinstance(v, str):
            raise TypeError(f"{what}[{k!r}] must be a str, got {type(v).__name__}")
        if "\0" in v:
            raise ValueError(f"{what}[{k!r}] contains a NUL byte")
        out[k] = v
    return out


def abs_path(value: object, what: str, *, optional: bool = False) -> Any:
    """An absolute path inside the sandbox (str or PathLike)."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be an absolute path (str), got {type(value).__name__}")
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path inside the sandbox such as '/work', got {value!r}")
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL byte")
    return value


def sandbox_id(value: object) -> str:
    """A sandbox id as returned by the runner ("sb-" + 16 hex digits)."""
    if not isinstance(value, str):
        raise TypeError(f"sandbox_id must be a str such as 'sb-0123456789abcdef', got {type(value).__name__}")
    if not _ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a sandbox id; ids look like 'sb-0123456789abcdef'")
    return value
