import random
from collections import Counter

import pytest

from modelserver.config import BreakerConfig, RouterConfig
from modelserver.errors import UnknownPolicy
from modelserver.routing import RequestInfo, Worker, make_policy
from modelserver.routing.policies import POLICIES
from modelserver.routing.policies.cache_aware import CacheAwarePolicy, PrefixIndex, block_keys

from .helpers import FakeClock


def workers(n: int = 3, model: str = "m") -> list[Worker]:
    clock = FakeClock()
    return [Worker(f"http://w{i}:1", model, "chat", BreakerConfig(), clock) for i in range(n)]


def request(text: str = "", model: str = "m") -> RequestInfo:
    return RequestInfo(model, "/v1/chat/completions", text)


def test_unknown_policy_names_the_valid_ones() -> None:
    with pytest.raises(UnknownPolicy) as caught:
        make_policy("fastest_ever", RouterConfig())
    for name in ("fastest", "round_robin", "least_load", "cache_aware"):
        assert name in str(caught.value)


def test_every_policy_is_registered_under_its_name() -> None:
    assert set(POLICIES) == {
        "fastest", "round_robin", "least_load", "cache_aware", "expected_completion"
    }
    for name in POLICIES:
        assert make_policy(name, RouterConfig()).name == name


def test_round_robin_takes_each_worker_in_turn() -> None:
    pool = workers(3)
    policy = make_policy("round_robin", RouterConfig())
    picked = [policy.select(pool, request()).url for _ in range(6)]
    assert picked == [w.url for w in pool] * 2


def test_least_load_avoids_the_busier_and_the_slower_worker() -> None:
    pool = workers(2)
    policy = make_policy("least_load", RouterConfig(), random.Random(1))
    pool[0].in_flight = 5
    assert all(policy.select(pool, request()) is pool[1] for _ in range(20))
    pool[0].in_flight = pool[1].in_flight = 1
    pool[0].ewma_latency, pool[1].ewma_latency = 0.01, 0.05  # w1 five times slower per token
    assert all(policy.select(pool, request()) is pool[0] for _ in range(20))


def test_least_load_spreads_when_everything_ties() -> None:
    pool = workers(4)
    policy = make_policy("least_load", RouterConfig(), random.Random(7))
    counts = Counter(policy.select(pool, request()).url for _ in range(400))
    assert len(counts) == 4 and min(counts.values()) > 50


def test_fastest_sticks_until_latency_grows_past_the_bound() -> None:
    pool = workers(3)
    policy = make_policy("fastest", RouterConfig(), random.Random(3))
    # Unmeasured workers are tried first, once each.
    first_three = set()
    for _w in pool:
        chosen = policy.select(pool, request())
        first_three.add(chosen.url)
        chosen.ewma_latency = {"http://w0:1": 0.02, "http://w1:1": 0.01, "http://w2:1": 0.03}[
            chosen.url
        ]
    assert first_three == {w.url for w in pool}
    assert policy.select(pool, request()) is pool[1]
    pool[1].ewma_latency = 0.025  # slower, but within 3x of the best (0.02): stay
    assert policy.select(pool, request()) is pool[1]
    pool[1].ewma_latency = 0.07  # past 3x the best: switch to the best
    assert policy.select(pool, request()) is pool[0]


def test_fastest_tries_a_worker_it_left_again_once_its_latency_is_old() -> None:
    clock = FakeClock()
    pool = [Worker(f"http://w{i}:1", "m", "chat", BreakerConfig(), clock) for i in range(2)]
    config = RouterConfig()
    policy = make_policy("fastest", config, random.Random(3))
    pool[0].observe_latency(0.01, alpha=1.0)
    pool[1].observe_latency(0.10, alpha=1.0)  # slow: left behind
    assert policy.select(pool, request()) is pool[0]
    clock.advance(config.latency.readmit_after_s / 2)
    pool[0].observe_latency(0.01, alpha=1.0)
    assert policy.select(pool, request()) is pool[0]
    clock.advance(config.latency.readmit_after_s / 2)
    # w1's only sample is now readmit_after_s old: it gets one request to be measured again.
    assert policy.select(pool, request()) is pool[1]
    pool[1].observe_latency(0.005, alpha=1.0)  # it recovered and is now the fastest
    pool[0].observe_latency(0.02, alpha=1.0)
    assert policy.select(pool, request()) is pool[1]


def conversation(seed: str, turns: int) -> list[str]:
    """Rendered texts of successive turns of one conversation (each extends the last)."""
    text = f"system: you are helpful. user: {seed} " + "lorem ipsum " * 20
    texts = []
    for turn in range(turns):
        texts.append(text)
        text += f" assistant: answer {turn} " + "dolor sit amet " * 10
    return texts


