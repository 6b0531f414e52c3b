"""S3 buckets mounted into sandboxes (``Sandbox.create(s3_mounts=...)``,
RemoteFunction ``s3_mount=``).

The runner mounts each bucket with ``s3fs`` (a FUSE client; Debian package
``s3fs``) on its own side and binds the mount into the sandbox, so the
sandbox needs no network route to the endpoint. A mount spec is a dict::

    {"bucket": "my-bucket",                  # required
     "endpoint_url": "http://127.0.0.1:9000", # required (any S3-compatible server)
     "prefix": "some/dir",                    # optional: only keys under it are visible
     "access_key_id": "...", "secret_access_key": "...",  # optional (both or neither)
     "region": "us-east-1",                   # optional
     "read_only": False}                      # optional

Aliases accepted: ``bucket_name``, ``key_prefix``, ``bucket_endpoint_url``.
Credentials are sent to the runner only; they never appear in listings, logs
or error messages. Bad credentials, a missing bucket or an unreachable
endpoint fail the create within seconds with :class:`sandlot.SpawnError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _validate

_ALIASES = {"bucket_name": "bucket", "key_prefix": "prefix", "bucket_endpoint_url": "endpoint_url"}
_STR_FIELDS = ("bucket", "endpoint_url", "prefix", "access_key_id", "secret_access_key", "region")
_PATH_KEYS = ("mount_path", "path")


def _one(spec: Any, path: str | None, what: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(spec).__name__}")
    out: dict[str, Any] = {}
    for k, v in spec.items():
        k = _ALIASES.get(k, k)
        if k in _PATH_KEYS:
            if path is None:
                path = v
            continue
        if k in _STR_FIELDS:
            if v is None:
                continue
            if not isinstance(v, str):
                # Never echo a value: it may be a credential.
                raise TypeError(f"{what}[{k!r}] must be a str, got {type(v).__name__}")
            out[k] = v
        elif k == "read_only":
            if not isinstance(v, bool):
                raise TypeError(f"{what}['read_only'] must be a bool, got {type(v).__name__}")
            out[k] = v
        else:
            raise ValueError(f"{what}: unknown key {k!r}")
    for k in ("bucket", "endpoint_url"):
        if not out.get(k):
            raise ValueError(f"{what} needs {k!r}")
    if ("access_key_id" in out) != ("secret_access_key" in out):
        raise ValueError(f"{what}: give both access_key_id and secret_access_key, or neither")
    p = _validate.abs_path(path, f"{what} mount path")
    if p == "/":
        raise ValueError(f"{what} cannot mount over '/'")
    out["path"] = p
    return out


def s3_mounts_wire(value: Any, what: str = "s3_mounts") -> list[dict[str, Any]]:
    """The create body's ``s3_mounts``: from ``{"/path": spec}``, a list of specs
    with ``mount_path``, or one such spec."""
    if value is None:
        return []
    if isinstance(value, Mapping) and any(k in value for k in _PATH_KEYS):
        return [_one(value, None, what)]
    if isinstance(value, Mapping):
        return [_one(spec, p, f"{what}[{p!r}]") for p, spec in value.items()]
    if isinstance(value, (list, tuple)):
        return [_one(spec, None, f"{what}[{i}]") for i, spec in enumerate(value)]
    raise TypeError(f"{what} must be a dict or a list of dicts, got {type(value).__name__}")


def secrets_of(mounts: list[dict[str, Any]]) -> list[str]:
    """Values to scrub from any error text."""
    return [m[k] for m in mounts for k in ("access_key_id", "secret_access_key") if k in m]
