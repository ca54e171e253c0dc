"""A small chaos run on real processes: four simulated engines under the real launcher and
supervisor, requests through the client library and the gateway, and a seeded controller
that kills (SIGKILL), hangs, slows and 5xx-es workers while the supervisor restarts them.

Asserted: the figures that must be zero (failed non-streamed requests while a worker of the
model is alive, which the controller guarantees by never touching the last healthy one;
attempts sent to a worker known dead for more than 1 s), and that the run did what it
claims (kills, faults, restarts that became ready, requests on both paths; every tenth
client request streamed, counted apart). Timings are reported, not asserted.
bench/chaos.py runs the long version (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelserver.chaos import ChaosOptions, ChaosSettings, LoadSettings, run_chaos
from modelserver.chaos.fleet import write_chaos_fleet
from modelserver.config import load_fleet
from tests.reliability.launched import LaunchedFleet

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[LaunchedFleet]:
    path = write_chaos_fleet(tmp_path, replicas=4, speed=20)
    fleet = load_fleet(path)
    ports = {w.port: w.name for w in fleet.workers()}
    launched = LaunchedFleet(path, tmp_path / "state" / "state-local.json", ports)
    try:
        up = launched.run("up", "--detach")
        assert up.returncode == 0, up.stderr + up.stdout
        yield launched
    finally:
        left = launched.stop_everything()
        assert left == [], f"down left processes running: {left}"


async def test_chaos_loses_no_request_and_never_routes_to_a_worker_known_dead(
    launched: LaunchedFleet,
) -> None:
    options = ChaosOptions(
        duration_s=25.0, quiet_tail_s=5.0, seed=8,
        load=LoadSettings(concurrency=4, rate_per_s=10.0, stream_every=10),
        chaos=ChaosSettings(mean_gap_s=1.5, keep_healthy=1),
    )
    timeline, figures = await run_chaos(load_fleet(launched.path), options)
    launched.seen_pids.update(e.pid for e in timeline.states if e.pid)
    print(figures.to_json())

    assert set(figures.paths) == {"client", "gateway", "client-stream"}
    for via in ("client", "gateway"):  # streams may fail once a piece has reached the caller
        path = figures.paths[via]
        assert path.sent > 50, via
        assert path.failed == 0, f"{via}: {path.errors}"
    assert figures.paths["client-stream"].succeeded > 0
    assert figures.routed_to_known_dead == 0, figures.routed_to_known_dead_examples
    # The run broke things and the fleet recovered under traffic.
    assert figures.kills >= 1 and figures.restarts_ready >= 1
    assert {"hang", "slow", "error"} & set(figures.actions)
    assert figures.failed_attempts > 0  # failures happened and were retried elsewhere
