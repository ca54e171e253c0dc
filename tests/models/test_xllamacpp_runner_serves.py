"""The runner, started as a real process, serves the prepared models with llama.cpp.

Endpoints and fields are llama.cpp's (ggml-org/llama.cpp tools/server/README.md): `/health`
answers `{"status": "ok"}` once the model is loaded, `/v1/*` are OpenAI-compatible, and a
stream is server-sent events ending with `data: [DONE]`.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from modelserver.models import PreparedModels

from .runner_process import Runner, port_is_open, start_runner


def sse_events(raw: bytes) -> list[str]:
    return [line[len("data: "):] for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_health_answers_ok_once_the_model_is_loaded(chat_runner: Runner) -> None:
    status, body = chat_runner.request("/health", key=None)  # public, like llama-server's

    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_the_models_list_names_the_alias(chat_runner: Runner) -> None:
    listed = json.loads(chat_runner.request("/v1/models")[1])

    assert [m["id"] for m in listed["data"]] == ["tiny-chat"]


def test_the_api_key_is_required_when_one_is_set(chat_runner: Runner) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    assert chat_runner.request("/v1/chat/completions", body, key=None)[0] == 401
    assert chat_runner.request("/v1/chat/completions", body, key="wrong")[0] == 401
    assert chat_runner.request("/v1/chat/completions", body)[0] == 200


def test_a_chat_completion_comes_back_with_usage(chat_runner: Runner) -> None:
    answer = chat_runner.post_json(
        "/v1/chat/completions",
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "Say something."}],
         "max_tokens": 16},
    )

    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip(), "printable text came back"
    # The tiny model never picks its end token, so every answer runs to max_tokens.
    assert choice["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 5  # the ChatML template wrapped the message
    assert usage["completion_tokens"] == 16


def test_a_text_completion_runs_to_max_tokens(chat_runner: Runner) -> None:
    answer = chat_runner.post_json("/v1/completions", {"prompt": "The fleet", "max_tokens": 40})

    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 40


def test_a_chat_stream_sends_chunks_and_ends_with_done(chat_runner: Runner) -> None:
    status, raw = chat_runner.request(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Stream please."}], "max_tokens": 12,
         "stream": True},
    )

    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text, "the stream carried generated text"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length"


def test_metrics_count_the_tokens_generated(chat_runner: Runner) -> None:
    chat_runner.post_json("/v1/completions", {"prompt": "Count me", "max_tokens": 5})

    status, raw = chat_runner.request("/metrics")

    assert status == 200
    samples = dict(
        line.split(" ", 1) for line in raw.decode().splitlines() if line.startswith("llamacpp:")
    )
    assert float(samples["llamacpp:tokens_predicted_total"]) >= 5
    assert chat_runner.request("/metrics", key=None)[0] == 401


def test_embeddings_are_unit_vectors_of_384_dimensions(embedding_runner: Runner) -> None:
    answer = embedding_runner.post_json(
        "/v1/embeddings", {"model": "minilm", "input": ["first text", "second text"]}
    )

    vectors = [item["embedding"] for item in answer["data"]]
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert [len(v) for v in vectors] == [384, 384]
    for vector in vectors:
        assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)
    assert vectors[0] != vectors[1]
    assert answer["usage"]["prompt_tokens"] == 8  # [CLS] first text [SEP], twice


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_runner_cleanly_and_frees_its_port(
    prepared: PreparedModels, tmp_path: Path, sig: signal.Signals
) -> None:
    runner = start_runner(["--model", str(prepared.chat_path)], tmp_path / "runner.log")
    try:
        assert port_is_open(runner.port)

        code = runner.stop(sig)

        assert code == 0, runner.log_text()[-2000:]
        assert not port_is_open(runner.port)
        assert "xllamacpp_runner: stopped" in runner.log_text()
    finally:
        runner.stop(signal.SIGKILL)
