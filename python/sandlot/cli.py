"""The ``sandlot`` command line.

Usage::

    sandlot runner start          # start the embedded runner (if not running)
    sandlot runner stop           # stop it (its sandboxes are killed)
    sandlot runner restart        # stop it and start this installation's runner
    sandlot runner status         # url, pid, runner id, cgroup mode, sandbox count
    sandlot ps                    # list sandboxes: id, status, age, command
    sandlot exec ID -- CMD...     # run CMD in sandbox ID, stream its output, exit with its code
    sandlot logs [-f] ID          # the entry command's stdout+stderr (-f: follow)
    sandlot kill ID...            # terminate sandboxes
    sandlot snapshot ls|rm ID...  # list / delete snapshots (also: image, volume)
    sandlot image pull REF | du | prune   # registry images: pull, disk usage, drop unused layers
    sandlot cluster status|stop   # the runners of a Ray cluster (SANDLOT_URL=ray, docs/cluster.md)

``python -m sandlot`` does the same. The runner is found like the library finds
it: ``SANDLOT_URL`` / ``SANDLOT_TOKEN``, else the embedded default.

Example:
    >>> main(["--version"])                       # doctest: +SKIP
    sandlot 0.1.0
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from . import __version__, _cli_cluster, _cli_data, _cli_fn
from ._runtime import read_pid, stop_runner
from .errors import NotFoundError, RunnerUnavailableError, SandboxError
from .process import InputStream, OutputStream
from .sandbox import Sandbox
from .session import Session

__all__ = ["main"]

log = logging.getLogger("sandlot")


def _age(seconds: float) -> str:
    """Short human age: 42s, 5m, 3h, 2d.

    >>> _age(42.4), _age(301), _age(3 * 3600 + 5), _age(2 * 86400)
    ('42s', '5m', '3h', '2d')
    """
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(f"sandlot: {text}\n")


def _session(*, autostart: bool = False) -> Session:
    # Only `runner start` starts a runner: listing or killing sandboxes of a
    # runner that is not there should say so, not start an empty one.
    return Session(autostart=autostart)


# -- runner ------------------------------------------------------------------------
def _cmd_runner_start(args: argparse.Namespace) -> int:
    s = _session(autostart=True)
    if not s.embedded:
        try:
            s.health()
        except RunnerUnavailableError:
            _err(f"no runner answers at SANDLOT_URL={s.base_url}; start sandlotd on that host, or unset SANDLOT_URL")
            return 1
        _out(f"runner already running at {s.base_url} (SANDLOT_URL)")
        return 0
    started = s._start_embedded()
    h = s.health()
    _out(f"{'started' if started else 'already running'}: {s.base_url} (pid {h.get('pid')})")
    return 0


def _cmd_runner_stop(args: argparse.Namespace) -> int:
    s = _session()
    pid: int | None = None
    try:
        # Ask the runner itself first: the pid file may be stale.
        pid = int(s.request("GET", "/v1/health", timeout=5.0).result()["pid"])
    except RunnerUnavailableError:
        if s.embedded:
            assert s.runtime_paths is not None
            pid = read_pid(s.runtime_paths)
    if pid is None:
        _out(f"no runner running at {s.base_url}")
        return 0
    if not stop_runner(pid):
        if s.embedded:
            _out(f"no runner running at {s.base_url}")
            return 0
        _err(f"the runner at {s.base_url} reports pid {pid}, which is not a sandlotd on this host; stop it there")
        return 1
    _out(f"stopped runner (pid {pid})")
    return 0


def _cmd_runner_restart(args: argparse.Namespace) -> int:
    s = _session(autostart=True)
    if not s.embedded:
        _err(f"SANDLOT_URL={s.base_url} names a runner this command did not start; restart sandlotd on its host")
        return 1
    old: dict | None = None
    try:
        old = s.request("GET", "/v1/health", timeout=5.0).result()
    except RunnerUnavailableError:
        pass
    if old is not None:
        if not stop_runner(int(old["pid"])):
            _err(f"the runner reports pid {old['pid']}, which is not a sandlotd on this host")
            return 1
    s._start_embedded()
    h = s.health()
    if old is None:
        _out(f"started: {s.base_url} (pid {h.get('pid')}); no runner was running")
        return 0
    lost = int(old.get("sandboxes") or 0)
    _out(f"restarted: {s.base_url} (pid {old.get('pid')} -> {h.get('pid')})")
    if lost:
        # Said plainly: a restart does not carry sandboxes over (yet).
        _out(f"{lost} sandbox(es) of the old runner ended with it; clients reconnect by themselves")
    return 0


def _cmd_runner_status(args: argparse.Namespace) -> int:
    s = _session()
    try:
        h = s.request("GET", "/v1/health", timeout=10.0).result()
    except RunnerUnavailableError:
        _out(f"url:       {s.base_url}")
        _out("status:    not running" + (" (start it with `sandlot runner start`)" if s.embedded else ""))
        return 1
    _out(f"url:       {s.base_url}")
    _out("status:    running")
    _out(f"pid:       {h.get('pid')}")
    _out(f"runner_id: {h.get('runner_id')}")
    _out(f"version:   {h.get('version')}")
    _out(f"cgroup:    {h.get('cgroup')}")
    if h.get("rootless"):
        _out(f"mode:      rootless (user namespace: uid 0 inside = uid {h.get('uid')} outside)")
    elif "rootless" in h:
        _out("mode:      root")
    lim = h.get("limits") or {}
    gpus = lim.pop("gpus", None) if isinstance(lim, dict) else None
    _out("limits:    " + (", ".join(f"{k} {'enforced' if v else 'NOT enforced'}" for k, v in lim.items()
                                    if k != "gpu") or "unknown"))
    if isinstance(gpus, dict) and gpus.get("total"):
        types = ", ".join(gpus.get("types") or []) or "untyped"
        _out(f"gpus:      {gpus.get('free')} of {gpus.get('total')} free ({types})")
    else:
        _out("gpus:      none (sandlotd --gpu /dev/nvidiaN or --gpu auto gives sandboxes GPUs)")
    if lim and not all(v for k, v in lim.items() if k != "gpu"):
        _out("           (a sandbox asking for a limit that is NOT enforced is refused; docs/security.md)")
    net = h.get("network") or {}
    if net.get("available"):
        _out(f"network:   nftables table inet {net.get('table')}, address pool {net.get('pool')}")
    else:
        _out(f"network:   unavailable ({net.get('reason') or 'unknown'}); sandboxes get only lo")
    mv = h.get("microvm") or {}
    if mv.get("available"):
        _out(f"microvm:   available ({mv.get('accel')}), default isolation {mv.get('default_isolation')}")
        if mv.get("note"):
            _out(f"           {mv.get('note')}")
    elif mv:
        _out(f"microvm:   unavailable ({mv.get('note') or 'unknown'})")
    _out(f"sandboxes: {h.get('sandboxes')}")
    _out(f"uptime:    {_age(float(h.get('uptime') or 0))}")
    if s.embedded and s.runtime_paths is not None:
        _out(f"log:       {s.runtime_paths.log_file}")
    return 0


# -- sandboxes ---------------------------------------------------------------------
def _cmd_ps(args: argparse.Namespace) -> int:
    sess = _session()
    boxes = Sandbox.list(session=sess)
    rows = [("SANDBOX ID", "STATUS", "AGE", "COMMAND")]
    now = time.time()
    for sb in boxes:
        info = sb._info
        assert info is not None
        status = info.status
        if info.status != "running" and info.exit_code is not None:
            status = f"{info.status} ({info.exit_code})"
        cmd = shlex.join(info.cmd) if info.cmd is not None else "-"
        if len(cmd) > 60 and not args.no_trunc:
            cmd = cmd[:57] + "..."
        rows.append((info.sandbox_id, status, _age(now - info.created_at), cmd))
    if args.quiet:
        for r in rows[1:]:
            _out(r[0])
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        _out("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    # Remote functions (with their annotations) share the listing.
    lines: list[str] = []
    if _cli_fn.functions_table(sess, lines.append):
        _out("")
        for line in lines:
            _out(line)
    return 0


async def _pump(stream: OutputStream, out: IO[bytes]) -> None:
    async for chunk in stream.iter_bytes():
        out.write(chunk)
        out.flush()


def _forward_stdin(proc_stdin: InputStream, stop: threading.Event) -> None:
    """Thread: copy our stdin to the process's stdin, then close it."""
    try:
        fd = sys.stdin.buffer
        while not stop.is_set():
            data = fd.read1(65536) if hasattr(fd, "read1") else fd.read(65536)
            if not data:
                break
            proc_stdin.write(data)
    except (SandboxError, OSError, ValueError) as exc:
        log.debug("stdin forwarding stopped: %s", exc)
    finally:
        try:
            proc_stdin.close()
        except SandboxError:
            pass


