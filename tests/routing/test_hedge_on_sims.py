"""A hedged stream against real simulated engines: the first answer is returned and the
engine that lost sees its request aborted. The late mark is an event the test sets."""

from __future__ import annotations

import asyncio

from modelserver.config import RouterConfig
from modelserver.routing import Router, WorkerEntry
from modelserver.sim import SimConfig

from .kv_sims import sims, wait_until

CHAT = "/v1/chat/completions"


def body(text: str) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 32,
        "stream": True,
    }


async def read_all(router: Router, text: str) -> tuple[str, str]:
    response = await router.forward("m", CHAT, body(text), stream=True)
    assert response.chunks is not None
    async with response:
        data = b"".join([chunk async for chunk in response.chunks])
    return response.worker, data.decode()


async def test_a_hedged_stream_returns_the_first_answer_and_the_loser_is_aborted() -> None:
    late = asyncio.Event()

    async def late_mark(seconds: float) -> None:
        await late.wait()  # "the first token is late" is the test's call, not the clock's

    async with sims(SimConfig(model="m", speed=50.0), SimConfig(model="m", speed=50.0)) as (
        primary,
        backup,
    ):
        config = RouterConfig.model_validate(
            {"policy": "round_robin", "hedge": {"enabled": True, "min_samples": 1, "budget": 1}}
        )
        router = Router(
            [WorkerEntry("m", s.url) for s in (primary, backup)], config=config, sleep=late_mark
        )
        async with router:
            hedger = router.hedger
            assert hedger is not None
            assert (await read_all(router, "warm up one"))[0] == primary.url  # TTFT learned
            assert (await read_all(router, "warm up two"))[0] == backup.url
            await primary.set_faults("hang")  # the primary's GPU stops: no first token
            hedged = asyncio.create_task(read_all(router, "the hedged one"))
            await wait_until(lambda: primary.faults.accepted == 1, "the primary has it")
            late.set()
            worker, text = await hedged
            assert worker == backup.url and "[DONE]" in text
            assert hedger.budget.hedges == 1 and hedger.won_by_copy == 1
            assert primary.aborted == 0  # a hung engine cannot notice yet
            await primary.set_faults("")  # it runs again, finds its client gone, drops it
            await wait_until(lambda: primary.aborted == 1, "the loser's request aborted")
            assert backup.aborted == 0
            assert primary.engine.totals.requests == 1  # only the warm-up finished there
