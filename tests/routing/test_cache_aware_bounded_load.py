"""`cache_aware` keeps prefixes warm without a hot spot: bounded-load affinity.

Unit scenarios drive the policy with in-flight counts set by hand (as the router raises
them the moment a worker is picked); the last one runs real simulated engines.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from modelserver import AsyncModelServer
from modelserver.config import BreakerConfig, RouterConfig
from modelserver.routing import RequestInfo, Worker, make_policy
from modelserver.routing.policies.cache_aware import CacheAwarePolicy, PrefixIndex, block_keys

from .helpers import FakeClock
from .test_router_on_sims import chat, sims

SYSTEM = "You are a careful household agent. Think step by step before acting. " * 32


def pool(n: int) -> list[Worker]:
    clock = FakeClock()
    return [Worker(f"http://w{i}:1", "m", "chat", BreakerConfig(), clock) for i in range(n)]


def policy(seed: int, **settings: float) -> CacheAwarePolicy:
    config = RouterConfig.model_validate({"cache_aware": settings})
    made = make_policy("cache_aware", config, random.Random(seed))
    assert isinstance(made, CacheAwarePolicy)
    return made


def ask(text: str) -> RequestInfo:
    return RequestInfo("m", "/v1/chat/completions", text)


def test_a_burst_sharing_one_system_prompt_spreads_over_every_worker() -> None:
    workers = pool(3)
    cache_aware = policy(seed=1)
    picked: Counter[str] = Counter()
    for i in range(48):  # 48 requests in flight at once, none finished yet
        chosen = cache_aware.select(workers, ask(SYSTEM + f" question {i}: where is the key?"))
        chosen.in_flight += 1
        picked[chosen.url] += 1
    # Without the bound all 48 matched the first worker's copy of the system prompt.
    assert len(picked) == 3 and max(picked.values()) <= 48 * 1.25 / 3 + 2, picked


def test_the_bound_follows_learned_speed() -> None:
    workers = pool(2)
    workers[0].ewma_latency, workers[1].ewma_latency = 0.010, 0.020  # w1 at half speed
    cache_aware = policy(seed=2, affinity_max_slowdown=10.0)  # isolate the load bound
    for i in range(30):
        text = f"conversation {i} " * 8 + SYSTEM  # a prefix of its own, homed on w1
        cache_aware.index("m").insert(block_keys(text, 64), workers[1].url)
        chosen = cache_aware.select(workers, ask(text))
        chosen.in_flight += 1
    # w1's share by speed is a third of the requests in flight: at most 1.25 x 30 / 3 + 2;
    # affinity keeps it there, above the 10 that load alone would give it.
    assert workers[1].in_flight == 14 and workers[0].in_flight == 16


def test_a_few_conversations_homed_together_arrive_at_once_and_stay_home() -> None:
    workers = pool(3)
    cache_aware = policy(seed=3)
    texts = [SYSTEM + f" conversation {i} turn 1" for i in range(3)]
    for text in texts:
        cache_aware.index("m").insert(block_keys(text, 64), workers[0].url)
    for text in texts:  # the slack keeps a small burst on its warm worker
        chosen = cache_aware.select(workers, ask(text))
        chosen.in_flight += 1
        assert chosen is workers[0]


def test_a_holder_over_its_share_gives_the_prefix_a_second_home() -> None:
    workers = pool(2)
    cache_aware = policy(seed=4)
    text = SYSTEM + " the same conversation"
    cache_aware.index("m").insert(block_keys(text, 64), workers[0].url)
    workers[0].in_flight = 6  # 7 > 1.25 x 7 / 2 + 2 = 6.4
    assert cache_aware.select(workers, ask(text)) is workers[1]
    holders, _ = cache_aware.index("m").longest_match(block_keys(text, 64), ["http://w1:1"])
    assert holders == {"http://w1:1"}


def test_a_forgotten_worker_lends_its_prefixes_to_nobody() -> None:
    index = PrefixIndex(max_blocks=100)
    text = "x" * 64 * 4
    index.insert(block_keys(text, 64), "http://old:1")
    index.forget("http://old:1")
    index.insert(block_keys("y" * 64, 64), "http://new:1")  # a worker added after it
    assert index.longest_match(block_keys(text, 64), ["http://new:1"]) == (set(), 0)
    assert index.longest_match(block_keys(text, 64), ["http://old:1"]) == (set(), 0)


def test_forgotten_workers_blocks_are_swept_out_together() -> None:
    index = PrefixIndex(max_blocks=10_000)
    for i in range(PrefixIndex._SWEEP_AFTER):
        index.insert(block_keys(f"worker {i} " * 40, 64), f"http://w{i}:1")
    index.insert(block_keys("kept " * 40, 64), "http://kept:1")
    for i in range(PrefixIndex._SWEEP_AFTER):
        index.forget(f"http://w{i}:1")
    # Only the survivor's blocks are left, and it still matches its own prefix.
    assert len(index) == len(block_keys("kept " * 40, 64))
    assert index.longest_match(block_keys("kept " * 40, 64), ["http://kept:1"])[0] == {
        "http://kept:1"
    }


async def test_shared_system_prompt_chats_spread_over_real_engines_and_hit_the_cache() -> None:
    async with sims(chat(), chat(), chat()) as servers:
        client = AsyncModelServer({"m": [s.url for s in servers]}, probe=False)  # cache_aware
        lanes = 24
        served: Counter[str] = Counter()
        cached = 0
        async with client:

            async def lane(number: int) -> None:
                nonlocal cached
                for turn in range(6):
                    question = f"lane {number} turn {turn}: which drawer holds the spoon?"
                    conversation = [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question},
                    ]
                    result = await client.chat("m", conversation, max_tokens=16)
                    served[result.worker] += 1
                    if turn > 0:  # the first wave arrives while the prefix is still computed
                        cached += result.usage.cached_tokens > 0

            await asyncio.gather(*(lane(i) for i in range(lanes)))
    assert len(served) == 3 and min(served.values()) >= 0.15 * lanes * 6, served
    # The system prompt is computed once per engine; every later request finds it cached.
    assert cached == lanes * 5, cached
