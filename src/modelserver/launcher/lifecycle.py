"""A worker's lifecycle: the states and the one function allowed to move between them.

Standard library only, so the rules can be read (and tested) without anything else.

    STOPPED ──> WAITING ──placed──> STARTING ──probe ok──> READY
       │           ├──> FAILED        ^    │                  │
       │           └──> STOPPED       │    v                  v
       ├──start, or adopt (loading)───┘  BACKOFF <──── crash / unhealthy
       ├──adopt (healthy)──────────────────────────────────> READY
       └──> FAILED (cannot run here)

    STARTING, READY, BACKOFF ──stop──> STOPPING ──> STOPPED
    READY ──drain (`up` removes or replaces it)──> DRAINING ──> STOPPING
    STARTING, READY ──no restarts left──> FAILED ──stop──> STOPPED
"""

from __future__ import annotations

from enum import StrEnum


class WorkerStatus(StrEnum):
    WAITING = "waiting"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    """Still running, but routers must send it nothing new: requests in flight finish,
    then it stops (`up` on a changed fleet file removes or replaces it)."""
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class IllegalTransition(RuntimeError):
    """A bug: code asked for a move the lifecycle does not have."""


S = WorkerStatus

# Every legal edge, with why it exists.
_EDGES: dict[tuple[WorkerStatus, WorkerStatus], str] = {
    # The supervisor starts a worker that is not running (first start, or after `down`), or
    # adopts a live worker of a previous launcher that is still loading.
    (S.STOPPED, S.STARTING): "start requested, or adopted while still loading",
    # Its GPUs or port are not free yet (or the launcher is still looking): placement waits.
    (S.STOPPED, S.WAITING): "waiting to be placed",
    # Placement found it GPUs and a free port.
    (S.WAITING, S.STARTING): "placed; starting",
    # It can never be placed here, or launcher.wait_for_gpus_s ran out.
    (S.WAITING, S.FAILED): "could not be placed",
    # Stop requested before it was placed: nothing runs.
    (S.WAITING, S.STOPPED): "stop requested while waiting",
    # A launcher restarted after a crash found the process alive, ours and healthy.
    (S.STOPPED, S.READY): "adopted a live worker of a previous launcher",
    # The placement said it can never run (or its backend could not be built).
    (S.STOPPED, S.FAILED): "cannot be placed or started at all",
    # The readiness probe answered within ready_timeout_s.
    (S.STARTING, S.READY): "readiness probe passed",
    # It exited or never became ready, and restarts are left: wait, then try again.
    (S.STARTING, S.BACKOFF): "start failed; restart after a delay",
    # It exited or never became ready, and max_restarts is spent.
    (S.STARTING, S.FAILED): "start failed; no restarts left",
    # A running worker crashed or failed several health probes in a row; restarts left.
    (S.READY, S.BACKOFF): "crashed or unhealthy; restart after a delay",
    # The same with max_restarts spent.
    (S.READY, S.FAILED): "crashed or unhealthy; no restarts left",
    # The backoff delay elapsed: spawn again.
    (S.BACKOFF, S.STARTING): "backoff elapsed; restarting",
    # Stop requested while it runs, starts, or waits to restart.
    (S.STARTING, S.STOPPING): "stop requested while starting",
    (S.READY, S.STOPPING): "stop requested",
    (S.BACKOFF, S.STOPPING): "stop requested during backoff",
    # `up` applies a changed fleet file: a worker that goes is first drained (the state file
    # says so, and the routers reading it stop picking it) ...
    (S.READY, S.DRAINING): "drain requested: removed or replaced by a changed fleet file",
    # ... then stopped once its requests in flight finished (or launcher.drain_timeout_s
    # ran out), or at once if it died meanwhile.
    (S.DRAINING, S.STOPPING): "drained; stopping",
    # Its process group is gone (SIGTERM, grace, SIGKILL).
    (S.STOPPING, S.STOPPED): "process group gone",
    # `down` on a failed worker: nothing runs, record it as stopped.
    (S.FAILED, S.STOPPED): "cleared by stop",
}


def transition(current: WorkerStatus, target: WorkerStatus) -> WorkerStatus:
    """Return `target` if the lifecycle has the edge current -> target, else raise."""
    if (current, target) not in _EDGES:
        allowed = sorted(str(to) for (frm, to) in _EDGES if frm is current)
        raise IllegalTransition(
            f"illegal worker transition {current} -> {target}; from {current} only: "
            + (", ".join(allowed) or "nothing")
        )
    return target


def legal_edges() -> dict[tuple[WorkerStatus, WorkerStatus], str]:
    """A copy of the edge table (for tests and documentation)."""
    return dict(_EDGES)