def test_cache_aware_keeps_a_conversation_on_one_worker() -> None:
    pool = workers(4)
    policy = make_policy("cache_aware", RouterConfig(), random.Random(5))
    homes: dict[str, set[str]] = {}
    for turn in range(5):
        for seed in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta"):
            chosen = policy.select(pool, request(conversation(seed, 5)[turn]))
            homes.setdefault(seed, set()).add(chosen.url)
    assert all(len(urls) == 1 for urls in homes.values()), homes
    # Distinct conversations were spread, not piled on one worker.
    assert len({next(iter(urls)) for urls in homes.values()}) >= 3


def test_cache_aware_has_no_hot_spot_when_loads_tie() -> None:
    pool = workers(4)
    policy = make_policy("cache_aware", RouterConfig(), random.Random(11))
    counts: Counter[str] = Counter()
    for i in range(200):
        # All loads tie at zero and every prompt is new: SGLang's failure case.
        counts[policy.select(pool, request(f"unique prompt number {i} " * 10)).url] += 1
    assert len(counts) == 4 and min(counts.values()) > 25


def test_cache_aware_balances_when_load_is_unbalanced() -> None:
    config = RouterConfig.model_validate(
        {"cache_aware": {"balance_abs_threshold": 4, "balance_rel_threshold": 1.5}}
    )
    pool = workers(2)
    policy = make_policy("cache_aware", config, random.Random(2))
    assert isinstance(policy, CacheAwarePolicy)
    first, second = conversation("sticky", 1)[0], conversation("second", 1)[0]
    home = pool[0]
    for text in (first, second):
        policy.index("m").insert(block_keys(text, 64), home.url)
    home.in_flight = 10
    assert policy.select(pool, request(first)) is pool[1]  # imbalanced: load beats cache
    home.in_flight = 3
    assert policy.select(pool, request(second)) is home  # balanced again: cache wins


def test_cache_aware_does_not_feed_a_slow_holder_past_its_speed() -> None:
    pool = workers(3)
    policy = make_policy("cache_aware", RouterConfig(), random.Random(6))
    assert isinstance(policy, CacheAwarePolicy)
    text = conversation("hot prefix", 1)[0]
    policy.index("m").insert(block_keys(text, 64), pool[0].url)
    for w in pool:
        w.ewma_latency = 0.010
    assert policy.select(pool, request(text)) is pool[0]  # same speed: the cache wins
    pool[0].ewma_latency = 0.014  # 1.4x slower: within the default 1.5x, still the cache
    assert policy.select(pool, request(text)) is pool[0]
    pool[0].ewma_latency = 0.020  # half speed: the request goes where it is served faster
    picked = {policy.select(pool, request(text)).url for _ in range(20)}
    assert pool[0].url not in picked
    # ... and the prefix now has a second home, which later turns follow.
    holders, _ = policy.index("m").longest_match(block_keys(text, 64), {w.url for w in pool})
    assert len(holders) >= 2


def test_cache_aware_sends_misses_to_the_less_loaded_not_the_smaller_tree() -> None:
    pool = workers(2)
    policy = make_policy("cache_aware", RouterConfig(), random.Random(4))
    assert isinstance(policy, CacheAwarePolicy)
    pool[0].in_flight = 3  # busy, and its tree is empty
    for i in range(5):  # worker 1 holds many prefixes (a big tree)
        policy.index("m").insert(block_keys(f"cached text {i} " * 20, 64), pool[1].url)
    assert policy.select(pool, request("a brand new prompt " * 10)) is pool[1]


def test_prefix_index_evicts_least_recently_used_blocks() -> None:
    index = PrefixIndex(max_blocks=4)
    old = block_keys("a" * 64 * 2, 64)
    new = block_keys("b" * 64 * 3, 64)
    index.insert(old, "http://w0:1")
    index.insert(new, "http://w1:1")
    assert len(index) == 4
    assert index.longest_match(old, {"http://w0:1"}) == (set(), 0)  # its first block is gone
    assert index.longest_match(new, {"http://w1:1"}) == ({"http://w1:1"}, 3)


def test_removed_worker_is_forgotten_by_cache_aware() -> None:
    pool = workers(2)
    policy = make_policy("cache_aware", RouterConfig(), random.Random(4))
    assert isinstance(policy, CacheAwarePolicy)
    text = conversation("gone", 1)[0]
    home = policy.select(pool, request(text))
    policy.on_worker_removed(home)
    assert policy.index("m").longest_match(block_keys(text, 64), {home.url})[1] == 0
