"""``Image.from_dockerfile``: a Dockerfile turned into an Image's build steps.

Every instruction maps onto the builder that exists (python/sandlot/_build.py),
so each RUN/COPY/ADD/WORKDIR is one cached layer built in a sandbox:

======================  ==================================================
FROM ref                ``Image.from_registry(ref)`` (one stage only)
RUN cmd / RUN ["a"]     ``run_commands`` (ARG values exported first)
COPY / ADD src... dst   ``copy_local_file`` / ``copy_local_dir`` from the
                        context (no URLs, no archive extraction, no flags)
ENV k=v / ENV k v       ``env``
WORKDIR path            ``workdir`` (relative to the previous one)
ARG name[=default]      substituted as ``$name`` / ``${name}`` /
                        ``${name:-default}``; ``build_args`` override
USER, ENTRYPOINT, CMD   recorded (``Built.user`` / ``entrypoint`` / ``cmd``)
LABEL, EXPOSE           accepted, no effect
======================  ==================================================

Anything else raises ``ValueError`` naming the instruction and its line.

Example:
    >>> nl, bs = chr(10), chr(92)
    >>> _logical_lines("RUN a " + bs + nl + "  b" + nl + "# c" + nl + "ENV X=1" + nl)
    [(1, 'RUN a    b'), (4, 'ENV X=1')]
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .image import Image
    from .secret import Secret

__all__ = ["parse"]

_ARCHIVE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tbz2|tar\.xz|txz|tar\.zst)$")
_VAR = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) with continuations joined, comments dropped."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continuation are skipped, as docker does
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        out.append((start, buf.strip()))
        buf = ""
    if buf:
        out.append((start, buf.strip()))
    return out


def _subst(s: str, args: dict[str, str]) -> str:
    def rep(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in args:
            return args[name]
        return m.group(2) if m.group(2) is not None else ""

    return _VAR.sub(rep, s)


def _json_or_shell(rest: str) -> list[str] | None:
    if rest.startswith("["):
        try:
            v = json.loads(rest)
        except ValueError:
            return None
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return v
    return None


def parse(cls: type[Image], path: str, context: str | None, build_args: dict[str, str], secret: Secret | None) -> Image:
    """The Image a Dockerfile describes (see the module docstring)."""
    path = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise FileNotFoundError(f"Image.from_dockerfile: cannot read {path}: {exc.strerror}") from None
    ctx = os.path.realpath(context if context is not None else os.path.dirname(path))
    if not os.path.isdir(ctx):
        raise NotADirectoryError(f"Image.from_dockerfile: context {ctx} is not a directory")
    where = os.path.basename(path)
    args: dict[str, str] = {}
    declared: set[str] = set()
    img: Image | None = None
    workdir = "/"

    def err(n: int, msg: str) -> ValueError:
        return ValueError(f"{where} line {n}: {msg}")

    for n, line in _logical_lines(text):
        instr, _, rest = line.partition(" ")
        op = instr.upper()
        rest = rest.strip()
        if op == "ARG":
            name, eq, default = rest.partition("=")
            if not re.fullmatch(r"\w+", name):
                raise err(n, f"ARG needs a name, got {rest!r}")
            declared.add(name)
            if name in build_args:
                args[name] = build_args[name]
            elif eq:
                args[name] = _subst(default.strip().strip('"'), args)
            continue
        if op == "FROM":
            if img is not None:
                raise err(n, "a second FROM (multi-stage build) is not supported")
            parts = _subst(rest, args).split()
            if not parts or (len(parts) not in (1, 3)) or (len(parts) == 3 and parts[1].upper() != "AS"):
                raise err(n, f"FROM takes an image reference (and optionally AS name), got {rest!r}")
            if parts[0].startswith("--"):
                raise err(n, f"FROM flags ({parts[0]}) are not supported")
            if parts[0] == "scratch":
                raise err(n, "FROM scratch is not supported (start from a registry image)")
            img = cls.from_registry(parts[0], secret=secret)
            continue
        if img is None:
            raise err(n, f"{op} before FROM")
        if op in ("LABEL", "EXPOSE", "MAINTAINER"):
            continue
        if op == "RUN":
            if rest.startswith("--"):
                raise err(n, f"RUN flags ({rest.split()[0]}) are not supported")
            argv = _json_or_shell(rest)
            cmd = shlex.join(argv) if argv is not None else rest
            exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in args.items() if k in declared)
            img = img.run_commands(exports + cmd)
        elif op in ("COPY", "ADD"):
            if rest.startswith("--"):
                raise err(n, f"{op} flags ({rest.split()[0]}) are not supported")
            items = _json_or_shell(rest)
            items = [_subst(x, args) for x in (items if items is not None else shlex.split(rest))]
            if len(items) < 2:
                raise err(n, f"{op} needs a source and a destination")
            *srcs, dst = items
            if not dst.startswith("/"):
                dst = os.path.join(workdir, dst) + ("/" if dst.endswith("/") else "")
            files: list[str] = []
            for s in srcs:
                if "://" in s:
                    raise err(n, f"{op} of a URL ({s}) is not supported")
                if op == "ADD" and _ARCHIVE.search(s):
                    raise err(n, f"ADD of an archive ({s}) would extract it, which is not supported; use COPY and RUN tar")
                matches = sorted(glob.glob(os.path.join(ctx, s))) if any(c in s for c in "*?[") else [os.path.join(ctx, s)]
                for m in matches:
                    real = os.path.realpath(m)
                    if real != ctx and not real.startswith(ctx + os.sep):
                        raise err(n, f"{op} source {s} is outside the build context {ctx}")
                    if not os.path.exists(real):
                        raise err(n, f"{op} source {s} not found in the build context {ctx}")
                    files.append(real)
            many = len(files) > 1
            for f_ in files:
                if os.path.isdir(f_):
                    img = img.copy_local_dir(f_, dst.rstrip("/") or "/")
                else:
                    target = os.path.join(dst, os.path.basename(f_)) if (many or dst.endswith("/")) else dst
                    img = img.copy_local_file(f_, target)
        elif op == "ENV":
            pairs: dict[str, str] = {}
            toks = shlex.split(rest)
            if toks and "=" not in toks[0]:
                k, _, v = rest.partition(" ")
                pairs[k] = _subst(v.strip().strip('"'), args)
            else:
                for t in toks:
                    k, eq, v = t.partition("=")
                    if not eq:
                        raise err(n, f"ENV expects key=value pairs, got {t!r}")
                    pairs[k] = _subst(v, {**args, **pairs})
            args.update(pairs)  # later instructions may use them
            declared.update(pairs)
            img = img.env(pairs)
        elif op == "WORKDIR":
            w = _subst(rest, args)
            workdir = os.path.normpath(os.path.join(workdir, w))
            img = img.workdir(workdir)
        elif op == "USER":
            img = img._add(("user", _subst(rest, args)))
        elif op in ("ENTRYPOINT", "CMD"):
            argv = _json_or_shell(rest)
            if argv is None:
                argv = ["/bin/sh", "-c", rest]
            img = img._add((op.lower(), tuple(argv)))
        else:
            raise err(n, f"instruction {op} is not supported (supported: FROM RUN COPY ADD ENV WORKDIR USER ENTRYPOINT CMD ARG LABEL EXPOSE)")
    if img is None:
        raise ValueError(f"{where}: no FROM instruction")
    return img
