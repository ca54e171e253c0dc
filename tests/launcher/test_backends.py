from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from modelserver.config import Fleet, parse_fleet
from modelserver.errors import FleetFileError
from modelserver.launcher.backends import backend_for
from modelserver.launcher.backends.base import LaunchSpec, engine_env
from modelserver.launcher.backends.llamacpp import RUNNER_MODULE
from modelserver.launcher.gpus import GIB, Gpu
from modelserver.launcher.placement import GpuView, Placement, plan


def _fleet(model: dict[str, Any]) -> Fleet:
    return parse_fleet({"hosts": [{"name": "local"}], "models": [{"port": 31000, **model}]})


def _placed(fleet: Fleet, gpus: int = 0) -> Placement:
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "A100", 80 * GIB, GIB) for i in range(gpus)))
    [placement] = plan(fleet, "local", view).placed
    return placement


def _command(model: dict[str, Any], gpus: int = 0) -> LaunchSpec:
    fleet = _fleet(model)
    placement = _placed(fleet, gpus)
    return backend_for(placement.worker.backend).command(placement, fleet)


def test_sim_argv_carries_options_and_the_key_goes_in_the_environment() -> None:
    spec = _command(
        {
            "name": "tiny",
            "backend": "sim",
            "kind": "embedding",
            "api_key": "k1",
            "options": {
                "speed": 2.0,
                "fault": "crash-at=0",
                "max_running": 4,
                "cache_tokens": 1000,
                "seed": 7,
            },
        }
    )
    assert list(spec.argv) == [
        sys.executable,
        "-m",
        "modelserver",
        "sim",
        "--host",
        "127.0.0.1",
        "--port",
        "31000",
        "--model",
        "tiny",
        "--kind",
        "embedding",
        "--speed",
        "2.0",
        "--fault",
        "crash-at=0",
        "--max-running",
        "4",
        "--cache-tokens",
        "1000",
        "--seed",
        "7",
    ]
    # The key travels in the environment: `ps` shows every user the command line.
    assert spec.env["MODELSERVER_SIM_API_KEY"] == "k1"
    assert "k1" not in spec.shown()


def test_sglang_argv_for_an_embedding_model_on_two_gpus() -> None:
    spec = _command(
        {
            "name": "e5",
            "backend": "sglang",
            "kind": "embedding",
            "path": "/w/e5",
            "gpus_per_replica": 2,
            "api_key": "s",
            "args": ["--dtype", "bfloat16"],
        },
        gpus=2,
    )
    argv = list(spec.argv)
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    assert argv[argv.index("--model-path") + 1] == "/w/e5"
    assert argv[argv.index("--tp-size") + 1] == "2"
    assert 0 < float(argv[argv.index("--mem-fraction-static") + 1]) <= 0.88
    assert argv[argv.index("--served-model-name") + 1] == "e5"
    assert "--is-embedding" in argv and argv[-2:] == ["--dtype", "bfloat16"]
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "GPU-0,GPU-1"


