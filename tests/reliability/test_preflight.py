"""`preflight` refuses what can never start here, and nothing that may: busy GPUs, hub ids,
weights that are there, ports our own recorded workers hold (the end-to-end refusals are in
test_bad_fleet_up.py)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelserver.config import Fleet, parse_fleet
from modelserver.errors import FleetFileError, LaunchError
from modelserver.launcher.gpus import GIB, Gpu, StaticInventory
from modelserver.launcher.preflight import preflight


def gpus(count: int, used_gib: float = 0.0) -> StaticInventory:
    return StaticInventory([
        Gpu(index=i, uuid=f"GPU-{i}", name="test", total_bytes=80 * GIB,
            used_bytes=int(used_gib * GIB))
        for i in range(count)
    ])


def fleet(tmp_path: Path, *models: dict[str, Any], wait_s: float = 0.0) -> Fleet:
    return parse_fleet(
        {"fleet": {"state_dir": str(tmp_path / "state")},
         "hosts": [{"name": "h"}], "models": list(models),
         "launcher": {"wait_for_gpus_s": wait_s}},
        source="fleet.toml", base_dir=str(tmp_path),
    )


# An engine "installed" (a program that exists), so only what each test is about can refuse.
VLLM_HERE = {"backend": "vllm", "options": {"executable": sys.executable}}


def test_busy_gpus_are_left_to_placement_which_may_wait_for_them(tmp_path: Path) -> None:
    model = {**VLLM_HERE, "name": "m", "path": "org/m", "port": 30000, "replicas": 2}
    assert preflight(fleet(tmp_path, model), "h", gpus(2, used_gib=70)) == {}  # no refusal


def test_a_hub_id_is_not_a_path_but_a_local_path_must_exist(tmp_path: Path) -> None:
    hub = {**VLLM_HERE, "name": "m", "path": "meta-llama/Llama-3.1-8B", "port": 30000}
    assert preflight(fleet(tmp_path, hub), "h", gpus(1)) == {}
    local = {**hub, "path": "/nowhere/llama-8b"}
    with pytest.raises(FleetFileError, match=r"fleet.toml: models\[0\].path: /nowhere/llama-8b"):
        preflight(fleet(tmp_path, local), "h", gpus(1))


def test_a_missing_example_model_points_at_models_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # default_models_dir() is under it
    example = tmp_path / "home" / ".cache" / "modelserver" / "models" / "tiny-chat.gguf"
    model = {"name": "m", "backend": "llamacpp", "path": str(example), "port": 30000}
    with pytest.raises(FleetFileError, match="`modelserver models prepare` writes"):
        preflight(fleet(tmp_path, model), "h", gpus(0))
    elsewhere = {**model, "path": str(tmp_path / "mine.gguf")}
    with pytest.raises(FleetFileError) as caught:
        preflight(fleet(tmp_path, elsewhere), "h", gpus(0))
    assert "models prepare" not in str(caught.value)


def test_a_gguf_that_is_there_passes(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    model = {"name": "m", "backend": "llamacpp", "path": "./m.gguf", "port": 30000}
    preflight(fleet(tmp_path, model), "h", gpus(0))


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    a = {"name": "a", "backend": "sglang", "path": "org/a", "port": 30000, "gpus": [7]}
    b = {"name": "b", "backend": "sglang", "path": "org/b", "port": 30001, "gpus": [9]}
    with pytest.raises(LaunchError) as caught:
        preflight(fleet(tmp_path, a, b), "h", gpus(2))
    message = str(caught.value)
    assert "models[0] (a-0@h): GPU 7 does not exist" in message
    assert "models[1] (b-0@h): GPU 9 does not exist" in message


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_foreign_port_is_refused_only_when_placement_would_not_wait(
    tmp_path: Path, held_port: int
) -> None:
    model = {"name": "m", "backend": "sim", "port": held_port}
    with pytest.raises(LaunchError, match=rf"models\[0\].port \(m-0@h\): port {held_port}"):
        preflight(fleet(tmp_path, model), "h")
    preflight(fleet(tmp_path, model, wait_s=30), "h")  # it may free up: placement waits


class _NoNvml:
    def gpus(self) -> list[Gpu]:
        from modelserver.errors import NoGpuInventory

        raise NoGpuInventory("cannot list GPUs: NVML is not usable here (no library)")


def test_without_nvml_only_the_gpu_workers_are_refused_each_with_its_reason(
    tmp_path: Path,
) -> None:
    big = {**VLLM_HERE, "name": "big", "path": "org/big", "port": 30000}
    tiny = {"name": "tiny", "backend": "sim", "port": 30001}
    refused = preflight(fleet(tmp_path, big, tiny), "h", _NoNvml())
    assert refused == {"big-0@h": "needs 1 GPU(s), but cannot list GPUs: NVML is not usable"
                                  " here (no library)"}
    # With no CPU worker to start, nothing can run: the host is refused as a whole.
    with pytest.raises(LaunchError, match=r"nothing started on host 'h':\n  - models\[0\]"
                                          r" \(big-0@h\): needs 1 GPU"):
        preflight(fleet(tmp_path, big), "h", _NoNvml())
