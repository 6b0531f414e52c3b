"""sandlot on a Ray cluster: the same ``Sandbox`` and ``RemoteFunction`` API
across many hosts (``pip install "sandlot[ray]"``; docs/cluster.md).

Example::

    import sandlot

    sess = sandlot.Session(cluster="ray")          # ray.init(address="auto")
    sb = sandlot.Sandbox.create("sleep 60", session=sess)
    sb.sandbox_id                                  # 'n-3f2a9c1e0b7d.sb-0123456789abcdef'
    sandlot.Sandbox.lookup(sb.sandbox_id, session=sess)   # from any client

    @sess.function(retries=2)
    def square(x):
        return x * x

    [r.result() for r in square.map([(i,) for i in range(10_000)])]

Importing this package does not import ray; creating a
:class:`ClusterSession` does.
"""

from __future__ import annotations

from ._session import ClusterSession, Placement, parse_cluster_url, shutdown_cluster

__all__ = ["ClusterSession", "Placement", "parse_cluster_url", "shutdown_cluster"]
