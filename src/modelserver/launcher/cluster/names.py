"""What ModelServer's things are called in Ray. Every name carries the fleet's name, so two
fleets share a cluster without touching each other's replicas."""

from __future__ import annotations

NAMESPACE = "modelserver"
"""The Ray namespace of every actor and placement group, and of our key-value entries."""


KEPT_FROM_ENGINES = ("RAY_AUTH_TOKEN",)
"""Not passed on to engines: the cluster's token opens the whole cluster."""


def actor_name(fleet: str, worker: str) -> str:
    return f"{fleet}/{worker}"


def rank_actor_name(fleet: str, worker: str, rank: int) -> str:
    """The actor of rank `rank` >= 1 of a replica that spans nodes (rank 0's is the
    replica's own actor)."""
    return f"{fleet}/{worker}/rank{rank}"


def placement_group_name(fleet: str, worker: str) -> str:
    return f"{fleet}/{worker}/pg"


def worker_of(fleet: str, name: str) -> str | None:
    """The worker an actor name of `fleet` is for, None if the name is not one of ours."""
    prefix = f"{fleet}/"
    if not name.startswith(prefix) or "/" in name[len(prefix):]:
        return None  # another fleet's, a placement group's, or a rank's actor
    return name[len(prefix):]


def fleet_key(fleet: str) -> bytes:
    """Key-value entry holding the fleet document the actors read (gateway keys left out)."""
    return f"{fleet}/fleet".encode()


def record_prefix(fleet: str) -> bytes:
    return f"{fleet}/workers/".encode()


def record_key(fleet: str, worker: str) -> bytes:
    """Key-value entry where a replica's actor publishes its record (status, URL, node)."""
    return record_prefix(fleet) + worker.encode()
