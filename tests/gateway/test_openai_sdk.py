"""The `openai` SDK, unchanged, talks to the fleet through the gateway."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.gateway.conftest import API_KEY, Stack


def client(stack: Stack, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key=key, max_retries=0)


async def test_chat_completion_answers_with_usage(stack: Stack) -> None:
    async with client(stack) as sdk:
        reply = await sdk.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8
        )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0


async def test_chat_stream_arrives_in_pieces_and_ends(stack: Stack) -> None:
    async with client(stack) as sdk:
        stream = await sdk.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "Tell me a story"}],
            max_tokens=12,
            stream=True,
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    text_pieces = [p for p in pieces if p]
    assert len(text_pieces) >= 2
    assert "".join(text_pieces)


async def test_text_completion(stack: Stack) -> None:
    async with client(stack) as sdk:
        reply = await sdk.completions.create(model="chat", prompt="Once upon", max_tokens=5)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 5


async def test_embeddings_one_vector_per_input(stack: Stack) -> None:
    async with client(stack) as sdk:
        reply = await sdk.embeddings.create(model="emb", input=["a cat", "a dog", "stocks"])
    assert len(reply.data) == 3
    assert len({len(d.embedding) for d in reply.data}) == 1


async def test_unknown_model_is_404_naming_the_known_ones(stack: Stack) -> None:
    async with client(stack) as sdk:
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "hi"}]
            )
    assert "gpt-9" in str(caught.value) and "'chat'" in str(caught.value)
    assert caught.value.body is not None


async def test_chat_request_to_embedding_model_is_a_clear_400(stack: Stack) -> None:
    async with client(stack) as sdk:
        with pytest.raises(openai.BadRequestError, match="embedding model"):
            await sdk.chat.completions.create(
                model="emb", messages=[{"role": "user", "content": "hi"}]
            )


async def test_missing_key_is_401(stack: Stack) -> None:
    async with client(stack, key="wrong-key") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()


async def test_models_list_counts_healthy_workers(stack: Stack) -> None:
    async with client(stack) as sdk:
        models = await sdk.models.list()
    by_id = {m.id: m.model_dump() for m in models.data}
    assert set(by_id) == {"chat", "emb"}
    assert by_id["chat"]["workers"] == 2 and by_id["chat"]["healthy_workers"] == 2
    assert by_id["emb"]["kind"] == "embedding"


async def test_stream_fails_over_when_its_worker_died_before_the_first_byte(stack: Stack) -> None:
    # One of two workers is gone; round-robin sends about half of the streams to it first.
    # Each must fail over before its first chunk and reach the caller whole.
    dead = stack.chat[0]
    await dead.stop()
    retries_before = _retries(stack)

    async def one(i: int) -> str:
        stream = await sdk.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=6,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async with client(stack) as sdk:
        texts = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(texts)
    assert _retries(stack) > retries_before
    by_url = {w.url: w for w in stack.gateway.router.workers()}
    assert by_url[dead.url].errors > 0  # the dead worker was tried, and failed over from


def _retries(stack: Stack) -> float:
    metrics = stack.gateway.app
    from modelserver.gateway.app import METRICS_KEY

    return sum(
        sample.value
        for family in metrics[METRICS_KEY].retries.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
