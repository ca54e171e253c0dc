"""The client API on a mock transport: result shapes, order, per-item failures, the seed's call."""

from pathlib import Path
from typing import Any

import orjson
import pytest

from modelserver import AsyncModelServer, ModelServer
from modelserver.errors import EngineRejected, ModelServerError, WrongModelKind
from modelserver.routing import MockRequest, MockResponse, MockTransport

FLEET: dict[str, Any] = {
    "chat-m": ["http://c1:1", "http://c2:2"],
    "emb-m": {"kind": "embedding", "urls": ["http://e1:1"]},
}


def engine(request: MockRequest) -> MockResponse:
    body = request.json
    if request.path == "/v1/embeddings":
        data = [
            {"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(body["input"])
        ]
        return MockResponse(json={"data": list(reversed(data)), "usage": {"prompt_tokens": 3}})
    if request.path == "/v1/completions":
        return MockResponse(json={"choices": [{"text": body["prompt"].upper()}]})
    last = body["messages"][-1]["content"]
    if last == "bad":
        return MockResponse(status=400, json={"error": {"message": "bad input"}})
    if body.get("stream"):
        events = [
            b"data: " + orjson.dumps({"choices": [{"delta": {"content": piece}}]}) + b"\n\n"
            for piece in ("He", "llo", "!")
        ]
        joined = b"".join(events) + b"data: [DONE]\n\n"
        # Split mid-event so the client must reassemble SSE events across chunks.
        return MockResponse(chunks=[joined[:7], joined[7:50], joined[50:]])
    return MockResponse(
        json={
            "choices": [{"message": {"content": f"echo {last}"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
        }
    )


def client() -> AsyncModelServer:
    return AsyncModelServer(FLEET, transport=MockTransport(engine), probe=False)


async def test_chat_result_has_text_usage_worker_and_latency() -> None:
    async with client() as ms:
        result = await ms.chat("chat-m", [{"role": "user", "content": "hi"}], max_tokens=5)
    assert result.text == "echo hi"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (12, 3)
    assert result.usage.cached_tokens == 8
    assert result.worker in FLEET["chat-m"] and result.latency_s >= 0  # named by URL alone
    assert result.worker_url == result.worker
    assert result.finish_reason == "stop"


async def test_a_fleet_files_worker_is_named_as_the_tables_name_it(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[hosts]]\nname = "gpu-a"\naddress = "10.0.0.5"\n'
        '[[models]]\nname = "chat-m"\nbackend = "sim"\nport = 30000\n'
    )
    async with AsyncModelServer(fleet, transport=MockTransport(engine), probe=False) as ms:
        result = await ms.chat("chat-m", "hi", max_tokens=5)
    assert result.worker == "chat-m-0@gpu-a"  # as `status` and `validate` show it
    assert result.worker_url == "http://10.0.0.5:30000"


async def test_params_reach_the_engine() -> None:
    transport = MockTransport(engine)
    async with AsyncModelServer(FLEET, transport=transport, probe=False) as ms:
        await ms.chat("chat-m", "hi", max_tokens=5, temperature=0.3)
    sent = transport.requests[0].json
    assert sent["max_tokens"] == 5 and sent["temperature"] == 0.3
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


async def test_complete_and_embed_in_order() -> None:
    async with client() as ms:
        assert (await ms.complete("chat-m", "abc")).text == "ABC"
        vectors = await ms.embed("emb-m", ["a", "bbb", "cc"])
    assert vectors == [[1.0, 1.0], [3.0, 1.0], [2.0, 1.0]]


async def test_stream_yields_text_pieces_across_split_chunks() -> None:
    async with client() as ms:
        pieces = [p async for p in ms.stream("chat-m", "hi")]
        served = [w for w in ms.workers("chat-m") if w.requests]
    assert pieces == ["He", "llo", "!"]
    # The stream counted as a success: latency and time to first token were learned.
    assert len(served) == 1 and served[0].in_flight == 0 and served[0].errors == 0
    assert served[0].ewma_ttft_s is not None and served[0].ewma_latency_s is not None


async def test_map_keeps_input_order_and_reports_failures_per_item() -> None:
    inputs = ["one", "bad", "three", "four"]
    async with client() as ms:
        items = await ms.map("chat-m", inputs, concurrency=2, progress=True)
    assert [i.index for i in items] == [0, 1, 2, 3]
    assert [i.ok for i in items] == [True, False, True, True]
    assert items[0].value.text == "echo one" and items[3].value.text == "echo four"
    assert isinstance(items[1].error, EngineRejected) and "bad input" in str(items[1].error)


async def test_embedding_request_to_a_chat_model_is_refused_by_kind() -> None:
    async with client() as ms:
        with pytest.raises(WrongModelKind, match="chat model"):
            await ms.embed("chat-m", ["x"])
        with pytest.raises(WrongModelKind, match="embedding model"):
            await ms.chat("emb-m", "x")


async def test_seed_call_keeps_working() -> None:
    async with client() as ms:
        assert await ms.get_completion_or_embedding("chat-m", "hello") == "echo hello"
        vector = await ms.get_completion_or_embedding("emb-m", "abcd", get_embedding=True)
    assert vector == [4.0, 1.0]


def test_bad_fleet_mapping_is_a_clear_error() -> None:
    with pytest.raises(ModelServerError, match="not an http"):
        AsyncModelServer({"m": ["localhost:1"]}, probe=False)
    with pytest.raises(ModelServerError, match="unknown keys"):
        AsyncModelServer({"m": {"urls": ["http://a:1"], "kinds": "chat"}}, probe=False)


def test_sync_client_same_api() -> None:
    with ModelServer(FLEET, transport=MockTransport(engine), probe=False) as ms:
        assert ms.chat("chat-m", "x").text == "echo x"
        assert list(ms.stream("chat-m", "x")) == ["He", "llo", "!"]
        assert ms.embed("emb-m", "ab") == [[2.0, 1.0]]
        assert [i.ok for i in ms.map("chat-m", ["a", "bad"])] == [True, False]
        assert ms.get_completion_or_embedding("chat-m", "y", max_tokens=3) == "echo y"
        assert {w.url for w in ms.workers()} == {"http://c1:1", "http://c2:2", "http://e1:1"}
    with pytest.raises(ModelServerError, match="closed"):
        ms.chat("chat-m", "x")


async def test_map_embeds_and_completes_too() -> None:
    async with client() as ms:
        vectors = await ms.map("emb-m", ["a", "bb"], op="embed")
        completions = await ms.map("chat-m", ["x"], op="complete")
        with pytest.raises(ValueError, match="op must be"):
            await ms.map("chat-m", ["x"], op="translate")  # type: ignore[arg-type]
    assert [v.value for v in vectors] == [[1.0, 1.0], [2.0, 1.0]]
    assert completions[0].value.text == "X"


async def test_map_reports_a_bad_input_as_that_items_failure() -> None:
    async with client() as ms:
        items = await ms.map("chat-m", ["ok", 123, "ok2"])
        embedded = await ms.map("emb-m", ["a", None], op="embed")
    assert [i.ok for i in items] == [True, False, True]
    assert items[2].value.text == "echo ok2"
    assert isinstance(items[1].error, TypeError)
    assert "messages must be a string" in str(items[1].error) and "int 123" in str(items[1].error)
    assert [i.ok for i in embedded] == [True, False]
    assert "texts must be a string or a list of strings" in str(embedded[1].error)


def test_sync_map_reports_a_bad_input_as_that_items_failure() -> None:
    with ModelServer(FLEET, transport=MockTransport(engine), probe=False) as ms:
        items = ms.map("chat-m", ["ok", 123, "ok2"])
    assert [i.ok for i in items] == [True, False, True]
    assert isinstance(items[1].error, TypeError)
