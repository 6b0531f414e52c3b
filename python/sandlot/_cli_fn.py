"""``sandlot functions`` and ``sandlot profile ...``: the RemoteFunction side of the CLI.

Kept apart from cli.py (sandboxes) and _cli_data.py (snapshots, images,
volumes); cli.py wires the three into one parser and ``sandlot ps`` shows the
functions table below the sandboxes via :func:`functions_table`.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ._cli_data import _table
from .function import create_profile, delete_profile, list_profiles
from .session import Session

Out = Callable[[str], None]


def _annotations(a: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((a or {}).items())) or "-"


def functions_table(session: Session, out: Out) -> int:
    """Print the runner's functions (workers, queue, counters, annotations); returns how many."""
    fns: list[dict[str, Any]] = session.request("GET", "/v1/functions").result()["functions"]
    if not fns:
        return 0
    rows: list[tuple[str, ...]] = [("FUNCTION ID", "NAME", "WORKERS", "QUEUED", "CALLS", "OK", "ERRORS", "ANNOTATIONS")]
    for f in fns:
        live = [w for w in f.get("workers") or [] if w.get("state") != "gone"]
        rows.append(
            (
                str(f.get("function_id")),
                str(f.get("name") or "-"),
                str(len(live)),
                str(f.get("queued", 0)),
                str(f.get("calls", 0)),
                str(f.get("ok", 0)),
                str(f.get("errors", 0)),
                _annotations(f.get("annotations")),
            )
        )
    _table(rows, out)
    return len(fns)


def add_commands(
    sub: Any,
    session: Callable[..., Session],
    out: Out,
    err: Out,
    age: Callable[[float], str],
) -> None:
    """Register ``functions`` and ``profile create|ls|rm`` on the top-level subparsers."""

    def cmd_functions(args: argparse.Namespace) -> int:
        if functions_table(session(), out) == 0:
            out("no functions registered")
        return 0

    def cmd_profile_create(args: argparse.Namespace) -> int:
        env: dict[str, str] = {}
        for kv in args.env or []:
            key, sep, value = kv.partition("=")
            if not sep or not key:
                err(f"--env takes KEY=VALUE, got {kv!r}")
                return 2
            env[key] = value
        p = create_profile(args.name, image=args.image, env=env, session=session(autostart=True))
        out(f"created profile {p['name']} ({p['profile_id']})")
        return 0

    def cmd_profile_ls(args: argparse.Namespace) -> int:
        profiles = list_profiles(session=session())
        rows: list[tuple[str, ...]] = [("PROFILE ID", "NAME", "IMAGE", "ENV")]
        for p in profiles:
            rows.append((str(p["profile_id"]), str(p["name"]), str(p.get("image") or "host"),
                         ",".join(sorted((p.get("env") or {}).keys())) or "-"))
        _table(rows, out)
        return 0

    def cmd_profile_rm(args: argparse.Namespace) -> int:
        for name in args.names:
            delete_profile(name, session=session())
            out(f"deleted profile {name}")
        return 0

    f = sub.add_parser("functions", help="list remote functions: workers, queue, counters, annotations")
    f.set_defaults(fn=cmd_functions)
    pr = sub.add_parser("profile", help="runner-side presets for RemoteFunction (profile_names=[...])")
    psub = pr.add_subparsers(dest="profile_cmd", required=True)
    c = psub.add_parser("create", help="create a profile")
    c.add_argument("name")
    c.add_argument("--image", default=None, help="image name the profile's functions use")
    c.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable (repeatable)")
    c.set_defaults(fn=cmd_profile_create)
    psub.add_parser("ls", help="list profiles").set_defaults(fn=cmd_profile_ls)
    rm = psub.add_parser("rm", help="delete profiles")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(fn=cmd_profile_rm)