def test_vllm_argv_serves_the_path_and_pools_embeddings() -> None:
    spec = _command({"name": "e5", "backend": "vllm", "kind": "embedding", "path": "/w/e5"}, gpus=1)
    argv = list(spec.argv)
    assert argv[1:3] == ["serve", "/w/e5"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "1"
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert "--gpu-memory-utilization" in argv


def test_llamacpp_uses_llama_server_when_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = {
        "name": "qwen",
        "backend": "llamacpp",
        "kind": "embedding",
        "path": "/w/q.gguf",
        "options": {"ctx_size": 4096, "parallel": 2, "threads": 2},
    }
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = list(_command(model).argv)
    assert argv[:3] == [sys.executable, "-m", RUNNER_MODULE]
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    argv = list(_command(model).argv)
    assert argv[0] == str(binary)
    assert argv[1:] == [
        "--model",
        "/w/q.gguf",
        "--host",
        "127.0.0.1",
        "--port",
        "31000",
        "--alias",
        "qwen",
        "--ctx-size",
        "4096",
        "--parallel",
        "2",
        "--threads",
        "2",
        "--n-gpu-layers",  # no GPUs placed: stays on the CPU even in a GPU build
        "0",
        "--embedding",  # no --pooling: the GGUF says how its model pools
    ]


def test_engine_env_sets_the_gpus_keeps_other_cuda_settings_and_drops_gateway_keys() -> None:
    fleet = _fleet({"name": "tiny", "backend": "sim"})
    env = engine_env(
        _placed(fleet),
        parent={
            "PATH": "/bin",
            "CUDA_VISIBLE_DEVICES": "0,1",
            "CUDA_DEVICE_ORDER": "FASTEST_FIRST",
            "CUDA_HOME": "/usr/local/cuda",  # where flashinfer's and triton's JIT find nvcc
            "CUDA_PATH": "/usr/local/cuda",
            "CUDA_MPS_PIPE_DIRECTORY": "/x",
            "MODELSERVER_API_KEYS": "sk-gateway",
            "MODELSERVER_ADMIN_KEYS": "sk-admin",
            "HOME": "/h",
        },
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/h",
        "CUDA_HOME": "/usr/local/cuda",
        "CUDA_PATH": "/usr/local/cuda",
        "CUDA_MPS_PIPE_DIRECTORY": "/x",
        "CUDA_VISIBLE_DEVICES": "",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def test_the_gateway_key_variables_engines_never_get_are_the_gateways_own() -> None:
    from modelserver.gateway.auth import ADMIN_KEYS_ENV, API_KEYS_ENV
    from modelserver.launcher.secrets import GATEWAY_KEY_ENVS

    assert set(GATEWAY_KEY_ENVS) == {API_KEYS_ENV, ADMIN_KEYS_ENV}


def test_gpus_without_uuid_are_named_by_index() -> None:
    fleet = _fleet({"name": "m", "backend": "sglang", "path": "/w"})
    view = GpuView((Gpu(3, "", "A100", 80 * GIB, 0),))
    [placement] = plan(fleet, "local", view).placed
    assert engine_env(placement, parent={})["CUDA_VISIBLE_DEVICES"] == "3"


def test_unknown_option_names_the_key_and_the_allowed_ones() -> None:
    document = {
        "hosts": [{"name": "local"}],
        "models": [
            {"name": "a", "backend": "sim", "port": 1000, "options": {"speed": 1}},
            {"name": "b", "backend": "sim", "port": 2000, "options": {"sped": 1}},
        ],
    }
    with pytest.raises(FleetFileError) as info:
        parse_fleet(document)  # it checks each model's options against its backend
    assert info.value.problems == [
        "models[1].options.sped: unknown option for backend 'sim'; allowed: cache_tokens,"
        " fault, gpu, max_running, mem_fraction_static, model_size, seed, speed, speeds"
    ]


def test_a_key_in_the_launchers_own_environment_never_reaches_an_engine_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSERVER_SIM_API_KEY", "inherited")
    spec = _command({"name": "tiny", "backend": "sim"})
    assert "MODELSERVER_SIM_API_KEY" not in spec.env


def test_sglang_takes_its_key_on_the_command_line_only() -> None:
    spec = _command({"name": "c", "backend": "sglang", "path": "/w", "api_key": "s"}, gpus=1)
    argv = list(spec.argv)
    assert argv[argv.index("--api-key") + 1] == "s"
    assert "s" not in spec.shown().split()


def test_shown_masks_every_key_flag_in_both_forms() -> None:
    spec = LaunchSpec(("engine", "--api-key", "k1", "--api-key=k2", "--admin-api-key", "k3",
                       "--admin-api-key=k4", "--api-keyring", "public"), {})
    assert spec.shown() == ("engine --api-key *** --api-key=*** --admin-api-key ***"
                            " --admin-api-key=*** --api-keyring public")


def test_fleet_secrets_are_every_configured_key() -> None:
    from modelserver.launcher.secrets import fleet_secrets

    fleet = parse_fleet({
        "hosts": [{"name": "local"}],
        "models": [{"name": "a", "backend": "sim", "port": 1000, "api_key": "k-model",
                    "args": ["--admin-api-key", "k-admin-arg", "--api-key=k-inline"]}],
        "gateway": {"api_keys": ["k-gw"], "admin_keys": ["k-gw-admin"]},
    })
    environ = {"MODELSERVER_API_KEYS": "k-env-1, k-env-2", "MODELSERVER_ADMIN_KEYS": ""}
    assert set(fleet_secrets(fleet, environ)) == {
        "k-model", "k-admin-arg", "k-inline", "k-gw", "k-gw-admin", "k-env-1", "k-env-2"}


@pytest.mark.parametrize(
    ("options", "kind", "problem"),
    [
        ({"pooling": "max"}, "embedding", "'max' is no llama.cpp pooling type; allowed: none,"
         " mean, cls, last, rank"),
        ({"pooling": "cls"}, "chat", "only embedding models pool (kind is 'chat')"),
    ],
)
def test_llamacpp_pooling_option_names_the_allowed_types(
    options: dict[str, Any], kind: str, problem: str
) -> None:
    document = {"hosts": [{"name": "local"}], "models": [
        {"name": "e", "backend": "llamacpp", "kind": kind, "path": "/w/e.gguf", "port": 1000,
         "options": options}]}
    with pytest.raises(FleetFileError) as info:
        parse_fleet(document)
    assert f"models[0].options.pooling: {problem}" in info.value.problems[0]


def test_an_embedding_model_pools_as_its_gguf_says_unless_the_option_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    model = {"name": "e", "backend": "llamacpp", "kind": "embedding", "path": "/w/e.gguf"}
    assert "--pooling" not in _command(model).argv
    argv = list(_command({**model, "options": {"pooling": "cls"}}).argv)
    assert argv[argv.index("--pooling") + 1] == "cls"


def test_engines_that_are_not_installed_say_so_and_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm, no llama-server
    vllm = _fleet({"name": "v", "backend": "vllm", "path": "/w"}).models[0]
    assert backend_for("vllm").engine_problem(0, vllm) == (
        "vLLM is not installed: no `vllm` program on PATH; install it, or set"
        " models[0].options.executable to its path")
    missing = _fleet({"name": "v", "backend": "vllm", "path": "/w",
                      "options": {"executable": str(tmp_path / "vllm")}}).models[0]
    assert "is not an executable program" in (backend_for("vllm").engine_problem(3, missing) or "")
    program = tmp_path / "vllm"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert backend_for("vllm").engine_problem(0, vllm) is None  # on PATH now
    python = tmp_path / "python"  # a "Python" without SGLang: exits 1 for any -c
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    sglang = _fleet({"name": "s", "backend": "sglang", "path": "/w",
                     "options": {"python": str(python)}}).models[0]
    assert backend_for("sglang").engine_problem(2, sglang) == (
        f"SGLang is not installed for {python} (no module named 'sglang'); install it there,"
        " or set models[2].options.python to a Python that has it")
    assert backend_for("sim").engine_problem(0, sglang) is None


def test_a_sim_worker_stands_in_for_the_gpu_and_model_its_options_name() -> None:
    spec = _command({"name": "big", "backend": "sim", "options": {
        "gpu": "a100-40gb", "model_size": "llama-3.1-8b", "mem_fraction_static": 0.8}})
    argv = list(spec.argv)
    for flag, value in (("--gpu", "a100-40gb"), ("--model-size", "llama-3.1-8b"),
                        ("--mem-fraction-static", "0.8")):
        assert argv[argv.index(flag) + 1] == value


def test_a_sim_gpu_the_simulator_does_not_know_is_refused_with_its_list() -> None:
    refused = r"models\[0\]\.options\.gpu: gpu 'h200' unknown; valid"
    with pytest.raises(FleetFileError, match=refused):
        _fleet({"name": "big", "backend": "sim", "options": {"gpu": "h200"}})
