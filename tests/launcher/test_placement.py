from __future__ import annotations

from typing import Any

import pytest

from modelserver.config import Fleet, parse_fleet
from modelserver.launcher.gpus import GIB, Gpu, GpuProcess
from modelserver.launcher.placement import GpuView, plan


def _fleet(models: list[dict[str, Any]], host: dict[str, Any] | None = None,
           launcher: dict[str, Any] | None = None) -> Fleet:
    return parse_fleet({
        "hosts": [{"name": "gpu-a", **(host or {})}],
        "models": models,
        "launcher": launcher or {},
    })


def _gpus(n: int, used_gib: dict[int, float] | None = None,
          procs: dict[int, tuple[GpuProcess, ...]] | None = None) -> GpuView:
    used_gib = used_gib or {}
    return GpuView(tuple(
        Gpu(i, f"GPU-{i}", "A100", 80 * GIB, int(used_gib.get(i, 0.5) * GIB),
            (procs or {}).get(i, ()))
        for i in range(n)
    ))


def _sglang(**extra: Any) -> dict[str, Any]:
    return {"name": "llama-8b", "backend": "sglang", "path": "/w/llama", "port": 31000, **extra}


def test_replicas_get_distinct_free_gpus_in_index_order() -> None:
    fleet = _fleet([_sglang(replicas=3, gpus_per_replica=2)])
    result = plan(fleet, "gpu-a", _gpus(8, used_gib={1: 30}))
    assert [[g.index for g in p.gpus] for p in result.placed] == [[0, 2], [3, 4], [5, 6]]
    assert [p.worker.port for p in result.placed] == [31000, 31001, 31002]
    assert result.placed[0].gpu_ids == ["GPU-0", "GPU-2"]


def test_busy_gpu_reason_names_the_foreign_process() -> None:
    fleet = _fleet([_sglang(gpus=[3])])
    busy = _gpus(8, used_gib={3: 41}, procs={3: (GpuProcess(7781, "python", 41 * GIB),)})
    result = plan(fleet, "gpu-a", busy)
    assert not result.placed
    [blocked] = result.blocked
    assert blocked.reason == "GPU 3 has 41 GiB used by pid 7781 (python)"
    assert not blocked.final  # it may free up: worth waiting for


def test_more_gpus_than_the_host_has_cannot_run() -> None:
    fleet = _fleet([_sglang(gpus_per_replica=4)])
    [blocked] = plan(fleet, "gpu-a", _gpus(2)).blocked
    assert blocked.reason == "needs 4 GPUs, host gpu-a has 2"
    assert blocked.final


def test_a_gpu_that_does_not_exist_is_named_with_the_range() -> None:
    fleet = _fleet([_sglang(gpus=[9])])
    [blocked] = plan(fleet, "gpu-a", _gpus(8)).blocked
    assert blocked.reason == "GPU 9 does not exist on gpu-a (it has GPUs 0-7)"
    assert blocked.final


def test_a_host_gpu_that_does_not_exist_is_named_with_the_gpus_there() -> None:
    fleet = _fleet([_sglang()], host={"gpus": [0, 9]})
    sparse = GpuView(tuple(g for g in _gpus(6).gpus if g.index in (0, 2, 5)))
    [blocked] = plan(fleet, "gpu-a", sparse).blocked
    assert blocked.reason == "GPU 9 does not exist on gpu-a (it has GPUs 0, 2, 5)"
    assert blocked.final


def test_explicit_gpus_by_uuid_and_only_among_the_hosts_gpus() -> None:
    fleet = _fleet([_sglang(gpus=["GPU-5", 6], gpus_per_replica=2)], host={"gpus": ["GPU-5", 6]})
    [placed] = plan(fleet, "gpu-a", _gpus(8)).placed
    assert [g.index for g in placed.gpus] == [5, 6]


def test_host_gpu_list_limits_automatic_choice() -> None:
    fleet = _fleet([_sglang(replicas=2)], host={"gpus": [6, 7]})
    result = plan(fleet, "gpu-a", _gpus(8, used_gib={6: 50}))
    assert [[g.index for g in p.gpus] for p in result.placed] == [[7]]
    [waiting] = result.waiting
    assert "GPU 6 has 50 GiB used" in waiting.reason
    assert "GPU 7 is given to llama-8b-0@gpu-a" in waiting.reason


def test_memory_fraction_follows_the_free_ratio_minus_margin_capped() -> None:
    fleet = _fleet([_sglang(gpus_per_replica=2, gpus=[0, 1])],
                   launcher={"mem_fraction_margin": 0.05, "mem_fraction_max": 0.88})
    # GPU 1 has 8 of 80 GiB used: free ratio 0.9 -> 0.85; GPU 0 nearly empty would give 0.88.
    [placed] = plan(fleet, "gpu-a", _gpus(2, used_gib={0: 0.1, 1: 8})).placed
    assert placed.mem_fraction == pytest.approx(0.85)
    [capped] = plan(fleet, "gpu-a", _gpus(2, used_gib={0: 0, 1: 0})).placed
    assert capped.mem_fraction == 0.88


def test_memory_fraction_override_and_none_for_cpu_backends() -> None:
    fleet = _fleet([
        _sglang(options={"mem_fraction": 0.5}),
        {"name": "tiny", "backend": "sim", "port": 32000},
    ])
    by_model = {p.worker.model: p for p in plan(fleet, "gpu-a", _gpus(1)).placed}
    assert by_model["llama-8b"].mem_fraction == 0.5
    assert by_model["tiny"].mem_fraction is None and by_model["tiny"].gpus == ()


def test_without_nvml_cpu_backends_still_place_and_gpu_ones_say_why() -> None:
    fleet = _fleet([_sglang(), {"name": "tiny", "backend": "sim", "port": 32000}])
    result = plan(fleet, "gpu-a", GpuView(unavailable="cannot list GPUs: NVML is not usable here"))
    assert [p.worker.model for p in result.placed] == ["tiny"]
    [blocked] = result.blocked
    assert blocked.worker.model == "llama-8b" and "NVML" in blocked.reason and blocked.final


def test_a_port_held_by_someone_else_blocks_the_replica() -> None:
    fleet = _fleet([{"name": "tiny", "backend": "sim", "port": 32000, "replicas": 2}])
    result = plan(fleet, "gpu-a", GpuView(), ports_in_use={32001: "pid 81 (nginx)"})
    assert [p.worker.port for p in result.placed] == [32000]
    assert result.blocked[0].reason == "port 32001 is in use by pid 81 (nginx)"


def test_adopted_workers_are_skipped_and_keep_their_gpus() -> None:
    fleet = _fleet([_sglang(replicas=2)])
    result = plan(fleet, "gpu-a", _gpus(2), skip=frozenset({"llama-8b-0@gpu-a"}),
                  taken_gpus=frozenset({0}))
    [placed] = result.placed
    assert placed.worker.name == "llama-8b-1@gpu-a" and placed.gpus[0].index == 1
