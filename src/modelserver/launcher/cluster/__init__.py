"""Cluster mode: a fleet run on a Ray cluster (`[cluster] engine = "ray"`).

    names.py      what things are called in Ray: namespace, actors, placement groups, keys
    connect.py    joining the cluster (address forms, versions, token auth, a private Ray)
    guard.py      the process between the actor and its engine: no engine outlives its actor
    actor.py      the supervising actor of one replica, on its node
    ranks.py      a replica larger than a node: a process per node, rank 0's actor leading
    executor.py   up / down / status rows / logs from any machine of the cluster
    rollout.py    what `up` changes and in which order (adds ready first, drains); no Ray
    checks.py     what `up` refuses before starting anything; why a replica waits; spans
    discovery.py  the router's workers, read from the cluster
    commands.py   the CLI's cluster-mode `up`, `down`, `status`, `logs`

Ray is optional: only executor.py imports it at module level, and only code that joined
the cluster first (`connect`, which raises ClusterError naming the `cluster` extra when Ray
is missing) imports executor.py. Without `[cluster]`, nothing here is imported at all.
"""

from __future__ import annotations

from modelserver.errors import ClusterError

NEEDS_EXTRA = (
    "cluster mode needs the `cluster` extra (Ray): pip install 'modelserver[cluster]'"
    " (the fleet file has a [cluster] table)"
)


def require_ray() -> None:
    """Raise ClusterError saying how to install Ray when it is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ClusterError(NEEDS_EXTRA) from None
