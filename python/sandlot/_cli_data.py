"""``sandlot snapshot|image|volume ls|rm``: the data subcommands of the CLI.

Kept apart from cli.py so the runner/sandbox commands and these evolve
separately; cli.py calls :func:`add_commands` while building its parser.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from .errors import NotFoundError, SandboxError
from .session import Session
from .snapshot import SandboxSnapshot
from .volume import Volume

__all__ = ["add_commands"]


def _size(n: float | None) -> str:
    """Human size of a snapshot ("-" when the runner did not record one).

    Example:
        >>> _size(3 * 1024 * 1024), _size(None)
        ('3.0M', '-')
    """
    if not n:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def _table(rows: list[tuple[str, ...]], out: Callable[[str], None]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out("  ".join(r[i].ljust(widths[i]) for i in range(len(widths))) + "  " + r[-1])


def _print_rows(rows: list[tuple[str, ...]], quiet: bool, out: Callable[[str], None]) -> None:
    """A table with its header, or with ``-q`` just the first column."""
    if quiet:
        for r in rows[1:]:
            out(r[0])
    else:
        _table(rows, out)


def _delete_each(
    names: list[str], delete: Callable[[str], object], out: Callable[[str], None], err: Callable[[str], None]
) -> int:
    """Delete every name, reporting each failure; 1 if any failed."""
    rc = 0
    for name in names:
        try:
            delete(name)
        except NotFoundError as exc:
            err(str(exc))  # the message already names it
            rc = 1
        except SandboxError as exc:
            err(f"{name}: {exc}")
            rc = 1
        else:
            out(name)
    return rc


def add_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    session: Callable[[], Session],
    out: Callable[[str], None],
    err: Callable[[str], None],
    age: Callable[[float], str],
) -> None:
    """Add ``snapshot``, ``image`` and ``volume`` (each with ``ls`` and ``rm``) to ``sub``."""

    def snap_ls(args: argparse.Namespace) -> int:
        snaps = SandboxSnapshot.list(session=session())
        if args.quiet:
            for s in snaps:
                out(s.snapshot_id)
            return 0
        now = time.time()
        rows: list[tuple[str, ...]] = [("SNAPSHOT ID", "KIND", "STORAGE", "SIZE", "AGE", "IMAGE", "PARENT", "FROM SANDBOX")]
        for s in snaps:
            rows.append(
                (
                    s.snapshot_id,
                    s.kind,
                    s.storage,
                    _size(s.size),
                    age(now - (s.created_at or now)),
                    s.image,
                    s.parent or "-",
                    s.sandbox_id or "-",
                )
            )
        _table(rows, out)
        return 0

    def snap_rm(args: argparse.Namespace) -> int:
        s = session()
        return _delete_each(args.ids, lambda sid: SandboxSnapshot(sid, _session=s).delete(), out, err)

    def image_ls(args: argparse.Namespace) -> int:
        s = session()
        images = s.request("GET", "/v1/images").result()["images"]
        now = time.time()
        rows: list[tuple[str, ...]] = [("NAME", "AGE")]
        for im in images:
            rows.append((im["name"], age(now - (im.get("created_at") or now))))
        _print_rows(rows, args.quiet, out)
        return 0

    def image_rm(args: argparse.Namespace) -> int:
        s = session()
        return _delete_each(args.names, lambda name: s.request("POST", f"/v1/images/{name}/delete", {}).result(), out, err)

    def volume_ls(args: argparse.Namespace) -> int:
        vols = Volume.list(session=session())
        now = time.time()
        rows: list[tuple[str, ...]] = [("NAME", "AGE")]
        for v in vols:
            rows.append((v.name, age(now - (v.created_at or now))))
        _print_rows(rows, args.quiet, out)
        return 0

    def volume_rm(args: argparse.Namespace) -> int:
        s = session()
        return _delete_each(args.names, lambda name: Volume(name, None, s).delete(), out, err)

    for noun, helptext, ls, rm, what in (
        ("snapshot", "list or delete sandbox snapshots", snap_ls, snap_rm, "ids"),
        ("image", "list or delete registered images", image_ls, image_rm, "names"),
        ("volume", "list or delete volumes", volume_ls, volume_rm, "names"),
    ):
        p = sub.add_parser(noun, help=helptext)
        psub = p.add_subparsers(dest="action", metavar="ACTION")
        psub.required = True
        pl = psub.add_parser("ls", help=f"list {noun}s")
        pl.add_argument("-q", "--quiet", action="store_true", help="only print ids/names")
        pl.set_defaults(fn=ls)
        pr = psub.add_parser("rm", help=f"delete {noun}s")
        pr.add_argument(what, nargs="+", metavar="ID" if what == "ids" else "NAME")
        pr.set_defaults(fn=rm)
