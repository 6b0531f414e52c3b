"""``sandlot snapshot|image|volume ls|rm``: the data subcommands of the CLI.

Kept apart from cli.py so the runner/sandbox commands and these evolve
separately; cli.py calls :func:`add_commands` while building its parser.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

from .errors import NotFoundError, SandboxError
from .session import Session
from .snapshot import SandboxSnapshot
from .volume import Volume

__all__ = ["add_commands"]


def _fmt_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _chain(s: Session, top: str) -> list[str]:
    """A snapshot and its parents, top first (what a pulled image is made of)."""
    ids, cur = [], top
    while cur and len(ids) < 256:
        ids.append(cur)
        try:
            cur = s.request("GET", f"/v1/snapshots/{cur}").result()["snapshot"].get("parent")
        except NotFoundError:
            break
    return ids


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
        pulled = s.request("GET", "/v1/images/pulled").result()
        info = {p["name"]: json.loads(p["info"]) for p in pulled["images"]}
        sizes = {l["snapshot_id"]: l["bytes"] for l in pulled["layers"]}
        now = time.time()
        rows: list[tuple[str, ...]] = [("NAME", "AGE", "DISK", "DIGEST", "REFERENCE")]
        for im in images:
            i = info.get(im["name"])
            disk = _fmt_size(sum(sizes.get(sid, 0) for sid in _chain(s, i["snapshot_id"]))) if i else "-"
            rows.append(
                (
                    im["name"],
                    age(now - (im.get("created_at") or now)),
                    disk,
                    i["digest"][:19] if i else "-",
                    i["ref"] if i else "-",
                )
            )
        _print_rows(rows, args.quiet, out)
        return 0

    def image_pull(args: argparse.Namespace) -> int:
        from .image import Image

        img = Image.from_registry(args.ref, platform=args.platform, insecure=args.insecure)
        try:
            res = img.pull(session=session(), progress=not args.quiet)
        except SandboxError as exc:
            err(f"pull {args.ref}: {exc}")
            return 1
        out(f"{res.name} {res.digest} {res.snapshot_id}")
        if res.entrypoint or res.cmd:
            out(f"  entrypoint {res.entrypoint} cmd {res.cmd} (not run by default: pass cmd= to Sandbox.create)")
        return 0

    def image_du(args: argparse.Namespace) -> int:
        s = session()
        pulled = s.request("GET", "/v1/images/pulled").result()
        used = {sid for p in pulled["images"] for sid in _chain(s, json.loads(p["info"])["snapshot_id"])}
        total = sum(l["bytes"] for l in pulled["layers"])
        free_ = sum(l["bytes"] for l in pulled["layers"] if l["snapshot_id"] not in used)
        out(f"{len(pulled['images'])} pulled images, {len(pulled['layers'])} layers, {_fmt_size(total)} on disk")
        out(f"{_fmt_size(free_)} in layers no pulled image uses (sandlot image prune)")
        return 0

    def image_prune(args: argparse.Namespace) -> int:
        """Delete pulled layers that no pulled image, snapshot or sandbox uses."""
        s = session()
        pulled = s.request("GET", "/v1/images/pulled").result()
        if pulled.get("pulls_running"):
            # a running pull's layers are not named by an image yet
            err(f"{pulled['pulls_running']} pull(s) running; prune again when they end")
            return 1
        used = {sid for p in pulled["images"] for sid in _chain(s, json.loads(p["info"])["snapshot_id"])}
        todo = [l["snapshot_id"] for l in pulled["layers"] if l["snapshot_id"] not in used]
        freed, removed, progress = 0, 0, True
        sizes = {l["snapshot_id"]: l["bytes"] for l in pulled["layers"]}
        while todo and progress:  # children before parents: retry until nothing moves
            progress = False
            for sid in list(todo):
                try:
                    s.request("POST", f"/v1/snapshots/{sid}/delete", {}).result()
                except NotFoundError:
                    todo.remove(sid)
                except SandboxError:
                    continue  # in use (a child snapshot, a sandbox, a registered image)
                else:
                    todo.remove(sid)
                    freed += sizes.get(sid, 0)
                    removed += 1
                    progress = True
        out(f"removed {removed} layers, {_fmt_size(freed)}; {len(todo)} still in use")
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

    def more_image(p: argparse.ArgumentParser, psub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        pp = psub.add_parser("pull", help="pull an image from a registry (docker reference)")
        pp.add_argument("ref", help="e.g. python:3.12-slim, host:5000/team/app:1, name@sha256:...")
        pp.add_argument("--platform", help="linux/arm64 etc. (default: the runner host's)")
        pp.add_argument("--insecure", action="store_true", help="plain HTTP to a non-loopback registry")
        pp.add_argument("-q", "--quiet", action="store_true", help="no progress")
        pp.set_defaults(fn=image_pull)
        psub.add_parser("du", help="disk used by pulled images").set_defaults(fn=image_du)
        psub.add_parser("prune", help="delete pulled layers nothing uses").set_defaults(fn=image_prune)

    for noun, helptext, ls, rm, what in (
        ("snapshot", "list or delete sandbox snapshots", snap_ls, snap_rm, "ids"),
        ("image", "list, pull, delete and prune images", image_ls, image_rm, "names"),
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
        if noun == "image":
            more_image(p, psub)
