from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest

from modelserver.config import parse_fleet
from modelserver.errors import NoGpuInventory
from modelserver.launcher.gpus import (
    GIB,
    Gpu,
    GpuProcess,
    NvmlInventory,
    StaticInventory,
    describe_use,
    inventory_for,
)


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, devices: list[dict[str, Any]]) -> None:
    """Replace pynvml's functions with a machine described by `devices`."""
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(devices))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: devices[i])
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo",
        lambda d: SimpleNamespace(total=d["total"], used=d["used"], free=d["total"] - d["used"]),
    )
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda d: d["uuid"])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda d: d["name"])
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetComputeRunningProcesses",
        lambda d: [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d.get("compute", [])],
    )
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetGraphicsRunningProcesses",
        lambda d: [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d.get("graphics", [])],
    )


def test_nvml_inventory_reports_memory_uuids_and_foreign_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = os.getpid()  # a process that exists, so psutil can name it
    foreign = 999_999_0  # a pid that does not exist: named "?"
    _fake_nvml(monkeypatch, [
        {"uuid": b"GPU-aaaa", "name": b"NVIDIA A100-SXM4-80GB", "total": 80 * GIB, "used": 1 * GIB},
        {"uuid": "GPU-bbbb", "name": "NVIDIA A100-SXM4-80GB", "total": 80 * GIB,
         "used": 41 * GIB, "compute": [(foreign, 40 * GIB)], "graphics": [(me, None)]},
    ])
    gpus = NvmlInventory().gpus()
    assert [g.uuid for g in gpus] == ["GPU-aaaa", "GPU-bbbb"]  # bytes from old bindings decoded
    assert gpus[0].name == "NVIDIA A100-SXM4-80GB"
    assert gpus[0].free_bytes == 79 * GIB
    busy = gpus[1]
    assert {p.pid for p in busy.processes} == {foreign, me}
    by_pid = {p.pid: p for p in busy.processes}
    assert by_pid[foreign].used_bytes == 40 * GIB and by_pid[foreign].name == "?"
    assert by_pid[me].used_bytes is None and by_pid[me].name != "?"


def test_a_process_on_both_lists_is_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvml(monkeypatch, [{"uuid": "GPU-c", "name": "x", "total": GIB, "used": GIB // 2,
                              "compute": [(77, 100)], "graphics": [(77, 100)]}])
    assert len(NvmlInventory().gpus()[0].processes) == 1


def test_no_nvml_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    with pytest.raises(NoGpuInventory, match=r"NVML is not usable.*CPU-only backends"):
        NvmlInventory().gpus()


def test_static_inventory_from_the_fleet_file() -> None:
    fleet = parse_fleet({
        "hosts": [{"name": "box", "inventory": [
            {"index": 0, "uuid": "GPU-x", "total_gib": 24},
            {"index": 1, "total_gib": 24, "used_gib": 12},
        ]}],
    })
    gpus = StaticInventory.from_host(fleet.host("box")).gpus()
    # No UUID written: none made up, so engines get the index (CUDA has no "static-box-1").
    assert [(g.index, g.uuid, g.total_bytes, g.used_bytes) for g in gpus] == [
        (0, "GPU-x", 24 * GIB, 0), (1, "", 24 * GIB, 12 * GIB)]


def test_describe_use_names_the_biggest_foreign_users_not_ours() -> None:
    gpu = Gpu(3, "GPU-3", "A100", 80 * GIB, 41 * GIB,
              (GpuProcess(7781, "python", 40 * GIB), GpuProcess(42, "ours", GIB)))
    expected = "GPU 3 has 41 GiB used by pid 7781 (python)"
    assert describe_use(gpu, own_pids=frozenset({42})) == expected


def test_placement_on_nvml_data_names_a_foreign_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelserver.launcher.placement import GpuView, plan

    me = os.getpid()
    _fake_nvml(monkeypatch, [
        {"uuid": "GPU-0", "name": "A100", "total": 80 * GIB, "used": 41 * GIB,
         "compute": [(me, 41 * GIB)]},
        {"uuid": "GPU-1", "name": "A100", "total": 80 * GIB, "used": 0},
    ])
    fleet = parse_fleet({"hosts": [{"name": "gpu-a"}], "models": [
        {"name": "m", "backend": "vllm", "path": "/w", "port": 31000, "replicas": 2}]})
    result = plan(fleet, "gpu-a", GpuView(tuple(NvmlInventory().gpus())))
    [placed] = result.placed
    assert placed.gpu_ids == ["GPU-1"]
    [waiting] = result.waiting
    name = psutil.Process(me).name()
    assert waiting.reason == (f"needs 1 GPU free on gpu-a, 0 free: GPU 0 has 41 GiB used by"
                              f" pid {me} ({name}); GPU 1 is given to m-0@gpu-a")


def test_hosts_with_an_inventory_in_the_fleet_file_do_not_ask_nvml() -> None:
    fleet = parse_fleet({"hosts": [{"name": "a", "inventory": [{"index": 0, "total_gib": 8}]},
                                   {"name": "b"}]})
    assert isinstance(inventory_for(fleet.host("a")), StaticInventory)
    assert isinstance(inventory_for(fleet.host("b")), NvmlInventory)


@pytest.mark.parametrize("unsupported", ["nvmlDeviceGetGraphicsRunningProcesses",
                                         "nvmlDeviceGetComputeRunningProcesses"])
def test_a_process_list_nvml_does_not_support_leaves_the_inventory_and_is_noted(
    monkeypatch: pytest.MonkeyPatch, unsupported: str
) -> None:
    _fake_nvml(monkeypatch, [
        {"uuid": "GPU-a", "name": "H100", "total": 80 * GIB, "used": 41 * GIB,
         "compute": [(7781, 40 * GIB)], "graphics": [(7781, 40 * GIB)]},
        {"uuid": "GPU-b", "name": "H100", "total": 80 * GIB, "used": GIB},
    ])

    def not_supported(handle: object) -> list[object]:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, unsupported, not_supported)
    gpus = NvmlInventory().gpus()
    assert [g.uuid for g in gpus] == ["GPU-a", "GPU-b"]  # the inventory survives
    assert gpus[0].used_bytes == 41 * GIB  # memory figures do not need the lists
    kind = "graphics" if "Graphics" in unsupported else "compute"
    assert gpus[0].unlisted == (f"{kind} processes: Not Supported",)
    assert [p.pid for p in gpus[0].processes] == [7781]  # from the list that worked
    without = Gpu(0, "GPU-a", "H100", 80 * GIB, 41 * GIB, (), gpus[0].unlisted)
    assert describe_use(without) == (
        f"GPU 0 has 41 GiB used (NVML cannot list its {kind} processes: Not Supported)")
