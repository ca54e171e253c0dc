from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelserver.clock import Clock
from modelserver.config import WorkerSpec, parse_fleet
from modelserver.errors import LaunchError, NoGpuInventory
from modelserver.launcher.gpus import GIB, Gpu, GpuProcess, StaticInventory
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.local import detect_host, launch, ports_held_by_others
from modelserver.launcher.log_commands import resolve_worker
from modelserver.launcher.state import HostState, WorkerRecord, read_state, write_state
from modelserver.launcher.supervisor import Supervisor
from modelserver.netinfo import free_port_range
from tests.waiting import wait_until

from .fakes import FakeClock, FakeProbe, FakeSpawner, ManualClock


def _spec(port: int) -> WorkerSpec:
    return WorkerSpec(name="w", model="m", kind="chat", backend="sim", host="h",
                      address="127.0.0.1", port=port, replica=0)


def test_a_port_someone_listens_on_is_reported_with_its_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        held = ports_held_by_others([_spec(port)], frozenset())
        assert held[port].startswith(f"pid {os.getpid()} (")
        assert ports_held_by_others([_spec(port)], frozenset({os.getpid()})) == {}
    assert ports_held_by_others([_spec(port)], frozenset()) == {}


def test_host_is_found_by_this_machines_address() -> None:
    fleet = parse_fleet({"hosts": [{"name": "far", "address": "203.0.113.9"},
                                   {"name": "here", "address": "127.0.0.1"}]})
    assert detect_host(fleet) == "here"
    assert detect_host(fleet, "far") == "far"
    with pytest.raises(LaunchError, match="--host 'nowhere' is not in the fleet file"):
        detect_host(fleet, "nowhere")


def test_no_or_several_matching_hosts_ask_for_host() -> None:
    none = parse_fleet({"hosts": [{"name": "far", "address": "203.0.113.9"}]})
    with pytest.raises(LaunchError, match="pass --host"):
        detect_host(none)
    two = parse_fleet({"hosts": [{"name": "a", "address": "127.0.0.1"},
                                 {"name": "b", "address": "localhost"}]})
    with pytest.raises(LaunchError, match="several hosts"):
        detect_host(two)


def test_workers_are_found_by_name_prefix_or_url() -> None:
    fleet = parse_fleet({"hosts": [{"name": "local"}], "models": [
        {"name": "llama-8b", "backend": "sim", "port": 31000, "replicas": 2},
        {"name": "llama-70b", "backend": "sim", "port": 32000},
    ]})
    assert resolve_worker(fleet, "llama-8b-1@local").name == "llama-8b-1@local"
    assert resolve_worker(fleet, "llama-8b-0").name == "llama-8b-0@local"
    assert resolve_worker(fleet, "http://127.0.0.1:32000").name == "llama-70b-0@local"
    with pytest.raises(LaunchError, match="matches several workers"):
        resolve_worker(fleet, "llama-8b")
    with pytest.raises(LaunchError, match="no worker 'qwen'"):
        resolve_worker(fleet, "qwen")


class _NoNvml:
    def gpus(self) -> list[Gpu]:
        raise NoGpuInventory("cannot list GPUs: NVML is not usable here (no library)")


async def test_launch_without_nvml_starts_cpu_workers_and_fails_gpu_ones(tmp_path: Path) -> None:
    fleet = parse_fleet({
        "fleet": {"state_dir": str(tmp_path)},
        "hosts": [{"name": "local"}],
        "models": [{"name": "big", "backend": "sglang", "path": "/w", "port": free_port_range()},
                   {"name": "tiny", "backend": "sim", "port": free_port_range()}],
    })
    spawner, probe = FakeSpawner(), FakeProbe()
    probe.up.update(w.url for w in fleet.workers())
    sup = await launch(fleet, "local", spawner=spawner, probe=probe, clock=FakeClock(),
                       inventory=_NoNvml())
    try:
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        big, tiny = sup.workers["big-0@local"], sup.workers["tiny-0@local"]
        assert big.status is WorkerStatus.FAILED
        assert big.record.last_error == (
            "cannot be placed: cannot list GPUs: NVML is not usable here (no library)")
        assert tiny.status is WorkerStatus.READY
        assert [spec.argv[3] for spec in spawner.specs] == ["sim"]  # only the CPU worker ran
        state = read_state(tmp_path / "state-local.json")
        assert state is not None
        assert {w.name: w.status for w in state.workers} == {
            "big-0@local": "failed", "tiny-0@local": "ready"}
    finally:
        await sup.stop_all()


