"""The launcher turns KV-cache events on for the engines it starts, at ports the router
derives from each worker's URL (`[router.kv_events]`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelserver.config import parse_fleet
from modelserver.launcher.backends import backend_for
from modelserver.launcher.gpus import GIB, Gpu
from modelserver.launcher.placement import GpuView, plan
from modelserver.routing.policies.expected_completion import events_endpoints

DATA = Path(__file__).parent / "data"


def _argv(backend: str, kind: str = "chat", enabled: bool = True) -> tuple[list[str], Any]:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "h", "address": "10.0.0.7"}],
            "models": [
                {"name": "m", "backend": backend, "kind": kind, "port": 30000, "path": "/w"}
            ],
            "router": {"kv_events": {"enabled": enabled}},
        }
    )
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "H100", 80 * GIB, 0) for i in range(1)))
    [placement] = plan(fleet, "h", view).placed
    return list(backend_for(backend).command(placement, fleet).argv), fleet


def _config(argv: list[str]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(argv[argv.index("--kv-events-config") + 1])
    return value


@pytest.mark.parametrize("backend", ["sglang", "vllm", "sim"])
def test_engines_publish_where_the_router_subscribes(backend: str) -> None:
    argv, fleet = _argv(backend)
    config = _config(argv)
    assert config["publisher"] == "zmq"
    assert config["endpoint"] == "tcp://*:31000"  # the worker's port + events_port_offset
    assert config["replay_endpoint"] == "tcp://*:32000"
    assert config.get("enable_kv_cache_events", True) is True
    if backend == "vllm":
        assert config["enable_kv_cache_events"] is True  # vLLM publishes nothing without it
    [worker] = fleet.workers()
    endpoints = events_endpoints(worker.url, fleet.router)
    assert endpoints is not None
    assert endpoints.events == "tcp://10.0.0.7:31000"
    assert endpoints.replay == "tcp://10.0.0.7:32000"


@pytest.mark.parametrize(("backend", "flags"), [("sglang", "sglang-0.5.2-flags.txt"),
                                                ("vllm", "vllm-0.11.0-flags.txt")])
def test_the_flag_exists_in_the_release(backend: str, flags: str) -> None:
    known = {line for line in (DATA / flags).read_text().splitlines() if line.startswith("--")}
    assert "--kv-events-config" in known
    assert "--kv-events-config" in _argv(backend)[0]


@pytest.mark.parametrize("backend", ["sglang", "vllm", "sim"])
def test_off_unless_asked_and_never_for_embedding_models(backend: str) -> None:
    assert "--kv-events-config" not in _argv(backend, enabled=False)[0]
    assert "--kv-events-config" not in _argv(backend, kind="embedding")[0]
