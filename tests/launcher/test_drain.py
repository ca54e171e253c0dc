"""Draining one worker (`Worker.drain`) and what a worker records it was started with, with fake
processes, a fake probe and a clock that skips."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from modelserver.config import LauncherConfig, WorkerSpec
from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.plan import Fingerprint, keys_digest
from modelserver.launcher.state import read_state
from modelserver.launcher.supervisor import Supervisor, Worker, WorkerPlan, fingerprint
from tests.waiting import wait_until

from .fakes import FakeClock, FakeProbe, FakeSpawner, ManualClock

S = WorkerStatus
URL = "http://127.0.0.1:40000"
KEY = "sk-drain-test-key"


def _plan(tmp_path: Path, argv: tuple[str, ...] = ("engine", "--port", "40000"),
          env: dict[str, str] | None = None, api_key: str | None = None) -> WorkerPlan:
    spec = WorkerSpec(name="m-0@h", model="m", kind="chat", backend="sim", host="h",
                      address="127.0.0.1", port=40000, replica=0, api_key=api_key)
    return WorkerPlan(spec, LaunchSpec(argv, env or {}), ("GPU-0",), ("/health",), "/health",
                      tmp_path / "logs" / "m-0@h.log")


async def _ready(tmp_path: Path, spawner: FakeSpawner, clock: FakeClock,
                 plan: WorkerPlan | None = None) -> tuple[Supervisor, Worker]:
    probe = FakeProbe()
    probe.up.add(URL)
    settings = LauncherConfig(health_interval_s=2.0, ready_poll_s=1.0, stop_grace_s=10.0,
                              max_restarts=3)
    sup = Supervisor("h", "demo", settings, spawner=spawner, probe=probe, clock=clock,
                     state_file=tmp_path / "state-h.json")
    worker = sup.add(plan or _plan(tmp_path))
    worker.start()
    await asyncio.wait_for(sup.wait_until(lambda s: worker.status is S.READY), 10)
    return sup, worker


class Load:
    """An engine's requests in flight, as its /metrics would say them, one answer a call;
    records whether the process was already signalled at each call."""

    def __init__(self, answers: list[int | None], spawner: FakeSpawner) -> None:
        self.answers = answers
        self.spawner = spawner
        self.signalled_at_call: list[bool] = []

    async def __call__(self) -> int | None:
        self.signalled_at_call.append(bool(self.spawner.spawned[0].signals))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_a_drained_worker_is_marked_draining_and_stopped_only_once_idle(
    tmp_path: Path,
) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    sup, worker = await _ready(tmp_path, spawner, clock)
    seen: list[str] = []
    sup.listeners.append(lambda record: seen.append(record.status))
    load = Load([3, 1, 0], spawner)
    slept_before = len(clock.sleeps)
    outcome = await worker.drain(notice_s=5.0, timeout_s=60.0, in_flight=load)
    assert outcome == "drained"
    assert seen == ["draining", "stopping", "stopped"]
    assert load.signalled_at_call == [False, False, False]  # SIGTERM only after 0
    assert spawner.spawned[0].signals[0] == signal.SIGTERM
    assert clock.sleeps[slept_before] == 5.0  # the routers' notice first
    state = read_state(tmp_path / "state-h.json")
    assert state is not None and state.workers[0].status == "stopped"


async def test_the_state_file_says_draining_while_requests_finish(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    _, worker = await _ready(tmp_path, spawner, clock)
    recorded: list[str] = []

    async def in_flight() -> int:
        state = read_state(tmp_path / "state-h.json")
        assert state is not None
        recorded.append(state.workers[0].status)
        return 0

    await worker.drain(notice_s=1.0, timeout_s=10.0, in_flight=in_flight)
    assert recorded == ["draining"]


async def test_requests_that_never_finish_are_cut_at_the_drain_bound(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    _, worker = await _ready(tmp_path, spawner, clock)
    load = Load([2], spawner)
    outcome = await worker.drain(notice_s=1.0, timeout_s=5.0, in_flight=load)
    assert outcome == ("2 requests still in flight after launcher.drain_timeout_s = 5 s:"
                       " stopped anyway")
    assert worker.status is S.STOPPED
    # Asked after the notice and every ready_poll_s (1 s) until the bound: 1, 2, 3, 4, 5 s.
    assert load.signalled_at_call == [False] * 5


async def test_an_engine_that_cannot_say_its_load_is_stopped_after_the_notice(
    tmp_path: Path,
) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    _, worker = await _ready(tmp_path, spawner, clock)
    outcome = await worker.drain(notice_s=1.0, timeout_s=60.0, in_flight=Load([None], spawner))
    assert outcome.startswith("drained for the notice only")
    assert worker.status is S.STOPPED


async def test_a_worker_that_dies_while_draining_is_not_restarted(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    _, worker = await _ready(tmp_path, spawner, clock)

    async def dies() -> int:
        spawner.spawned[0].exit(1)
        await asyncio.sleep(0)
        return 4

    outcome = await worker.drain(notice_s=1.0, timeout_s=60.0, in_flight=dies)
    assert outcome == "exited with code 1 while draining"
    assert worker.status is S.STOPPED and len(spawner.spawned) == 1


async def test_a_worker_that_serves_nothing_is_stopped_without_a_drain(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    probe = FakeProbe()  # never answers: the worker stays starting
    sup = Supervisor("h", "demo", LauncherConfig(), spawner=spawner, probe=probe, clock=clock,
                     state_file=tmp_path / "state-h.json")
    worker = sup.add(_plan(tmp_path))
    worker.start()
    await asyncio.wait_for(sup.wait_until(lambda s: worker.record.pid is not None), 10)
    asked: list[bool] = []

    async def in_flight() -> int:
        asked.append(True)
        return 0

    outcome = await worker.drain(notice_s=1.0, timeout_s=60.0, in_flight=in_flight)
    assert outcome == "stopped (it was not serving)" and asked == []
    assert worker.status is S.STOPPED


async def test_a_worker_records_what_it_was_started_with_and_no_key(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    argv = ("engine", "--port", "40000", "--api-key", KEY)
    env = {"MODELSERVER_SIM_API_KEY": KEY, "CUDA_VISIBLE_DEVICES": "GPU-0", "MY_FLAG": "1"}
    plan = _plan(tmp_path, argv, env, api_key=KEY)
    sup, worker = await _ready(tmp_path, spawner, clock, plan)
    state_text = (tmp_path / "state-h.json").read_text()
    assert KEY not in state_text
    recorded = Fingerprint.from_json(worker.record.started_with)
    assert recorded is not None
    assert recorded.command == ("engine", "--port", "40000", "--api-key", "***")
    assert recorded.gpus == ("GPU-0",)
    assert dict(recorded.env) == {"MODELSERVER_SIM_API_KEY": "***", "MY_FLAG": "1"}
    assert recorded.keys == keys_digest([KEY])
    assert recorded == fingerprint(plan, parent={})
    await sup.stop_all()


async def test_an_adopted_worker_keeps_what_it_was_started_with(tmp_path: Path) -> None:
    spawner, clock = FakeSpawner(), FakeClock()
    sup, worker = await _ready(tmp_path, spawner, clock)
    again = Supervisor("h", "demo", LauncherConfig(), spawner=spawner, probe=FakeProbe(),
                       clock=clock)
    adopted = again.add(_plan(tmp_path), worker.record)
    assert adopted.record.started_with == worker.record.started_with is not None
    await sup.stop_all()


async def test_a_stop_cut_short_by_down_is_finished_by_it(tmp_path: Path) -> None:
    """`down` while `up` drains: the drain is cancelled while its engine ignores SIGTERM; the
    supervisor's own stop then finishes the job instead of tripping on the lifecycle."""
    spawner, clock, probe = FakeSpawner(["stubborn"]), ManualClock(), FakeProbe()
    probe.up.add(URL)
    settings = LauncherConfig(stop_grace_s=10.0)
    sup = Supervisor("h", "demo", settings, spawner=spawner, probe=probe, clock=clock,
                     state_file=tmp_path / "state-h.json")
    worker = sup.add(_plan(tmp_path))
    worker.start()
    await asyncio.wait_for(sup.wait_until(lambda s: worker.status is S.READY), 10)

    async def idle() -> int:
        return 0

    draining = asyncio.create_task(worker.drain(notice_s=1.0, timeout_s=30.0, in_flight=idle))
    await wait_until(lambda: clock.asleep_until(clock.t + 1.0), "the drain's notice")
    clock.advance(1.0)
    await asyncio.wait_for(sup.wait_until(lambda s: worker.status is S.STOPPING), 10)
    draining.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await draining
    stopping = asyncio.create_task(sup.stop_all())

    async def through_the_grace() -> None:
        while not stopping.done():  # the stop waits out its grace: move time on until done
            clock.advance(10.0)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(through_the_grace(), 10)
    await stopping
    assert worker.status is S.STOPPED
    assert spawner.spawned[0].signals[-1] == signal.SIGKILL


def test_the_fingerprint_does_not_depend_on_the_environment_of_who_builds_it(
    tmp_path: Path,
) -> None:
    """The supervisor and `up --dry-run` build the same command in different environments;
    what the launcher sets must compare equal, what each inherited must not count."""
    supervisor_env = {"PATH": "/usr/bin", "HOME": "/root"}
    shell_env = {"PATH": "/opt/bin", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                 "MODELSERVER_SIM_API_KEY": KEY}
    set_by_launcher = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "MODELSERVER_SIM_API_KEY": KEY}
    built = [
        fingerprint(_plan(tmp_path, env={**parent, **set_by_launcher}, api_key=KEY),
                    parent=parent)
        for parent in (supervisor_env, shell_env)
    ]
    assert built[0] == built[1]
    assert dict(built[0].env) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                  "MODELSERVER_SIM_API_KEY": "***"}