async def test_launch_places_gpu_workers_from_a_static_inventory(tmp_path: Path) -> None:
    fleet = parse_fleet({
        "fleet": {"state_dir": str(tmp_path)},
        "hosts": [{"name": "local", "inventory": [
            {"index": 0, "uuid": "GPU-busy", "total_gib": 80, "used_gib": 40},
            {"index": 1, "uuid": "GPU-free", "total_gib": 80, "used_gib": 8}]}],
        "models": [{"name": "big", "backend": "sglang", "path": "/w", "port": free_port_range()}],
    })
    spawner, probe = FakeSpawner(), FakeProbe()
    probe.up.update(w.url for w in fleet.workers())
    sup = await launch(fleet, "local", spawner=spawner, probe=probe, clock=FakeClock(),
                       inventory=StaticInventory.from_host(fleet.host("local")))
    try:
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        [spec] = spawner.specs
        assert spec.env["CUDA_VISIBLE_DEVICES"] == "GPU-free"
        argv = list(spec.argv)
        assert argv[argv.index("--mem-fraction-static") + 1] == "0.85"  # 72/80 - 0.05
        assert sup.workers["big-0@local"].record.gpus == ["GPU-free"]
    finally:
        await sup.stop_all()


def _previous_state(tmp_path: Path, url: str, pid: int, create_time: float) -> None:
    record = WorkerRecord(name="tiny-0@local", model="tiny", kind="chat", url=url,
                          host="local", port=int(url.rsplit(":", 1)[1]), status="ready",
                          pid=pid, create_time=create_time, restarts=4)
    write_state(tmp_path / "state-local.json",
                HostState(host="local", fleet="fleet", workers=[record]))


def _tiny_fleet(tmp_path: Path) -> Any:
    return parse_fleet({"fleet": {"state_dir": str(tmp_path)}, "hosts": [{"name": "local"}],
                        "models": [{"name": "tiny", "backend": "sim", "port": free_port_range()}]})


@pytest.mark.parametrize("answer", ["healthy", "loading", "sick"])
async def test_a_live_worker_of_a_previous_launcher_is_adopted_unless_sick(
    tmp_path: Path, stranger: subprocess.Popen[bytes], answer: str,
) -> None:
    fleet = _tiny_fleet(tmp_path)
    [spec] = fleet.workers()
    _previous_state(tmp_path, spec.url, stranger.pid, psutil.Process(stranger.pid).create_time())
    spawner, probe = FakeSpawner(), FakeProbe()
    probe.up.add(spec.url)
    if answer == "loading":  # it answers 503 three times, then it has loaded
        probe.fail_next, probe.fail_reason = 3, "GET /health: HTTP 503"
    elif answer == "sick":  # the adoption probe fails; the fresh start then answers
        probe.fail_next, probe.fail_reason = 1, "GET /health: ClientConnectorError: refused"
    sup = await launch(fleet, "local", spawner=spawner, probe=probe, clock=FakeClock())
    try:
        worker = sup.workers[spec.name]
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        assert worker.status is WorkerStatus.READY
        if answer != "sick":
            assert worker.record.pid == stranger.pid and spawner.specs == []
            assert worker.record.restarts == 4  # its history is kept
            assert stranger.poll() is None
            if answer == "loading":  # adopted as starting: its readiness was waited for
                assert len(probe.calls) >= 4 and probe.fail_next == 0
        else:
            stranger.wait(timeout=10)  # its group was killed (launch reaped it already)
            assert not psutil.pid_exists(stranger.pid)
            assert worker.record.pid == 5000 and len(spawner.specs) == 1
            assert worker.record.restarts == 5  # dying unwatched counts as a restart
    finally:
        sup.workers[spec.name].detach()


async def test_a_reused_pid_is_neither_adopted_nor_killed(
    tmp_path: Path, stranger: subprocess.Popen[bytes],
) -> None:
    fleet = _tiny_fleet(tmp_path)
    [spec] = fleet.workers()
    created = psutil.Process(stranger.pid).create_time()
    _previous_state(tmp_path, spec.url, stranger.pid, created - 3600)  # same pid, older process
    spawner, probe = FakeSpawner(), FakeProbe()
    probe.up.add(spec.url)
    sup = await launch(fleet, "local", spawner=spawner, probe=probe, clock=FakeClock())
    try:
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        assert sup.workers[spec.name].record.pid == 5000  # started afresh
        assert stranger.poll() is None  # the stranger was left alone
    finally:
        await sup.stop_all()


