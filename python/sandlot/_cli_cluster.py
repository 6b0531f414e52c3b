"""``sandlot cluster status|stop``: the runners of a Ray cluster (docs/cluster.md).

Split from cli.py like _cli_data.py and _cli_fn.py. The cluster is
``--cluster URL``, else ``$SANDLOT_URL`` when it is a cluster URL, else
``"ray"`` (``$RAY_ADDRESS`` or the local cluster).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from .session import Session


def _cluster_session(args: argparse.Namespace) -> Any:
    from .cluster import parse_cluster_url

    url = args.cluster
    if url is None:
        env = os.environ.get("SANDLOT_URL") or ""
        url = env if parse_cluster_url(env) is not None else "ray"
    if parse_cluster_url(url) is None:
        raise ValueError(f"--cluster {url!r} is not a cluster URL: use ray, ray://host:port or ray+gcs://host:port")
    return Session(cluster=url)


def add_commands(sub: Any, out: Callable[[str], None], err: Callable[[str], None]) -> None:
    """Add ``cluster status`` and ``cluster stop`` to the CLI's subparsers."""

    def status(args: argparse.Namespace) -> int:
        s = _cluster_session(args)
        rows = sorted(s.runners, key=lambda r: r["tag"])
        out(f"{'RUNNER':<16} {'ADDRESS':<24} {'CPU':>5} {'SANDBOXES':>9}  {'TIERS':<16} RUNNER ID")
        for r in rows:
            cpu = (r.get("resources") or {}).get("CPU", 0)
            out(f"{r['tag']:<16} {r['url'][len('http://'):]:<24} {cpu:>5g} {r['sandboxes']:>9}  "
                f"{'/'.join(r['tiers']):<16} {r['runner_id']}")
        return 0 if rows else 1

    def stop(args: argparse.Namespace) -> int:
        s = _cluster_session(args)
        n = s.shutdown()
        out(f"stopped {n} runner(s); their sandboxes have ended (Ray keeps running)")
        return 0

    c = sub.add_parser("cluster", help="the runners of a Ray cluster (see docs/cluster.md)")
    c.add_argument("--cluster", metavar="URL", help="ray, ray://host:port or ray+gcs://host:port "
                   "(default: SANDLOT_URL if it is one, else ray)")
    csub = c.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    csub.add_parser("status", help="one line per node's runner").set_defaults(fn=status)
    csub.add_parser("stop", help="stop every node's runner (their sandboxes end)").set_defaults(fn=stop)
