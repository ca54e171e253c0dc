"""A fleet shared by tenants, as processes: a gateway process with tenants in its fleet file in
front of two simulated engines (4 running slots each, SGLang's priority scheduling on).

What the admission queue and the tenants' limits promise, measured end to end: interactive
chats keep their time to first token under a batch flood (a ratio of two runs, medians of
many samples, so no fixed time is assumed), the batch flood still fills every slot not kept
for higher classes, equal-weight batch tenants get equal tokens whatever their concurrency,
over-limit requests are 429 and never reach an engine, and a queued caller that leaves frees
its place at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.tenant_fleet import KEYS, SLOTS, SharedFleet, shared_fleet

SAMPLES = 20
"""Interactive chats per run: the median of 20 is steady on a shared 2-core machine."""
PACE_S = 0.5
FLOOD = 96
RESERVED = 1  # [router.admission] reserved_slots default: per engine, kept from batch


async def ttft(fleet: SharedFleet) -> float:
    """Seconds from sending a streamed interactive chat to its first event."""
    start = time.perf_counter()
    async with await fleet.chat("lab", 4, stream=True) as response:
        assert response.status == 200
        await response.content.readline()
        took = time.perf_counter() - start
        await response.read()
    return took


async def interactive_run(fleet: SharedFleet) -> list[float]:
    seen = []
    for _ in range(SAMPLES):
        seen.append(await ttft(fleet))
        await asyncio.sleep(PACE_S)
    return seen


async def flood(fleet: SharedFleet, tenant: str, concurrency: int, max_tokens: int,
                served: dict[str, int]) -> list[asyncio.Task[None]]:
    """`concurrency` callers of `tenant`, each sending its next request when one ends."""

    async def caller() -> None:
        while True:
            async with await fleet.chat(tenant, max_tokens) as response:
                body = await response.json()
                assert response.status == 200, body
                served[tenant] = served.get(tenant, 0) + body["usage"]["completion_tokens"]

    return [asyncio.create_task(caller()) for _ in range(concurrency)]


async def stopped(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("reserved_where", "batch_slots"),
    [("below_cap", 2 * (SLOTS - RESERVED)), ("auto", 2 * SLOTS)],
)
async def test_interactive_time_to_first_token_holds_under_a_batch_flood_that_fills_the_rest(
    tmp_path: Path, reserved_where: str, batch_slots: int
) -> None:
    """below_cap: batch leaves a slot per engine free; auto: the engines' /server_info says
    they preempt by priority, so batch takes every slot and an engine preempts one for each
    interactive chat (above_cap)."""
    async with shared_fleet(tmp_path, reserved_where=reserved_where) as fleet:
        for _ in range(3):  # warm: connections, first routes
            await ttft(fleet)
        alone = await interactive_run(fleet)
        served: dict[str, int] = {}
        batch = await flood(fleet, "eval", FLOOD, 48, served)
        try:
            await wait_until_queued(fleet, "eval")
            under_flood = await interactive_run(fleet)
            # Between interactive chats the batch holds every slot but the reserved ones.
            running = []
            for _ in range(10):
                running.append(await fleet.running_at_engines())
                await asyncio.sleep(0.05)
            assert (await fleet.tenants())["eval"]["waiting"] > 0  # still backlogged
        finally:
            await stopped(batch)
    ratio = statistics.median(under_flood) / statistics.median(alone)
    assert ratio <= 2.0, (ratio, alone, under_flood)
    assert max(running) == batch_slots, running
    assert served["eval"] > 0


async def wait_until_queued(fleet: SharedFleet, tenant: str) -> None:
    waiting = 0

    async def check() -> None:
        nonlocal waiting
        waiting = (await fleet.tenants())[tenant]["waiting"]

    deadline = time.monotonic() + 30
    while waiting == 0:
        assert time.monotonic() < deadline, f"{tenant} never queued"
        await check()
        await asyncio.sleep(0.1)


async def test_two_equal_weight_batch_tenants_get_equal_tokens_whatever_their_concurrency(
    tmp_path: Path,
) -> None:
    async with shared_fleet(tmp_path, speed=1.0) as fleet:
        served: dict[str, int] = {}
        callers = [
            *await flood(fleet, "eval", 48, 24, served),
            *await flood(fleet, "eval2", 6, 24, served),  # an eighth of the callers
        ]
        try:
            await wait_until_queued(fleet, "eval")
            await wait_until_queued(fleet, "eval2")
            before = await fleet.tenants()
            # Long enough for ~100 requests of each while both stay backlogged.
            await asyncio.sleep(8)
            after = await fleet.tenants()
            # eval is backlogged throughout (48 callers for at most 2 * SLOTS slots). eval2's 6
            # callers ask for more than its half of the batch slots, so fairness, not its
            # demand, limits it; but the fair queue admits its waiters first whenever its
            # counter is behind, so at one instant it may have none waiting (a snapshot check
            # of eval2 failed a fresh-clone run on a quiet machine).
            assert after["eval"]["waiting"] > 0
        finally:
            await stopped(callers)
    got = {
        t: after[t]["completion_tokens"] - before[t]["completion_tokens"] for t in ("eval", "eval2")
    }
    assert min(got.values()) > 0
    assert abs(got["eval"] - got["eval2"]) <= 0.10 * max(got.values()), got


async def test_requests_over_a_tenants_limits_are_429_and_never_reach_an_engine(
    tmp_path: Path,
) -> None:
    async with shared_fleet(tmp_path, speed=2.0) as fleet:
        before = await fleet.requests_at_engines()
        answered = []
        for tenant in ("rated", "metered"):
            for _ in range(6):
                async with await fleet.chat(tenant, 8) as response:
                    answered.append((tenant, response.status, response.headers.get("Retry-After"),
                                     await response.json()))
        after = await fleet.requests_at_engines()
        # One request each went through; the engines saw exactly those two.
        assert [s for t, s, _, _ in answered] == [200] + [429] * 5 + [200] + [429] * 5
        assert after - before == 2
        for tenant, status, retry_after, body in answered:
            if status == 429:
                assert retry_after is not None and int(retry_after) >= 1
                error = body["error"]
                assert error["type"] == "rate_limit_error"
                expected = "requests_per_second" if tenant == "rated" else "tokens_per_minute"
                assert error["code"] == expected and tenant in error["message"]
        # max_in_flight: one stream held open, the next request refused at once.
        held = await fleet.chat("single", 2000, stream=True)
        try:
            async with await fleet.chat("single", 8) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["code"] == "max_in_flight"
        finally:
            held.close()
        rows = await fleet.tenants()
        assert rows["rated"]["rejections"] == {"requests_per_second": 5}
        assert rows["metered"]["rejections"] == {"tokens_per_minute": 5}
        assert rows["single"]["rejections"] == {"max_in_flight": 1}
        async with fleet.http.get(fleet.gateway_url + "/metrics") as r:
            metrics = await r.text()
        assert (
            'modelserver_tenant_rejections_total{reason="requests_per_second",tenant="rated"} 5.0'
            in metrics
        )
        for key in KEYS.values():  # tenants are named, keys never shown
            assert key not in metrics and key not in str(rows)


async def test_a_caller_that_leaves_while_queued_frees_its_place_at_once(tmp_path: Path) -> None:
    async with shared_fleet(tmp_path, speed=0.25) as fleet:
        # Long batch requests hold every slot batch may take.
        holders: dict[str, int] = {}
        hold = await flood(fleet, "eval", 2 * (SLOTS - RESERVED), 2000, holders)
        try:
            await wait_for_running(fleet, 2 * (SLOTS - RESERVED))
            leaver = asyncio.create_task(fleet.chat("eval", 8))
            await wait_until_queued(fleet, "eval")
            leaver.cancel()  # the caller goes away while its request waits
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await leaver
            deadline = time.monotonic() + 30
            rows = await fleet.tenants()
            while rows["eval"]["waiting"] != 0:
                assert time.monotonic() < deadline, rows["eval"]
                await asyncio.sleep(0.05)
                rows = await fleet.tenants()
            assert rows["eval"]["left_queue"] == {"caller_left": 1}
            # The holders were not disturbed: still every batch slot, no more.
            assert await fleet.running_at_engines() == 2 * (SLOTS - RESERVED)
        finally:
            await stopped(hold)


async def wait_for_running(fleet: SharedFleet, count: int) -> None:
    deadline = time.monotonic() + 30
    while await fleet.running_at_engines() < count:
        assert time.monotonic() < deadline, "the engines never filled"
        await asyncio.sleep(0.05)
