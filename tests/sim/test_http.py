"""SGLang's HTTP surface: every route, its 0.2.15 alias, bodies, streams, errors, metrics."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from modelserver.sim.protocol import DEFAULT_CHAT_MAX_TOKENS
from modelserver.sim.tokenizer import apply_chat_template

from .conftest import StartSim

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "Tell me about caches."}]}


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def sse_events(http: aiohttp.ClientSession, url: str, body: Any) -> list[bytes]:
    async with http.post(url, json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


async def test_health_routes_answer_200(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim()
    for path in ("/health", "/health_generate"):
        async with http.get(sim.url + path) as response:
            assert response.status == 200, path


@pytest.mark.parametrize("path", ["/model_info", "/get_model_info"])
async def test_model_info_and_its_alias(
    start_sim: StartSim, http: aiohttp.ClientSession, path: str, tmp_path: Any
) -> None:
    sim = await start_sim(model_path=str(tmp_path))
    async with http.get(sim.url + path) as response:
        body = await response.json()
    assert body["model_path"] == str(tmp_path)
    assert body["is_generation"] is True
    assert {"tokenizer_path", "preferred_sampling_params", "weight_version"} <= body.keys()


@pytest.mark.parametrize("path", ["/server_info", "/get_server_info"])
async def test_server_info_and_its_alias(
    start_sim: StartSim, http: aiohttp.ClientSession, path: str
) -> None:
    sim = await start_sim(max_running=7, cache_tokens=5000)
    async with http.get(sim.url + path) as response:
        body = await response.json()
    assert body["max_running_requests"] == 7
    assert body["max_total_num_tokens"] == 5000
    assert body["internal_states"][0]["num_running_reqs"] == 0
    assert "version" in body


async def test_old_get_server_args_route(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(max_running=3)
    async with http.get(sim.url + "/get_server_args") as response:
        body = await response.json()
    assert body["max_running_requests"] == 3 and body["model_path"] == "llama"


async def test_models_list_and_card(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim()
    async with http.get(sim.url + "/v1/models") as response:
        listing = await response.json()
    assert [m["id"] for m in listing["data"]] == ["llama"]
    assert listing["data"][0]["owned_by"] == "sglang"
    async with http.get(sim.url + "/v1/models/llama") as response:
        assert (await response.json())["id"] == "llama"
    async with http.get(sim.url + "/v1/models/other") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "model_not_found"


async def test_chat_completion_shape_and_exact_length(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    status, body = await post(http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 9})
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "llama"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 9
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 9
    assert usage["prompt_tokens"] == len(apply_chat_template(CHAT["messages"]))
    assert usage["total_tokens"] == usage["prompt_tokens"] + 9
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_default_chat_length_and_determinism(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    _, first = await post(http, sim.url + "/v1/chat/completions", CHAT)
    _, again = await post(http, sim.url + "/v1/chat/completions", CHAT)
    assert first["usage"]["completion_tokens"] == DEFAULT_CHAT_MAX_TOKENS
    assert first["choices"][0]["message"] == again["choices"][0]["message"]


async def test_cached_tokens_grow_along_a_conversation(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a careful assistant. " * 20}
    ]
    cached: list[int] = []
    prompts: list[int] = []
    for turn in range(3):
        messages.append({"role": "user", "content": f"Question number {turn}, please answer."})
        _, body = await post(
            http, sim.url + "/v1/chat/completions", {"messages": messages, "max_tokens": 12}
        )
        cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
        prompts.append(body["usage"]["prompt_tokens"])
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    assert cached[0] == 0
    # Each turn finds the whole previous prompt and answer in the cache.
    assert cached[1] >= prompts[0] + 12
    assert cached[2] >= prompts[1] + 12


async def test_chat_stream_sends_one_chunk_per_token_then_done(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    body = {**CHAT, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    events = await sse_events(http, sim.url + "/v1/chat/completions", body)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 6
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    _, whole = await post(http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 6})
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert streamed == whole["choices"][0]["message"]["content"]


async def test_stream_without_include_usage_has_no_usage_chunk(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    events = await sse_events(
        http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 3, "stream": True}
    )
    assert events[-1] == b"[DONE]"
    assert all("usage" not in orjson.loads(e) for e in events[:-1])


async def test_stream_chunks_leave_while_the_engine_is_still_generating(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(speed=1.0)  # 200 decode steps of ~6 ms each
    body = {**CHAT, "max_tokens": 200, "stream": True}
    async with http.post(sim.url + "/v1/chat/completions", json=body) as response:
        first = await response.content.readuntil(b"\n\n")
        assert b"assistant" in first
        (running,) = sim.engine.running
        assert running.generated < 200
        rest = await response.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_completions_plain_batched_and_streamed(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    status, body = await post(http, sim.url + "/v1/completions", {"prompt": "Once upon a time"})
    assert status == 200 and body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] == 16  # SGLang's default max_tokens
    _, batch = await post(
        http, sim.url + "/v1/completions", {"prompt": ["a b c", "d e f"], "max_tokens": 2}
    )
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert batch["usage"]["completion_tokens"] == 4
    _, ids = await post(http, sim.url + "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2})
    assert ids["usage"]["prompt_tokens"] == 3
    events = await sse_events(
        http,
        sim.url + "/v1/completions",
        {
            "prompt": "x y",
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == b"[DONE]"
    texts = [orjson.loads(e) for e in events[:-1]]
    assert sum(1 for t in texts if t["choices"]) == 4
    assert texts[-1]["usage"]["completion_tokens"] == 4


async def test_native_generate_meta_info(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim()
    payload = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 5}}
    status, body = await post(http, sim.url + "/generate", payload)
    assert status == 200
    meta = body["meta_info"]
    assert meta["completion_tokens"] == 5 and meta["prompt_tokens"] > 0
    assert meta["cached_tokens"] == 0 and meta["e2e_latency"] > 0
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    _, again = await post(http, sim.url + "/generate", payload)
    assert again["meta_info"]["cached_tokens"] == meta["prompt_tokens"] - 1
    _, batch = await post(http, sim.url + "/generate", {**payload, "text": ["a", "b"]})
    assert isinstance(batch, list) and len(batch) == 2
    events = await sse_events(http, sim.url + "/generate", {**payload, "stream": True})
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    texts = [c["text"] for c in chunks]
    assert len(texts) == 5 and texts[-1] == body["text"]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(4))  # cumulative, as SGLang
    # SGLang reports e2e_latency only once the request has finished.
    assert all("e2e_latency" not in c["meta_info"] for c in chunks[:-1])
    assert chunks[-1]["meta_info"]["e2e_latency"] > 0


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", b'{"model": "llama"}', "messages"),
        ("/v1/chat/completions", b'{"messages": "hi"}', "messages"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user"}], "max_tokens": "x"}',
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user"}], "max_tokens": 0}',
            "max_tokens",
        ),
        ("/v1/completions", b'{"max_tokens": 3}', "prompt"),
        ("/v1/completions", b'{"prompt": ""}', "prompt"),
        ("/generate", b'{"sampling_params": {}}', None),
    ],
)
async def test_bad_requests_get_400_in_openai_error_shape(
    start_sim: StartSim, http: aiohttp.ClientSession, path: str, raw: bytes, param: str | None
) -> None:
    sim = await start_sim()
    async with http.post(sim.url + path, data=raw) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 400 and error["message"]
    assert error["param"] == param


async def test_a_prompt_beyond_the_context_length_is_refused(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    status, body = await post(
        http, sim.url + "/v1/completions", {"prompt": list(range(131_000)), "max_tokens": 100}
    )
    assert status == 400
    assert "maximum context length of 131072" in body["error"]["message"]


async def test_unknown_request_fields_are_accepted(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    body = {**CHAT, "max_tokens": 2, "temperature": 0.3, "top_k": 5, "frobnicate": {"x": 1}}
    status, _ = await post(http, sim.url + "/v1/chat/completions", body)
    assert status == 200


async def test_embeddings_on_a_chat_model_get_sglangs_error(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    status, body = await post(http, sim.url + "/v1/embeddings", {"input": "hello"})
    assert status == 400
    assert body["error"]["message"].startswith(
        "This model does not appear to be an embedding model by default."
    )


async def test_embedding_model_serves_unit_vectors_and_refuses_chat(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(kind="embedding", model="minilm")
    texts = [
        "The cat sat on the mat in the warm afternoon sun.",
        "The cat sat on the mat in the warm morning sun.",
        "Quarterly revenue grew by twelve percent in Europe.",
    ]
    status, body = await post(http, sim.url + "/v1/embeddings", {"input": texts, "model": "m"})
    assert status == 200 and body["object"] == "list"
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    status, chat = await post(http, sim.url + "/v1/chat/completions", CHAT)
    assert status == 400 and "embedding model" in chat["error"]["message"]
    async with http.get(sim.url + "/model_info") as response:
        assert (await response.json())["is_generation"] is False


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_use_sglang_names_and_move(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    other = await start_sim(model="other")
    async with http.get(sim.url + "/metrics") as response:
        before = await response.text()
    for name in (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:cache_hit_rate",
        "sglang:token_usage",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:cached_tokens_total",
        "sglang:num_requests_total",
        "sglang:time_to_first_token_seconds_count",
        "sglang:e2e_request_latency_seconds_count",
        "sglang:inter_token_latency_seconds_count",
    ):
        assert metric(before, name) == 0, name
    for _ in range(2):
        await post(http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 4})
    async with http.get(sim.url + "/metrics") as response:
        after = await response.text()
    assert metric(after, "sglang:num_requests_total") == 2
    assert metric(after, "sglang:generation_tokens_total") == 8
    assert metric(after, "sglang:cached_tokens_total") > 0
    assert metric(after, "sglang:cache_hit_rate") > 0.5
    assert metric(after, "sglang:token_usage") == 0  # cached but held by nobody: free
    assert metric(after, "sglang:time_to_first_token_seconds_count") == 2
    assert 'model_name="llama"' in after
    async with http.get(other.url + "/metrics") as response:
        assert metric(await response.text(), "sglang:num_requests_total") == 0


async def test_gen_throughput_is_reported_by_metrics_and_server_info(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    async with http.get(sim.url + "/metrics") as response:
        assert metric(await response.text(), "sglang:gen_throughput") == 0
    await post(http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 100})
    async with http.get(sim.url + "/metrics") as response:
        throughput = metric(await response.text(), "sglang:gen_throughput")
    async with http.get(sim.url + "/server_info") as response:
        internal = (await response.json())["internal_states"][0]
    assert throughput > 0  # 99 decode steps: two of SGLang's 40-step windows
    assert internal["last_gen_throughput"] == pytest.approx(throughput)


async def test_flush_cache_empties_the_prefix_cache(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    body = {**CHAT, "max_tokens": 2}
    await post(http, sim.url + "/v1/chat/completions", body)
    async with http.post(sim.url + "/flush_cache") as response:
        assert response.status == 200
    _, again = await post(http, sim.url + "/v1/chat/completions", body)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    async with http.get(sim.url + "/flush_cache") as response:
        assert response.status == 200


async def test_api_key_is_required_except_for_health_and_metrics(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(api_key="sekrit")
    status, body = await post(http, sim.url + "/v1/chat/completions", CHAT)
    assert status == 401 and body == {"error": "Unauthorized"}
    async with http.post(
        sim.url + "/v1/chat/completions",
        json={**CHAT, "max_tokens": 1},
        headers={"Authorization": "Bearer sekrit"},
    ) as response:
        assert response.status == 200
    for path in ("/health", "/metrics"):
        async with http.get(sim.url + path) as response:
            assert response.status == 200


async def test_sim_match_predicts_cached_tokens_without_side_effects(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    await post(http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 3})
    follow_up = {
        "messages": [*CHAT["messages"], {"role": "user", "content": "And eviction?"}],
        "max_tokens": 3,
    }
    size_before = sim.engine.cache.size
    _, predicted = await post(http, sim.url + "/sim/match", follow_up)
    _, predicted_again = await post(http, sim.url + "/sim/match", follow_up)
    assert sim.engine.cache.size == size_before
    assert predicted == predicted_again
    _, actual = await post(http, sim.url + "/v1/chat/completions", follow_up)
    assert predicted["cached_tokens"] == actual["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert predicted["prompt_tokens"] == actual["usage"]["prompt_tokens"]
    _, by_prompt = await post(http, sim.url + "/sim/match", {"prompt": "never seen"})
    assert by_prompt["cached_tokens"] == 0


async def test_sim_state_reports_the_engine(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(cache_tokens=9000, faults="slow-start=0")
    await post(http, sim.url + "/v1/chat/completions", {**CHAT, "max_tokens": 2})
    async with http.get(sim.url + "/sim/state") as response:
        state = await response.json()
    assert state["running"] == 0 and state["queued"] == 0
    assert state["cache_tokens_budget"] == 9000 and state["cache_tokens_used"] > 0
    assert state["requests_served"] == 1
    assert state["max_running"] == 256  # perf.DEFAULT_MAX_RUNNING


async def test_the_openai_client_library_can_use_it(start_sim: StartSim) -> None:
    sim = await start_sim()
    client = AsyncOpenAI(base_url=sim.url + "/v1", api_key="none")
    try:
        reply = await client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        stream = await client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p or "" for p in pieces) == reply.choices[0].message.content
    finally:
        await client.close()


async def test_queue_and_running_gauges_follow_the_engine(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(speed=1.0, max_running=1)
    body = {**CHAT, "max_tokens": 100}
    tasks = [
        asyncio.create_task(post(http, sim.url + "/v1/chat/completions", body)) for _ in range(3)
    ]
    try:
        deadline = time.monotonic() + 10
        while True:
            async with http.get(sim.url + "/metrics") as response:
                text = await response.text()
            if metric(text, "sglang:num_queue_reqs") == 2:
                break
            assert time.monotonic() < deadline, (
                "three requests never showed as 1 running + 2 queued"
            )
            await asyncio.sleep(0.01)
        assert metric(text, "sglang:num_running_reqs") == 1
        assert metric(text, "sglang:token_usage") > 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_client_leaving_a_stream_frees_its_place(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(speed=1.0)
    body = {**CHAT, "max_tokens": 1000, "stream": True}
    async with http.post(sim.url + "/v1/chat/completions", json=body) as response:
        await response.content.readuntil(b"\n\n")
        assert len(sim.engine.running) == 1
        response.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while sim.engine.running:
        assert time.monotonic() < deadline, "the abandoned stream kept running"
        await asyncio.sleep(0.01)
    assert sim.engine.cache.locked_size == 0