def _exit_status(code: int) -> int:
    """Shell convention: death by signal N -> 128 + N."""
    return 128 + (-code) if code < 0 else code


def _cmd_exec(args: argparse.Namespace) -> int:
    cmd: list[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _err("exec needs a command: sandlot exec ID -- CMD [ARGS...]")
        return 2
    sb = Sandbox.lookup(args.sandbox_id, session=_session())
    env = {}
    for kv in args.env or ():
        k, sep, v = kv.partition("=")
        if not sep:
            _err(f"--env wants NAME=VALUE, got {kv!r}")
            return 2
        env[k] = v
    proc = sb.exec(cmd, env=env, workdir=args.workdir)
    stop = threading.Event()
    if args.interactive:
        threading.Thread(target=_forward_stdin, args=(proc.stdin, stop), daemon=True).start()
    else:
        proc.stdin.close()

    async def stream_all() -> int:
        await asyncio.gather(_pump(proc.stdout, sys.stdout.buffer), _pump(proc.stderr, sys.stderr.buffer))
        return await proc.wait.aio()

    try:
        code = asyncio.run(stream_all())
    finally:
        stop.set()
    return _exit_status(code)


def _cmd_logs(args: argparse.Namespace) -> int:
    sb = Sandbox.lookup(args.sandbox_id, session=_session())
    info = sb._info
    if info is not None and info.cmd is None:
        _err(f"{sb.sandbox_id} has no entry command, so no logs; see the output of exec'd processes instead")
        return 1
    if args.follow:

        async def follow() -> None:
            await asyncio.gather(_pump(sb.stdout, sys.stdout.buffer), _pump(sb.stderr, sys.stderr.buffer))

        asyncio.run(follow())
    else:
        # What is there now, without waiting for more.
        for stream, out in ((sb.stdout, sys.stdout.buffer), (sb.stderr, sys.stderr.buffer)):
            while True:
                text = stream.read_available()
                if not text:
                    break
                out.write(text.encode("utf-8"))
            out.flush()
    return 0


def _cmd_kill(args: argparse.Namespace) -> int:
    s = _session()
    rc = 0
    for sid in args.sandbox_ids:
        try:
            Sandbox.lookup(sid, session=s).terminate()
        except NotFoundError:
            _err(f"no sandbox {sid} (unknown or already terminated)")
            rc = 1
            continue
        _out(sid)
    return rc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandlot", description="Manage sandlot sandboxes and the sandlot runner.")
    p.add_argument("--version", action="version", version=f"sandlot {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("runner", help="start, stop or inspect the runner")
    rsub = r.add_subparsers(dest="action", metavar="ACTION")
    rsub.required = True
    rsub.add_parser("start", help="start the embedded runner unless it is running").set_defaults(fn=_cmd_runner_start)
    rsub.add_parser("stop", help="stop the runner (kills its sandboxes)").set_defaults(fn=_cmd_runner_stop)
    rsub.add_parser("restart", help="stop the embedded runner and start it again (an upgrade's new binary)").set_defaults(
        fn=_cmd_runner_restart)
    rsub.add_parser("status", help="url, pid, runner id, cgroup mode, sandbox count").set_defaults(
        fn=_cmd_runner_status
    )

    ps = sub.add_parser("ps", help="list sandboxes")
    ps.add_argument("-q", "--quiet", action="store_true", help="only print ids")
    ps.add_argument("--no-trunc", action="store_true", help="do not shorten commands")
    ps.set_defaults(fn=_cmd_ps)

    ex = sub.add_parser(
        "exec", help="run a command in a sandbox", usage="sandlot exec [-i] [-e K=V] [-w DIR] ID -- CMD..."
    )
    ex.add_argument("-i", "--interactive", action="store_true", help="forward stdin to the command")
    ex.add_argument("-e", "--env", action="append", metavar="NAME=VALUE", help="set an environment variable")
    ex.add_argument("-w", "--workdir", help="absolute working directory inside the sandbox")
    ex.add_argument("sandbox_id", metavar="ID")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    ex.set_defaults(fn=_cmd_exec)

    lg = sub.add_parser("logs", help="output of a sandbox's entry command")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing output until the command exits")
    lg.add_argument("sandbox_id", metavar="ID")
    lg.set_defaults(fn=_cmd_logs)

    k = sub.add_parser("kill", help="terminate sandboxes")
    k.add_argument("sandbox_ids", nargs="+", metavar="ID")
    k.set_defaults(fn=_cmd_kill)

    _cli_data.add_commands(sub, _session, _out, _err, _age)
    _cli_fn.add_commands(sub, _session, _out, _err, _age)
    _cli_cluster.add_commands(sub, _out, _err)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130
    except (SandboxError, PermissionError, FileNotFoundError, ValueError, TypeError) as exc:
        _err(str(exc))
        return 1
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
