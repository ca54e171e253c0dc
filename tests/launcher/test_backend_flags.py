"""Every flag we pass to SGLang and vLLM exists in the pinned releases' own argument parsers.

The flag lists in data/ were read from the release files named in each list's header
(sgl-project/sglang v0.5.2 and v0.2.15 python/sglang/srt/server_args.py; vllm-project/vllm
v0.11.0 vllm/engine/arg_utils.py + vllm/entrypoints/openai/cli_args.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelserver.config import parse_fleet
from modelserver.errors import FleetFileError
from modelserver.launcher.backends import backend_for
from modelserver.launcher.backends.base import Span
from modelserver.launcher.gpus import GIB, Gpu
from modelserver.launcher.placement import GpuView, plan

DATA = Path(__file__).parent / "data"


def _flags(name: str) -> set[str]:
    lines = (DATA / name).read_text().splitlines()
    return {line for line in lines if line.startswith("--")}


def _our_flags(model: dict[str, Any]) -> set[str]:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "h"}],
            "models": [
                {
                    "name": "m",
                    "port": 30000,
                    "path": "/w",
                    "gpus_per_replica": 2,
                    "api_key": "k",
                    **model,
                }
            ],
        }
    )
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "H100", 80 * GIB, 0) for i in range(2)))
    [placement] = plan(fleet, "h", view).placed
    argv = backend_for(model["backend"]).command(placement, fleet).argv
    return {arg for arg in argv if arg.startswith("--")}


@pytest.mark.parametrize("release", ["sglang-0.5.2-flags.txt", "sglang-0.2.15-flags.txt"])
@pytest.mark.parametrize("kind", ["chat", "embedding"])
def test_sglang_flags_exist_in_the_release(release: str, kind: str) -> None:
    ours = _our_flags({"backend": "sglang", "kind": kind})
    assert ours - _flags(release) == set()
    assert "--mem-fraction-static" in ours and "--tp-size" in ours


@pytest.mark.parametrize("kind", ["chat", "embedding"])
def test_vllm_flags_exist_in_the_release(kind: str) -> None:
    ours = _our_flags({"backend": "vllm", "kind": kind})
    assert ours - _flags("vllm-0.11.0-flags.txt") == set()
    assert "--gpu-memory-utilization" in ours


def test_the_flag_lists_are_real_lists() -> None:
    # Guards against an empty or truncated data file making the checks above vacuous.
    assert len(_flags("sglang-0.5.2-flags.txt")) > 150
    assert len(_flags("sglang-0.2.15-flags.txt")) > 40
    assert len(_flags("vllm-0.11.0-flags.txt")) > 100
    assert "--is-embedding" not in _flags("vllm-0.11.0-flags.txt")


@pytest.mark.parametrize(
    ("kind", "pooling"), [("chat", None), ("embedding", None), ("embedding", "cls")]
)
def test_llamacpp_flags_exist_in_llama_server_and_parse_in_our_runner(
    kind: str, pooling: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelserver.launcher.backends import xllamacpp_runner

    monkeypatch.setenv("PATH", "")  # no llama-server: the argv starts with our runner
    fleet = parse_fleet(
        {
            "hosts": [{"name": "h"}],
            "models": [
                {
                    "name": "q",
                    "backend": "llamacpp",
                    "kind": kind,
                    "path": "/w/q.gguf",
                    "port": 30000,
                    "api_key": "k",
                    "options": {"ctx_size": 2048, "parallel": 2, "threads": 1}
                    | ({"pooling": pooling} if pooling else {}),
                }
            ],
        }
    )
    [placement] = plan(fleet, "h", GpuView()).placed
    spec = backend_for("llamacpp").command(placement, fleet)
    argv = list(spec.argv)
    assert "k" not in argv and spec.env["LLAMA_API_KEY"] == "k"  # off the `ps` line
    monkeypatch.setenv("LLAMA_API_KEY", spec.env["LLAMA_API_KEY"])
    assert argv[1:3] == ["-m", xllamacpp_runner.__name__]
    flags = {arg for arg in argv if arg.startswith("--")}
    assert flags - _flags("llama-server-flags.txt") == set()
    options = xllamacpp_runner.parse_args(argv[3:])
    numbers = (options.port, options.ctx_size, options.parallel, options.threads)
    assert numbers == (30000, 2048, 2, 1)
    assert options.aliases == ("q",) and options.api_keys == ("k",)
    assert options.embedding is (kind == "embedding")
    # No --pooling unless asked: llama.cpp then pools as the GGUF says (CLS for bge, last
    # token for Qwen3-Embedding, mean for MiniLM).
    assert options.pooling == pooling


def _llamacpp_argv(
    monkeypatch: pytest.MonkeyPatch, gpus: int, options: dict[str, Any] | None = None
) -> list[str]:
    monkeypatch.setenv("PATH", "")  # no llama-server: the argv starts with our runner
    fleet = parse_fleet({
        "hosts": [{"name": "h"}],
        "models": [{"name": "q", "backend": "llamacpp", "path": "/w/q.gguf", "port": 30000,
                    "gpus_per_replica": gpus, "options": options or {}}],
    })
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "L4", 24 * GIB, 0) for i in range(2)))
    [placement] = plan(fleet, "h", view).placed
    return list(backend_for("llamacpp").command(placement, fleet).argv)


@pytest.mark.parametrize(("gpus", "layers"), [(2, "999"), (1, "999"), (0, "0")])
def test_a_llamacpp_worker_given_gpus_offloads_every_layer_and_one_without_none(
    monkeypatch: pytest.MonkeyPatch, gpus: int, layers: str
) -> None:
    from modelserver.launcher.backends import xllamacpp_runner

    argv = _llamacpp_argv(monkeypatch, gpus)
    assert argv[argv.index("--n-gpu-layers") + 1] == layers
    assert "--n-gpu-layers" in _flags("llama-server-flags.txt")
    assert xllamacpp_runner.parse_args(argv[3:]).gpu_layers == int(layers)


@pytest.mark.parametrize("asked", [12, "all", "auto"])
def test_options_gpu_layers_overrides_the_offload(
    monkeypatch: pytest.MonkeyPatch, asked: int | str
) -> None:
    argv = _llamacpp_argv(monkeypatch, 1, {"gpu_layers": asked})
    assert argv[argv.index("--n-gpu-layers") + 1] == str(asked)


@pytest.mark.parametrize("asked", [-1, "most", 2.5])
def test_a_gpu_layers_option_llama_cpp_cannot_read_is_refused(asked: Any) -> None:
    with pytest.raises(FleetFileError, match=r"models\[0\]\.options\.gpu_layers"):
        parse_fleet({
            "hosts": [{"name": "h"}],
            "models": [{"name": "q", "backend": "llamacpp", "path": "/w/q.gguf", "port": 1,
                        "options": {"gpu_layers": asked}}],
        })


def _span_argv(backend: str, rank: int, args: list[str] | None = None) -> list[str]:
    """One node's command line of a replica of 4 GPUs over 2 nodes (2 GPUs on this one)."""
    fleet = parse_fleet({"hosts": [{"name": "h"}], "models": [
        {"name": "m", "backend": backend, "path": "/w", "port": 30000, "gpus_per_replica": 2,
         "args": args or []}]})
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "H100", 80 * GIB, 0) for i in range(2)))
    [placement] = plan(fleet, "h", view).placed
    span = Span(nnodes=2, rank=rank, dist_init_addr="10.0.0.7:41000", total_gpus=4)
    return list(backend_for(backend).command(placement, fleet, span).argv)


