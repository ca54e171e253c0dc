"""A stream through the client survives its engine dying, hanging or being cut off after
its 5th chunk: real `modelserver sim` processes, real sockets. The caller's text equals,
word for word, the answer to the same request with no fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserver import AsyncModelServer
from modelserver.config import RouterConfig
from modelserver.errors import StreamBroken
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
    slow_and_fast_sims,
    unbroken_answer,
)


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_client_stream_broken_after_its_5th_chunk_ends_as_the_unbroken_answer(
    fault: str, tmp_path: Path
) -> None:
    async with slow_and_fast_sims(tmp_path) as (slow, fast):
        expected = (await unbroken_answer(fast.url))["choices"][0]["message"]["content"]
        # The engine is reached through a proxy that passes on the role event and 5 pieces
        # and holds the rest back: the fault lands mid-stream, however the host is loaded.
        async with ResettingProxy(int(slow.url.rsplit(":", 1)[1]), hold_after=6) as proxy:
            target = proxy.url
            resumes = Resumes()
            client = AsyncModelServer(
                {MODEL: [target]}, config=RouterConfig(), probe=False, observers=[resumes]
            )
            async with client:
                if fault == "hang":
                    # What the router learns of the slow engine judges its stall.
                    for _ in range(2):
                        await client.chat(MODEL, MESSAGES, max_tokens=4)
                pieces: list[str] = []
                async for piece in client.stream(MODEL, MESSAGES, max_tokens=MAX_TOKENS):
                    pieces.append(piece)
                    if len(pieces) == 5:
                        client.router.add_worker(MODEL, fast.url, backend="sim")
                        await inject(fault, slow, proxy)
    assert "".join(pieces) == expected
    assert len(expected.split(" ")) == MAX_TOKENS
    (record,) = resumes.records
    assert (record.failed_worker, record.worker) == (target, fast.url)
    assert record.delivered_tokens == 5
    if fault == "hang":
        assert record.error.startswith("stream stalled")


async def test_a_client_stream_with_n_2_that_breaks_fails_with_the_documented_message() -> None:
    async with FakeEngine("cut_after_first") as breaking, FakeEngine("good") as good:
        client = AsyncModelServer({MODEL: [breaking.url]}, probe=False)
        async with client:
            with pytest.raises(StreamBroken) as caught:
                async for _ in client.stream(MODEL, MESSAGES, n=2):
                    # One that could continue, were it allowed.
                    client.router.add_worker(MODEL, good.url)
    assert MANY_CHOICES.format(n=2) in str(caught.value)
    assert "not resumed" in str(caught.value)
    assert good.posts == 0
