"""Through the gateway, with the `openai` SDK: a stream whose engine is SIGKILLed, hung or
reset after its 5th chunk reaches the caller whole, as one stream (one id, the unbroken
answer word for word, one usage that adds up); a request with n=2 fails saying why.
Engines are real `modelserver sim` processes; the gateway listens on a real socket."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest

from modelserver.config import RouterConfig
from modelserver.routing import Router
from modelserver.routing.resume import MANY_CHOICES
from tests.reliability.fake_engine import FakeEngine
from tests.routing.broken_streams import (
    FAULTS,
    MAX_TOKENS,
    MESSAGES,
    MODEL,
    ResettingProxy,
    Resumes,
    inject,
    sdk_through_gateway,
    slow_and_fast_sims,
    unbroken_answer,
)


@pytest.mark.parametrize("fault", FAULTS)
async def test_an_sdk_stream_broken_after_its_5th_chunk_arrives_whole_as_one_stream(
    fault: str, tmp_path: Path
) -> None:
    async with slow_and_fast_sims(tmp_path) as (slow, fast):
        expected = await unbroken_answer(fast.url)
        # The engine is reached through a proxy that passes on the role event and 5 pieces
        # and holds the rest back: the fault lands mid-stream, however the host is loaded.
        async with ResettingProxy(int(slow.url.rsplit(":", 1)[1]), hold_after=6) as proxy:
            target = proxy.url
            resumes = Resumes()
            router = Router.from_mapping({MODEL: [target]}, config=RouterConfig())
            router.add_observer(resumes)
            async with sdk_through_gateway(router) as (gateway, sdk):
                if fault == "hang":  # what the router learns of the slow engine
                    for _ in range(2):
                        await sdk.chat.completions.create(
                            model=MODEL,
                            messages=MESSAGES,
                            max_tokens=4,  # type: ignore[arg-type]
                        )
                stream = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                pieces: list[str] = []
                chunks = []
                async for chunk in stream:
                    chunks.append(chunk)
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                        if len(pieces) == 5:
                            router.add_worker(MODEL, fast.url, backend="sim")
                            await inject(fault, slow, proxy)
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(gateway.url + "/metrics") as metrics,
                ):
                    exposed = await metrics.text()
    assert f'modelserver_stream_resumes_total{{model="{MODEL}"}} 1.0' in exposed
    assert "".join(pieces) == expected["choices"][0]["message"]["content"]
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {MODEL}
    (usage,) = [c.usage for c in chunks if c.usage is not None]
    assert usage.completion_tokens == expected["usage"]["completion_tokens"] == MAX_TOKENS
    assert usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    (finish,) = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == "length"
    (record,) = resumes.records
    assert (record.failed_worker, record.worker) == (target, fast.url)


async def test_an_sdk_stream_with_n_2_that_breaks_fails_with_the_documented_message() -> None:
    async with (
        FakeEngine("cut_after_first") as breaking,
        FakeEngine("good") as good,
    ):
        router = Router.from_mapping({MODEL: [breaking.url]}, config=RouterConfig())
        async with sdk_through_gateway(router) as (_, sdk):
            stream = await sdk.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                n=2,
                stream=True,  # type: ignore[arg-type]
            )
            router.add_worker(MODEL, good.url)  # one that could continue, were it allowed
            with pytest.raises(openai.APIError) as caught:
                async for _ in stream:
                    pass
    assert MANY_CHOICES.format(n=2) in str(caught.value.message)
    assert "not resumed" in str(caught.value.message)
    assert good.posts == 0
