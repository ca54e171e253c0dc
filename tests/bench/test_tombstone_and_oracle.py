"""A killed engine's port counts who still calls it; the oracle's estimate ranks engines."""

from __future__ import annotations

import aiohttp
import pytest

from modelserver.bench.contenders.oracle import estimate_completion_s
from modelserver.bench.fleet import HOST, free_port
from modelserver.bench.tombstone import Tombstone


async def test_tombstone_drops_connections_and_counts_generation_requests_only() -> None:
    tomb = Tombstone(HOST, free_port())
    await tomb.start()
    try:
        base = f"http://{HOST}:{tomb.port}"
        async with aiohttp.ClientSession() as session:
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/health"),
                                 ("POST", "/generate"), ("POST", "/flush_cache")):
                with pytest.raises(aiohttp.ClientError):
                    async with session.request(method, base + path, json={}) as resp:
                        await resp.read()
        assert tomb.generation_requests == 2
        assert tomb.connections >= 4  # aiohttp may retry an idempotent GET once
    finally:
        await tomb.stop()


def test_oracle_prefers_the_engine_that_finishes_first() -> None:
    def est(speed: float = 1.0, load: int = 0, cached: int = 0) -> float:
        return estimate_completion_s(speed, load, max_running=8, prompt_tokens=2176,
                                     cached_tokens=cached, max_tokens=256)

    assert est(speed=2.0) < est(speed=1.0)
    assert est(cached=2048) < est(cached=0)
    assert est(load=1) < est(load=7) < est(load=20)
    # A full engine costs a wait; a cache hit does not make up for a long queue.
    assert est(load=40, cached=2048) > est(load=0, cached=0)


def test_oracle_cost_counts_the_stall_a_cold_prefill_puts_on_a_busy_batch() -> None:
    from modelserver.bench.contenders.oracle import routing_cost_s

    def cost(load: int, cached: int) -> float:
        return routing_cost_s(1.0, load, max_running=32, prompt_tokens=2176,
                              cached_tokens=cached, max_tokens=256)

    # A cold prefill in front of a busy batch costs every running request a prefill's
    # worth of time, so a somewhat busier engine holding the prefix wins...
    assert cost(16, cached=2048) < cost(12, cached=0)
    assert cost(8, cached=2048) < cost(4, cached=0)
    # ... but not a much busier one.
    assert cost(0, cached=0) < cost(28, cached=2048)
