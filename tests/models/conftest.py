"""Fixtures for the real CPU engine: the prepared GGUF files and runner processes.

Each fixture that starts a runner stops it when its scope ends (see `runner_process`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelserver.models import PreparedModels, prepare_models

from .runner_process import Runner, start_runner


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedModels:
    """Both GGUF files, written once for the whole session into a temporary folder."""
    return prepare_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def chat_runner(
    prepared: PreparedModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runner]:
    """The tiny chat model served by the runner, with an API key and Prometheus metrics."""
    log = tmp_path_factory.mktemp("chat") / "runner.log"
    args = ["--model", str(prepared.chat_path), "--alias", "tiny-chat", "-c", "2048"]
    runner = start_runner([*args, "-np", "2", "-t", "1", "--metrics"], log, api_key="sk-test-key")
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def embedding_runner(
    prepared: PreparedModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runner]:
    """MiniLM served for embeddings, started with the flags the llamacpp backend passes:
    `--embedding` and no `--pooling`, so llama.cpp pools as the GGUF says (mean)."""
    log = tmp_path_factory.mktemp("minilm") / "runner.log"
    args = ["--model", str(prepared.embedding_path), "--alias", "minilm", "--ctx-size", "1024"]
    runner = start_runner([*args, "--parallel", "2", "--embedding"], log)
    try:
        yield runner
    finally:
        runner.stop()
