"""Carrying a plan out on a supervisor (`Rollout`), and building the plan from a fleet file
(`plan_for`), with fake processes, a fake probe and a clock that skips."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil

from modelserver.config import Fleet, parse_fleet
from modelserver.launcher.gpus import GIB, Gpu, StaticInventory
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.local import worker_plan
from modelserver.launcher.placement import GpuView, Placement
from modelserver.launcher.reconcile import (
    Reconciler,
    Rollout,
    plan_for,
    read_request,
    request_path,
)
from modelserver.launcher.state import HostState, WorkerRecord, read_state
from modelserver.launcher.supervisor import Supervisor, fingerprint
from modelserver.launcher.worker_table import state_rows
from modelserver.netinfo import free_port_range

from .fakes import FakeClock, FakeProbe, FakeSpawner

S = WorkerStatus
QUICK = {"health_interval_s": 2.0, "ready_poll_s": 1.0, "stop_grace_s": 5.0,
         "drain_notice_s": 3.0, "drain_timeout_s": 30.0, "backoff_jitter": 0.0}


def _fleet(tmp_path: Path, models: list[dict[str, Any]], **launcher: Any) -> Fleet:
    return parse_fleet({
        "fleet": {"state_dir": str(tmp_path / "state")},
        "hosts": [{"name": "h", "address": "127.0.0.1", "gpus": "none"}],
        "models": [{"backend": "sim", **m} for m in models],
        "launcher": {**QUICK, **launcher},
    })


class Story:
    """Every status change of every worker, in order, as (worker, status, pid)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.events: list[tuple[str, str, int | None]] = []
        supervisor.listeners.append(self._seen)

    def _seen(self, record: WorkerRecord) -> None:
        if not self.events or self.events[-1][:2] != (record.name, record.status):
            self.events.append((record.name, record.status, record.pid))

    def first(self, name: str, status: str) -> int:
        return next(i for i, (n, s, _) in enumerate(self.events) if (n, s) == (name, status))

    def most_out_at_once(self, names: set[str]) -> int:
        """The most workers of `names` not ready at the same moment."""
        statuses = dict.fromkeys(names, "ready")
        worst = 0
        for name, status, _ in self.events:
            if name in statuses:
                statuses[name] = status
                worst = max(worst, sum(1 for s in statuses.values() if s != "ready"))
        return worst


async def _running(fleet: Fleet, spawner: FakeSpawner, probe: FakeProbe,
                   clock: FakeClock) -> Supervisor:
    sup = Supervisor("h", fleet.fleet.name, fleet.launcher, spawner=spawner, probe=probe,
                     clock=clock, state_file=fleet.state_dir() / "state-h.json")
    for spec in fleet.workers("h"):
        sup.add(worker_plan(fleet, Placement(spec, (), None))).start()
    await asyncio.wait_for(sup.wait_until(lambda s: all(
        w.status is S.READY for w in s.workers.values())), 10)
    return sup


async def _roll(sup: Supervisor, fleet: Fleet, clock: FakeClock) -> list[str]:
    plan = plan_for(fleet, "h", [w.record for w in sup.workers.values()], GpuView())

    def idle(worker: object) -> Any:
        async def in_flight() -> int:
            return 0
        return in_flight

    rollout = Rollout(sup, fleet, "h", StaticInventory([]), clock, idle, {})
    return await asyncio.wait_for(rollout.run(plan), 20)


