"""The supervisor's state machine with fake processes, a fake probe and a clock that skips."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from modelserver.config import LauncherConfig, WorkerSpec
from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.state import read_state
from modelserver.launcher.supervisor import Supervisor, Worker, WorkerPlan

from .fakes import FakeClock, FakeProbe, FakeSpawner

S = WorkerStatus

FAST = {"backoff_initial_s": 1.0, "backoff_max_s": 8.0, "backoff_jitter": 0.0,
        "health_interval_s": 2.0, "ready_timeout_s": 30.0, "ready_poll_s": 1.0,
        "stop_grace_s": 10.0, "max_restarts": 3, "unhealthy_after": 3}


def _plan(tmp_path: Path, index: int = 0) -> WorkerPlan:
    spec = WorkerSpec(name=f"m-{index}@h", model="m", kind="chat", backend="sim", host="h",
                      address="127.0.0.1", port=40000 + index, replica=index)
    return WorkerPlan(spec, LaunchSpec(("engine", "--port", str(40000 + index)), {}), ("GPU-0",),
                      ("/health",), "/health", tmp_path / "logs" / f"{spec.name}.log")


def _supervisor(tmp_path: Path, spawner: FakeSpawner, probe: FakeProbe, clock: FakeClock,
                **settings: Any) -> Supervisor:
    return Supervisor("h", "demo", LauncherConfig(**{**FAST, **settings}), spawner=spawner,
                      probe=probe, clock=clock, state_file=tmp_path / "state-h.json")


async def _until(sup: Supervisor, status: WorkerStatus, name: str = "m-0@h") -> Worker:
    await asyncio.wait_for(sup.wait_until(lambda s: s.workers[name].status is status), 10)
    return sup.workers[name]


async def test_worker_becomes_ready_when_its_probe_answers(tmp_path: Path) -> None:
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    sup = _supervisor(tmp_path, spawner, probe, clock)
    sup.add(_plan(tmp_path)).start()
    await _until(sup, S.STARTING)
    probe.up.add("http://127.0.0.1:40000")
    worker = await _until(sup, S.READY)
    assert worker.record.pid == 5000 and worker.record.gpus == ["GPU-0"]
    state = read_state(tmp_path / "state-h.json")
    assert state is not None and state.workers[0].status == "ready"
    assert state.supervisor is not None
    await sup.stop_all()


async def test_a_crash_is_restarted_after_backoff_and_counted(tmp_path: Path) -> None:
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up.add("http://127.0.0.1:40000")
    sup = _supervisor(tmp_path, spawner, probe, clock)
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.READY)
    spawner.spawned[0].exit(-signal.SIGKILL)
    await asyncio.wait_for(
        sup.wait_until(lambda s: worker.record.restarts == 1 and worker.status is S.READY), 10)
    assert worker.record.pid == 5001
    assert worker.record.last_error == "killed by SIGKILL"
    assert 1.0 in clock.sleeps  # the first backoff delay
    await sup.stop_all()


async def test_crashing_on_every_start_ends_failed_with_the_log_tail(tmp_path: Path) -> None:
    spawner = FakeSpawner(["crash"] * 10)
    sup = _supervisor(tmp_path, spawner, FakeProbe(), FakeClock())
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.FAILED)
    assert len(spawner.spawned) == 4  # first start + max_restarts (3)
    assert worker.record.restarts == 3
    error = worker.record.last_error or ""
    assert error.startswith("exited with code 1 while starting")
    assert "start 3: crash" in error  # the log's tail
    state = read_state(tmp_path / "state-h.json")
    assert state is not None and state.workers[0].status == "failed"


def test_backoff_is_exponential_capped_and_jittered(tmp_path: Path) -> None:
    worker = Worker(_plan(tmp_path), LauncherConfig(**{**FAST, "backoff_jitter": 0.5}),
                    spawner=FakeSpawner(), probe=FakeProbe(), clock=FakeClock(),
                    rng=lambda: 1.0, on_change=lambda w: None)
    assert [worker.backoff_delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    worker.settings = LauncherConfig(**FAST)
    assert [worker.backoff_delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_a_worker_never_ready_times_out_and_is_killed(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    sup = _supervisor(tmp_path, spawner, FakeProbe(), clock, max_restarts=0)
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.FAILED)
    assert (worker.record.last_error or "").startswith("not ready after 30s (last probe: GET")
    assert spawner.spawned[0].signals[0] == signal.SIGTERM and not spawner.spawned[0].alive


async def test_an_unhealthy_worker_is_restarted_after_failures_in_a_row(tmp_path: Path) -> None:
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up.add("http://127.0.0.1:40000")
    sup = _supervisor(tmp_path, spawner, probe, clock)
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.READY)
    probe.fail_next = 3
    await asyncio.wait_for(
        sup.wait_until(lambda s: worker.record.restarts == 1 and worker.status is S.READY), 10)
    assert worker.record.last_error is not None
    assert worker.record.last_error.startswith("unhealthy: 3 health probes failed in a row")
    assert signal.SIGTERM in spawner.spawned[0].signals and not spawner.spawned[0].alive
    await sup.stop_all()


async def test_stop_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    spawner, probe, clock = FakeSpawner(["stubborn"]), FakeProbe(), FakeClock()
    probe.up.add("http://127.0.0.1:40000")
    sup = _supervisor(tmp_path, spawner, probe, clock)
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.READY)
    await sup.stop_all()
    assert spawner.spawned[0].signals == [signal.SIGTERM, signal.SIGKILL]
    assert 10.0 in clock.sleeps  # stop_grace_s
    assert worker.status is S.STOPPED and worker.record.pid is None
    state = read_state(tmp_path / "state-h.json")
    assert state is not None and state.supervisor is None
    assert state.workers[0].status == "stopped"


async def test_replicas_start_in_parallel(tmp_path: Path) -> None:
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    sup = _supervisor(tmp_path, spawner, probe, clock)
    for index in range(3):
        sup.add(_plan(tmp_path, index)).start()
    # None is ready, yet all three were spawned: nobody waits for another's readiness.
    await asyncio.wait_for(
        sup.wait_until(lambda s: all(w.record.pid for w in s.workers.values())), 10)
    assert len(spawner.spawned) == 3
    assert all(w.status is S.STARTING for w in sup.workers.values())
    probe.up.update(f"http://127.0.0.1:{40000 + i}" for i in range(3))
    await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
    await sup.stop_all()


async def test_a_program_that_cannot_start_fails_with_the_reason(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, FakeSpawner(["oserror"] * 5), FakeProbe(), FakeClock(),
                      max_restarts=1)
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.FAILED)
    assert (worker.record.last_error or "").startswith("cannot start engine: No such file")


async def test_adopted_worker_is_ready_without_a_spawn(tmp_path: Path) -> None:
    from .fakes import FakeProcess

    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up.add("http://127.0.0.1:40000")
    sup = _supervisor(tmp_path, spawner, probe, clock)
    live = FakeProcess(pid=4242)
    sup.add(_plan(tmp_path)).start(adopted=live)
    worker = await _until(sup, S.READY)
    assert worker.record.pid == 4242 and spawner.spawned == []
    live.exit(-signal.SIGKILL)  # when it dies, it is restarted like any other
    await asyncio.wait_for(sup.wait_until(lambda s: worker.record.restarts == 1
                                          and worker.status is S.READY), 10)
    assert len(spawner.spawned) == 1
    await sup.stop_all()


async def test_failed_worker_stops_to_stopped_unless_kept(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, FakeSpawner(), FakeProbe(), FakeClock())
    sup.add(_plan(tmp_path)).fail_now("cannot be placed: GPU 9 does not exist on h (0-7)")
    await sup.stop_all(keep_failed=True)
    assert sup.workers["m-0@h"].status is S.FAILED  # a launch that gave up still says why
    await sup.stop_all()
    assert sup.workers["m-0@h"].status is S.STOPPED
    assert sup.workers["m-0@h"].record.last_error == (
        "cannot be placed: GPU 9 does not exist on h (0-7)")




async def test_a_worker_that_served_long_enough_starts_a_new_failure_streak(
    tmp_path: Path,
) -> None:
    spawner, probe, clock = FakeSpawner(), FakeProbe(), FakeClock()
    probe.up.add("http://127.0.0.1:40000")
    sup = _supervisor(tmp_path, spawner, probe, clock, max_restarts=1, stable_after_s=60.0,
                      ready_poll_s=0.25)
    sup.add(_plan(tmp_path)).start()
    worker = await _until(sup, S.READY)
    for crash in range(3):  # more crashes than max_restarts, each after a long healthy run
        # The health loop's sleeps move the fake clock past stable_after_s.
        await asyncio.wait_for(clock.reached(clock.now() + 60), 10)
        spawner.spawned[crash].exit(1)
        await asyncio.wait_for(sup.wait_until(
            lambda s, n=crash + 1: worker.record.restarts == n and worker.status is S.READY), 10)
    assert worker.status is S.READY and worker.streak == 1
    assert clock.sleeps.count(FAST["backoff_initial_s"]) == 3  # never a longer backoff
    # A crash soon after a restart continues the streak: with max_restarts=1 that is the end.
    spawner.spawned[3].exit(1)
    await _until(sup, S.FAILED)
    assert worker.record.restarts == 3
