from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelserver.config import WorkerSpec, parse_fleet
from modelserver.errors import LaunchError, NoGpuInventory
from modelserver.gpus import Gpu, StaticInventory
from modelserver.launch import detect_host, launch, ports_held_by_others
from modelserver.launch_commands import resolve_worker
from modelserver.lifecycle import WorkerStatus
from modelserver.netinfo import free_port_range
from modelserver.state import HostState, WorkerRecord, read_state, write_state
from modelserver.supervisor import Supervisor

from .fakes import FakeClock, FakeProbe, FakeSpawner


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


@pytest.mark.parametrize("healthy", [True, False])
async def test_a_live_worker_of_a_previous_launcher_is_adopted_only_if_healthy(
    tmp_path: Path, stranger: subprocess.Popen[bytes], healthy: bool,
) -> None:
    fleet = _tiny_fleet(tmp_path)
    [spec] = fleet.workers()
    _previous_state(tmp_path, spec.url, stranger.pid, psutil.Process(stranger.pid).create_time())
    spawner, probe = FakeSpawner(), FakeProbe()
    if healthy:
        probe.up.add(spec.url)
    else:
        probe.fail_next = 1  # the adoption probe fails; the fresh start then answers
        probe.up.add(spec.url)
    sup = await launch(fleet, "local", spawner=spawner, probe=probe, clock=FakeClock())
    try:
        await asyncio.wait_for(sup.wait_until(Supervisor.settled), 10)
        worker = sup.workers[spec.name]
        assert worker.status is WorkerStatus.READY
        if healthy:
            assert worker.record.pid == stranger.pid and spawner.specs == []
            assert worker.record.restarts == 4  # its history is kept
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