async def test_adds_are_ready_before_anything_goes_and_a_model_loses_one_at_a_time(
    tmp_path: Path,
) -> None:
    a, gone, new = free_port_range(3), free_port_range(1), free_port_range(1)
    before = _fleet(tmp_path, [{"name": "a", "port": a, "replicas": 3},
                               {"name": "gone", "port": gone}])
    after = _fleet(tmp_path, [{"name": "a", "port": a, "replicas": 3, "args": ["--x", "1"]},
                              {"name": "new", "port": new}])
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up |= {f"http://127.0.0.1:{p}" for p in (a, a + 1, a + 2, gone, new)}
    sup = await _running(before, spawner, probe, clock)
    old_pids = {n: w.record.pid for n, w in sup.workers.items()}
    story = Story(sup)

    assert await _roll(sup, after, clock) == []

    assert story.first("new-0@h", "ready") < min(
        story.first(n, "draining") for n in ("a-0@h", "a-1@h", "a-2@h", "gone-0@h"))
    assert story.most_out_at_once({"a-0@h", "a-1@h", "a-2@h"}) == 1
    # In replica order, each after the previous one is back.
    assert story.first("a-0@h", "draining") < story.first("a-1@h", "draining") < story.first(
        "a-2@h", "draining")
    assert story.first("gone-0@h", "draining") > max(
        i for i, (n, s, _) in enumerate(story.events) if n == "a-2@h" and s == "ready")
    assert set(sup.workers) == {"a-0@h", "a-1@h", "a-2@h", "new-0@h"}
    assert all(w.status is S.READY for w in sup.workers.values())
    for name in ("a-0@h", "a-1@h", "a-2@h"):
        assert sup.workers[name].record.pid != old_pids[name]
        assert sup.workers[name].plan.launch.argv[-2:] == ("--x", "1")
    assert not any(p.alive for p in spawner.spawned if p.pid in old_pids.values())


async def test_a_replacement_that_does_not_start_stops_its_models_rollout(
    tmp_path: Path,
) -> None:
    a = free_port_range(3)
    before = _fleet(tmp_path, [{"name": "a", "port": a, "replicas": 3}])
    after = _fleet(tmp_path, [{"name": "a", "port": a, "replicas": 3, "args": ["--bad"]}],
                   max_restarts=0)
    # Spawns 0-2 are the running replicas; the first replacement exits at once.
    spawner, probe, clock = FakeSpawner(["ok", "ok", "ok", "crash"]), FakeProbe(), FakeClock()
    probe.up |= {f"http://127.0.0.1:{p}" for p in (a, a + 1, a + 2)}
    sup = await _running(before, spawner, probe, clock)
    old_pids = {n: w.record.pid for n, w in sup.workers.items()}

    problems = await _roll(sup, after, clock)

    assert problems[0].startswith("a-0@h did not start: exited with code 1")
    assert problems[1] == "a: not replaced, as a-0@h failed: a-1@h, a-2@h (they run as before)"
    assert sup.workers["a-0@h"].status is S.FAILED
    for name in ("a-1@h", "a-2@h"):
        assert sup.workers[name].status is S.READY
        assert sup.workers[name].record.pid == old_pids[name]


async def test_a_worker_holding_the_port_of_a_new_one_stops_before_it_starts(
    tmp_path: Path,
) -> None:
    port = free_port_range(1)
    before = _fleet(tmp_path, [{"name": "old", "port": port}])
    after = _fleet(tmp_path, [{"name": "fresh", "port": port}])
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up.add(f"http://127.0.0.1:{port}")
    sup = await _running(before, spawner, probe, clock)
    story = Story(sup)

    assert await _roll(sup, after, clock) == []

    assert story.first("old-0@h", "stopped") < story.first("fresh-0@h", "starting")
    assert set(sup.workers) == {"fresh-0@h"}


