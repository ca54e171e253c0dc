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