class _ChangingInventory:
    """GPU 0 free; GPU 1 busy (60 GiB used by pid 7781) for the first `busy_calls` calls.
    Each call records what the state file said then, to see the launcher while it waits."""

    def __init__(self, state_file: Path, busy_calls: int, uuids: bool = True) -> None:
        self.state_file = state_file
        self.busy_calls = busy_calls
        self.uuids = uuids
        self.calls = 0
        self.states: list[HostState | None] = []

    def gpus(self) -> list[Gpu]:
        self.states.append(read_state(self.state_file))
        self.calls += 1
        used = 60 * GIB if self.calls <= self.busy_calls else GIB
        foreign = (GpuProcess(7781, "python", used),) if used > GIB else ()
        return [Gpu(i, f"GPU-{i}" if self.uuids else "", "A100", 80 * GIB,
                    used if i == 1 else GIB, foreign if i == 1 else ())
                for i in range(2)]


def _gpu_fleet(tmp_path: Path, wait_s: float) -> Any:
    return parse_fleet({
        "fleet": {"state_dir": str(tmp_path)},
        "hosts": [{"name": "local"}],
        "models": [
            {"name": "free", "backend": "sglang", "path": "/w", "port": free_port_range(),
             "gpus": [0]},
            {"name": "busy", "backend": "sglang", "path": "/w", "port": free_port_range(),
             "gpus": [1]},
        ],
        "launcher": {"wait_for_gpus_s": wait_s, "placement_poll_s": 7},
    })


async def _launch_on_changing_gpus(
    tmp_path: Path, clock: Clock, wait_s: float, busy_calls: int = 1000, uuids: bool = True
) -> tuple[_ChangingInventory, FakeSpawner, Supervisor]:
    """`_gpu_fleet` launched on a `_ChangingInventory` with fakes; every worker answers."""
    fleet = _gpu_fleet(tmp_path, wait_s)
    inventory = _ChangingInventory(tmp_path / "state-local.json", busy_calls, uuids)
    spawner, probe = FakeSpawner(), FakeProbe()
    probe.up.update(w.url for w in fleet.workers())
    sup = await launch(fleet, "local", spawner=spawner, probe=probe, clock=clock,
                       inventory=inventory)
    return inventory, spawner, sup