def test_a_worker_on_its_gpus_is_kept_with_the_memory_fraction_it_was_given(
    tmp_path: Path,
) -> None:
    gpus = [Gpu(i, f"GPU-{i}", "test", 80 * GIB, 0) for i in range(2)]
    model = {"name": "big", "backend": "sglang", "path": "/weights/big", "port": 31000}
    running = _gpu_fleet(tmp_path, model)
    spec = running.workers("h")[0]
    plan = worker_plan(running, Placement(spec, (gpus[0],), 0.71))  # from free memory then
    record = WorkerRecord(spec.name, spec.model, spec.kind, spec.url, "h", spec.port, "ready",
                          pid=1, gpus=["GPU-0"], started_with=fingerprint(plan).to_json())
    view = GpuView(tuple(gpus))

    assert plan_for(running, "h", [record], view).empty

    fixed = _gpu_fleet(tmp_path, {**model, "options": {"mem_fraction": 0.5}})
    (change,) = plan_for(fixed, "h", [record], view).changes
    assert change.reasons == (
        "command changed: -'--mem-fraction-static 0.71' +'--mem-fraction-static 0.5'",)

    moved = _gpu_fleet(tmp_path, {**model, "gpus": [1]})
    (change,) = plan_for(moved, "h", [record], view).changes
    assert change.reasons[-1] == "GPUs changed: GPU-0 -> GPU-1"


def _gpu_fleet(tmp_path: Path, model: dict[str, Any]) -> Fleet:
    return parse_fleet({
        "fleet": {"state_dir": str(tmp_path / "state")},
        "hosts": [{"name": "h", "address": "127.0.0.1",
                   "inventory": [{"index": i, "uuid": f"GPU-{i}", "total_gib": 80}
                                 for i in range(2)]}],
        "models": [model],
    })


def test_a_request_file_that_is_not_one_reads_as_none(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, [])
    path = request_path(fleet, "h")
    assert read_request(path) is None
    path.parent.mkdir(parents=True)
    path.write_text('{"request": 3}')
    assert read_request(path) is None
    path.write_text('{"request": "abc", "fleet_file": "/x/fleet.toml"}')
    assert read_request(path) == ("abc", Path("/x/fleet.toml"))


def test_status_shows_a_worker_being_removed_beside_the_files_layout(tmp_path: Path) -> None:
    port = free_port_range(2)
    fleet = _fleet(tmp_path, [{"name": "a", "port": port}])
    me = psutil.Process()
    going = WorkerRecord("gone-0@h", "gone", "chat", f"http://127.0.0.1:{port + 1}", "h",
                         port + 1, "draining", pid=me.pid, create_time=me.create_time())
    finished = WorkerRecord("done-0@h", "done", "chat", "http://127.0.0.1:1", "h", 1,
                            "stopped")
    rows = state_rows(fleet, "h", HostState("h", "demo", workers=[going, finished]))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("a-0@h", "stopped"), ("gone-0@h", "draining")]
    assert rows[1]["last_error"] == "not in the fleet file: being removed"
    assert set(rows[1]) == set(rows[0])


async def test_a_request_for_a_file_that_cannot_apply_is_recorded_failed_and_changes_nothing(
    tmp_path: Path,
) -> None:
    port = free_port_range(1)
    fleet = _fleet(tmp_path, [{"name": "a", "port": port}])
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up.add(f"http://127.0.0.1:{port}")
    sup = await _running(fleet, spawner, probe, clock)
    reconciler = Reconciler(sup, fleet, "h", clock=clock)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[models]]\nname = 3\n")
    await reconciler.apply_file("r1", broken)
    assert sup.applying is not None and sup.applying["status"] == "failed"
    assert str(broken) in sup.applying["problems"][0]

    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(
        f'[fleet]\nstate_dir = "{tmp_path / "other"}"\n[[hosts]]\nname = "h"\n'
        f'address = "127.0.0.1"\n[[models]]\nname = "b"\nbackend = "sim"\nport = {port}\n')
    await reconciler.apply_file("r2", elsewhere)
    assert sup.applying["request"] == "r2" and sup.applying["status"] == "failed"
    assert "keeps its state in" in sup.applying["problems"][0]
    assert set(sup.workers) == {"a-0@h"} and len(spawner.spawned) == 1
    state = read_state(fleet.state_dir() / "state-h.json")
    assert state is not None and state.applying == sup.applying
    await sup.stop_all()