@pytest.mark.parametrize("rank", [0, 1])
def test_an_sglang_replica_over_two_nodes_gets_sglangs_multi_node_flags(rank: int) -> None:
    argv = _span_argv("sglang", rank, ["--trust-remote-code"])
    assert {a for a in argv if a.startswith("--")} - _flags("sglang-0.5.2-flags.txt") == set()
    value = {flag: argv[argv.index(flag) + 1] for flag in
             ("--tp-size", "--nnodes", "--node-rank", "--dist-init-addr")}
    assert value == {"--tp-size": "4", "--nnodes": "2", "--node-rank": str(rank),
                     "--dist-init-addr": "10.0.0.7:41000"}
    assert argv[-1] == "--trust-remote-code"  # the user's args stay last
    assert _visible(rank) == "GPU-0,GPU-1"  # this node's share


def _visible(rank: int) -> str:
    """CUDA_VISIBLE_DEVICES of one node's process of a spanning SGLang replica."""
    fleet = parse_fleet({"hosts": [{"name": "h"}], "models": [
        {"name": "m", "backend": "sglang", "path": "/w", "port": 1, "gpus_per_replica": 2}]})
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "H100", 80 * GIB, 0) for i in range(2)))
    [placement] = plan(fleet, "h", view).placed
    span = Span(2, rank, "10.0.0.7:41000", 4)
    return str(backend_for("sglang").command(placement, fleet, span).env["CUDA_VISIBLE_DEVICES"])


def test_a_sim_replica_over_two_nodes_runs_the_simulator_and_a_waiting_rank() -> None:
    from modelserver.launcher.backends import sim_rank

    assert _span_argv("sim", 0) == _plain_sim_argv()
    argv = _span_argv("sim", 1)
    assert argv[1:3] == ["-m", sim_rank.__name__]
    assert {a for a in argv if a.startswith("--")} <= _flags("sglang-0.5.2-flags.txt")
    args = sim_rank.parse(argv[3:])
    assert (args.nnodes, args.node_rank, args.dist_init_addr, args.tp_size) == (
        2, 1, "10.0.0.7:41000", 4)


@pytest.mark.parametrize("bad", [
    ["--nnodes", "2", "--node-rank", "2", "--dist-init-addr", "h:1", "--tp-size", "4"],
    ["--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "h:1", "--tp-size", "3"],
    ["--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "h", "--tp-size", "4"],
])
def test_a_waiting_sim_rank_refuses_what_sglang_would(bad: list[str]) -> None:
    from modelserver.launcher.backends import sim_rank

    with pytest.raises(SystemExit):
        sim_rank.parse(bad)


def _plain_sim_argv() -> list[str]:
    fleet = parse_fleet({"hosts": [{"name": "h"}], "models": [
        {"name": "m", "backend": "sim", "path": "/w", "port": 30000, "gpus_per_replica": 2}]})
    view = GpuView(tuple(Gpu(i, f"GPU-{i}", "H100", 80 * GIB, 0) for i in range(2)))
    [placement] = plan(fleet, "h", view).placed
    return list(backend_for("sim").command(placement, fleet).argv)


def test_backends_that_cannot_span_nodes_say_why() -> None:
    assert backend_for("sglang").spans_nodes is None and backend_for("sim").spans_nodes is None
    assert "--distributed-executor-backend" in _flags("vllm-0.11.0-flags.txt")
    assert "--nnodes" not in _flags("vllm-0.11.0-flags.txt")  # what vllm.py's refusal says
    assert "Ray" in str(backend_for("vllm").spans_nodes)
    assert backend_for("llamacpp").spans_nodes is not None
