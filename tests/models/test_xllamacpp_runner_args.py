"""The runner's command line: llama-server's flag names, turned into xllamacpp parameters."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import xllamacpp

from modelserver.launcher.backends.xllamacpp_runner import common_params, main, parse_args


def test_long_flags_become_the_matching_xllamacpp_parameters(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    options = parse_args(
        ["--model", str(model), "--host", "10.0.0.5", "--port", "32000", "--alias", "tiny-chat",
         "--ctx-size", "2048", "--parallel", "4", "--threads", "3", "--api-key", "k1,k2",
         "--metrics"]
    )

    params = common_params(options, xllamacpp)

    assert params.model.path == str(model)
    assert params.hostnames == ["10.0.0.5"]
    assert params.port == 32000
    assert params.model_alias == {"tiny-chat"}
    assert (params.n_ctx, params.n_parallel) == (2048, 4)
    assert params.cpuparams.n_threads == 3
    assert params.cpuparams_batch.n_threads == 3  # llama-server: --threads-batch follows
    assert params.api_keys == ["k1", "k2"]
    assert params.endpoint_metrics is True
    assert params.embedding is False


def test_short_flags_and_embedding_options_are_understood(tmp_path: Path) -> None:
    options = parse_args(
        ["-m", str(tmp_path / "e.gguf"), "--port", "1", "-a", "minilm", "-c", "1024", "-np", "2",
         "-t", "1", "--embeddings", "--pooling", "mean"]
    )

    params = common_params(options, xllamacpp)

    assert (params.n_ctx, params.n_parallel, params.cpuparams.n_threads) == (1024, 2, 1)
    assert params.embedding is True
    assert params.pooling_type == xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN


def test_flags_left_out_keep_llama_cpp_defaults(tmp_path: Path) -> None:
    defaults = xllamacpp.CommonParams()

    params = common_params(parse_args(["-m", str(tmp_path / "m"), "--port", "9"]), xllamacpp)

    assert params.hostnames == ["127.0.0.1"]
    assert (params.n_ctx, params.n_parallel) == (defaults.n_ctx, defaults.n_parallel)
    assert params.pooling_type == defaults.pooling_type
    assert params.api_keys == []
    assert params.endpoint_metrics is False


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--port", "8080"], "--model"),
        (["-m", "x.gguf"], "--port"),
        (["-m", "x.gguf", "--port", "70000"], "port must be 1..65535"),
        (["-m", "x.gguf", "--port", "1", "--pooling", "max"], "invalid choice: 'max'"),
        (["-m", "x.gguf", "--port", "1", "--parallel", "0"], "must be 1 or more"),
        (["-m", "x.gguf", "--port", "1", "--ctx-size", "lots"], "invalid _natural value"),
    ],
)
def test_bad_flags_exit_2_with_a_usage_message(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)

    assert stopped.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_missing_model_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"

    assert main(["--model", str(missing), "--port", "1"]) == 2

    assert f"model file {missing} does not exist" in capsys.readouterr().err


def test_without_xllamacpp_the_error_gives_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # `import xllamacpp` now fails

    assert main(["--model", str(model), "--port", "1"]) == 2

    assert "pip install 'modelserver[cpu]'" in capsys.readouterr().err


def test_a_folder_given_as_model_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", str(tmp_path), "--port", "1"]) == 2

    assert "is a folder, not a GGUF file" in capsys.readouterr().err


def test_a_file_that_is_not_a_model_exits_1_with_the_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + bytes(64))  # the magic, then nothing llama.cpp can load
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])

    done = subprocess.run(
        [sys.executable, "-m", "modelserver.launcher.backends.xllamacpp_runner", "-m", str(bogus),
         "--host", "127.0.0.1", "--port", port],
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert done.returncode == 1
    assert f"llama.cpp could not serve {bogus}" in done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "layers"),
    [("--n-gpu-layers", "999", 999), ("-ngl", "all", -2), ("--gpu-layers", "auto", -1),
     ("--n-gpu-layers", "0", 0)],
)
def test_gpu_layers_take_llama_cpps_numbers_and_words(
    tmp_path: Path, flag: str, value: str, layers: int
) -> None:
    # llama.cpp common/arg.cpp: 'auto' is -1 and 'all' is -2 in common_params.n_gpu_layers.
    options = parse_args(["-m", str(tmp_path / "m.gguf"), "--port", "9", flag, value])
    assert common_params(options, xllamacpp).n_gpu_layers == layers


def test_a_negative_or_unknown_gpu_layer_count_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in ("-3", "most"):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["-m", str(tmp_path / "m.gguf"), "--port", "9", "-ngl", value])
        assert exit_.value.code == 2
    assert "'auto', 'all' or a number" in capsys.readouterr().err


def test_the_runner_run_as_a_module_starts_without_a_runtime_warning(tmp_path: Path) -> None:
    # `python -m` of a module its package had imported already makes runpy warn at the top of
    # every llama.cpp worker's log; the backend must not import the runner.
    done = subprocess.run(
        [sys.executable, "-m", "modelserver.launcher.backends.xllamacpp_runner",
         "-m", str(tmp_path / "missing.gguf"), "--port", "9"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr
    assert "Warning" not in done.stderr, done.stderr