async def test_a_placeable_worker_starts_at_once_while_another_waits_for_its_gpu(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    inventory, spawner, sup = await _launch_on_changing_gpus(
        tmp_path, clock, wait_s=600, busy_calls=3)
    try:
        await wait_until(lambda: sup.workers["free-0@local"].status is WorkerStatus.READY,
                         "the placeable worker to be ready while the other waits")
        for calls in (2, 3, 4):  # placed again each placement_poll_s; GPU 1 frees at call 4
            await wait_until(lambda: clock.asleep_until(clock.t + 7), "the placement pause")
            clock.advance(7)
            await wait_until(lambda n=calls: inventory.calls >= n, f"placement {calls}")
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        # Before anything was placed, the state file already named this supervisor, with
        # every worker waiting: `status` and `down` see a launcher from its first moment.
        first = inventory.states[0]
        assert first is not None and first.supervisor is not None
        assert first.supervisor.pid == os.getpid()
        assert {w.name: w.status for w in first.workers} == {
            "free-0@local": "waiting", "busy-0@local": "waiting"}
        # While GPU 1 was busy, "free" already ran and "busy" said what it waited for.
        during = inventory.states[1]
        assert during is not None
        records = {w.name: w for w in during.workers}
        assert records["free-0@local"].status in ("starting", "ready")
        assert records["busy-0@local"].status == "waiting"
        assert records["busy-0@local"].waiting_for == (
            "GPU 1 has 60 GiB used by pid 7781 (python)")
        assert [s.env["CUDA_VISIBLE_DEVICES"] for s in spawner.specs] == ["GPU-0", "GPU-1"]
        assert sup.workers["busy-0@local"].record.waiting_for is None
    finally:
        await sup.stop_all()


async def test_a_worker_still_waiting_when_the_wait_runs_out_fails_with_the_reason(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    inventory, spawner, sup = await _launch_on_changing_gpus(tmp_path, clock, wait_s=12)
    try:
        for step in (7, 5):  # the last try is at the deadline, 12 s
            await wait_until(lambda s=step: clock.asleep_until(clock.t + s), "the pause")
            clock.advance(step)
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        assert sup.workers["free-0@local"].status is WorkerStatus.READY
        busy = sup.workers["busy-0@local"]
        assert busy.status is WorkerStatus.FAILED
        assert busy.record.last_error == ("cannot be placed within launcher.wait_for_gpus_s ="
                                          " 12 s: GPU 1 has 60 GiB used by pid 7781 (python)")
        assert inventory.calls == 3  # at 0, 7 and 12 s
        assert len(spawner.specs) == 1
    finally:
        await sup.stop_all()


async def test_without_a_wait_a_busy_gpu_fails_its_worker_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    inventory, spawner, sup = await _launch_on_changing_gpus(
        tmp_path, clock, wait_s=0, uuids=False)
    try:
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        assert sup.workers["busy-0@local"].record.last_error == (
            "cannot be placed: GPU 1 has 60 GiB used by pid 7781 (python)")
        assert clock.sleeps.count(7) == 0 and inventory.calls == 1
        # GPUs without a UUID are given to the engine by index.
        assert [s.env["CUDA_VISIBLE_DEVICES"] for s in spawner.specs] == ["0"]
    finally:
        await sup.stop_all()


async def test_stopping_while_a_worker_waits_never_starts_it(tmp_path: Path) -> None:
    clock = ManualClock()
    inventory, spawner, sup = await _launch_on_changing_gpus(tmp_path, clock, wait_s=600)
    busy = sup.workers["busy-0@local"]
    await asyncio.wait_for(sup.wait_until(lambda s: busy.record.waiting_for is not None
                                          and "GPU 1" in busy.record.waiting_for), 10)
    await sup.stop_all()
    assert busy.status is WorkerStatus.STOPPED and busy.record.waiting_for is None
    clock.advance(600)  # a placement loop that was not stopped would place it now
    await asyncio.sleep(0)
    assert inventory.calls == 1 and len(spawner.specs) == 1
    state = read_state(tmp_path / "state-local.json")
    assert state is not None and state.supervisor is None
    assert {w.status for w in state.workers} == {"stopped"}


async def test_workers_preflight_refused_fail_at_once_with_their_reason(tmp_path: Path) -> None:
    fleet = _tiny_fleet(tmp_path)
    [spec] = fleet.workers()
    spawner = FakeSpawner()
    sup = await launch(fleet, "local", spawner=spawner, probe=FakeProbe(), clock=FakeClock(),
                       refused={spec.name: "SGLang is not installed"})
    await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
    assert sup.workers[spec.name].record.last_error == "SGLang is not installed"
    assert spawner.specs == []
    await sup.stop_all()


def test_a_host_named_by_this_machines_dns_name_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = parse_fleet({"hosts": [{"name": "far", "address": "203.0.113.9"},
                                   {"name": "here", "address": socket.gethostname()}]})
    assert detect_host(fleet) == "here"
    real = socket.getaddrinfo

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "box.lab.example":  # a name the resolver maps to one of our addresses
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    named = parse_fleet({"hosts": [{"name": "far", "address": "203.0.113.9"},
                                   {"name": "box", "address": "box.lab.example"}]})
    assert detect_host(named) == "box"
    unknown = parse_fleet({"hosts": [{"name": "x", "address": "nowhere.invalid"}]})
    with pytest.raises(LaunchError, match="pass --host"):
        detect_host(unknown)


async def test_the_probe_gives_up_after_its_timeout_and_says_so() -> None:
    from aiohttp import web

    from modelserver.launcher.local import HttpProbe, answered_loading

    released = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await released.wait()  # answers only once the test is over
        return web.Response()

    async def loading(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/health", loading)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    probe = HttpProbe(0.2)
    try:
        url = f"http://127.0.0.1:{port}"
        assert await probe(url, ("/slow",), None) == "GET /slow: no answer within 0.2s"
        why = await probe(url, ("/health",), None)
        assert why == "GET /health: HTTP 503" and answered_loading(why)
    finally:
        released.set()
        await probe.close()
        await runner.cleanup()


@pytest.mark.parametrize(("status", "restarts"), [("ready", 5), ("waiting", 4), ("failed", 0)])
async def test_a_worker_that_died_unwatched_counts_a_restart_one_that_only_waited_does_not(
    tmp_path: Path, status: str, restarts: int
) -> None:
    fleet = _tiny_fleet(tmp_path)
    [spec] = fleet.workers()
    record = WorkerRecord(name=spec.name, model="tiny", kind="chat", url=spec.url,
                          host="local", port=spec.port, status=status, restarts=4)
    write_state(tmp_path / "state-local.json",
                HostState(host="local", fleet="fleet", workers=[record]))
    probe = FakeProbe()
    probe.up.add(spec.url)
    sup = await launch(fleet, "local", spawner=FakeSpawner(), probe=probe, clock=FakeClock())
    await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
    await sup.stop_all()
    assert sup.workers[spec.name].record.restarts == restarts
