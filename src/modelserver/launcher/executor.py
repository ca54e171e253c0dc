"""Where a fleet's launch runs, behind one small interface the commands call.

    local   this host's share, supervised in this machine's `up` process (`launcher.local`,
            driven by `launcher.commands`)
    ray     the whole fleet on a Ray cluster: a placement group and a supervising actor per
            replica (`launcher.cluster`)

`executor_for(fleet)` gives the Ray executor for a fleet with `[cluster]` and None for a
host-by-host fleet, whose commands still live in `launcher.commands` (they take `--host` and
`--detach`, which have no meaning on a cluster).
"""

from __future__ import annotations

from typing import Protocol

from modelserver.config import Fleet
from modelserver.errors import LaunchError


class Executor(Protocol):
    def up(self, fleet: Fleet, dry_run: bool = False) -> int:
        """Bring what runs to the fleet file (add, keep, replace, remove); an exit code.
        `dry_run`: print what would change, change nothing."""
        ...

    def down(self, fleet: Fleet) -> int:
        """Stop everything of the fleet this executor runs; nothing is left."""
        ...

    def status(self, fleet: Fleet, json_out: bool) -> int:
        """Print a row per worker (`--json`: today's fields, and `node` on a cluster)."""
        ...

    def logs(self, fleet: Fleet, worker: str, follow: bool, lines: int) -> int:
        """Print a worker's log, wherever it runs."""
        ...


def executor_for(fleet: Fleet) -> Executor | None:
    if fleet.cluster is None:
        return None
    from modelserver.launcher.cluster.commands import RayExecutor

    return RayExecutor()


def cluster_executor(fleet: Fleet, host: str | None) -> Executor:
    """The executor of a fleet with [cluster] (its module, and Ray, imported only then)."""
    if host is not None:
        raise LaunchError("--host: not used in cluster mode; Ray places the replicas")
    executor = executor_for(fleet)
    assert executor is not None
    return executor
