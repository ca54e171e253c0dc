"""The router's exact cache index, kept from real simulated engines' KV-cache events.

Waits are on conditions (the index's state, the engine's counters), never on durations.
"""

from __future__ import annotations

from collections import Counter

import aiohttp
import zmq

from modelserver.routing.kv_events import IndexState
from modelserver.routing.policies.expected_completion import _sim_tokens
from modelserver.sim.kv_events import KvEventPublisher, parse_kv_events_config

from .kv_sims import (
    chat_body,
    engine_pages,
    events_sim,
    policy_of,
    post_direct,
    sims,
    subscribed_router,
    wait_until,
)

SYSTEM = "You are a careful assistant for the billing team. " * 40
LONG_SYSTEM = "Rules of the house, chapter and verse, for every answer. " * 400
CHAT = "/v1/chat/completions"


async def test_the_index_matches_what_the_engine_holds() -> None:
    async with sims(events_sim()) as (server,):
        router = subscribed_router([server])
        await router.start()
        policy = policy_of(router)
        blocks = policy.kv.blocks(server.url)
        assert blocks is not None
        body = chat_body(SYSTEM, "What is an invoice?")
        await post_direct(server, body)
        tokens = _sim_tokens(CHAT, body)
        assert tokens is not None
        await wait_until(
            lambda: policy.kv.cached_tokens(server.url, tokens) == engine_pages(server, tokens),
            "the index to catch up with the engine",
        )
        assert blocks.state is IndexState.LIVE
        assert engine_pages(server, tokens) > len(tokens) // 2
        other = _sim_tokens(CHAT, chat_body("Another system prompt entirely. " * 30, "hi"))
        assert other is not None
        assert policy.kv.cached_tokens(server.url, other) == 0
        await router.close()


async def test_after_a_restart_no_request_goes_there_for_its_cache() -> None:
    # A long prompt and a one-token answer: the prefill it saves is what decides.
    async with sims(events_sim(2.0), events_sim(2.0)) as (first, second):
        router = subscribed_router([first, second])
        await router.start()
        policy = policy_of(router)
        warm = chat_body(LONG_SYSTEM, "warm up", max_tokens=1)
        tokens = _sim_tokens(CHAT, chat_body(LONG_SYSTEM, "a question"))
        assert tokens is not None
        for server in (first, second):  # both engines hold the system prompt
            await post_direct(server, warm)
        await wait_until(
            lambda: all(policy.kv.cached_tokens(s.url, tokens) for s in (first, second)),
            "both indexes to hold the system prompt",
        )
        await first.set_faults("crash-at=0")  # the engine dies...
        await wait_until(lambda: first._crashed, "the crash")
        await first.set_faults("")  # ...and comes back empty: AllBlocksCleared
        await wait_until(
            lambda: policy.kv.cached_tokens(first.url, tokens) == 0, "the cleared cache"
        )
        picked: Counter[str] = Counter()
        for i in range(8):  # one at a time: no load to balance, only the cache decides
            body = chat_body(LONG_SYSTEM, f"question {i}", max_tokens=1)
            answer = await router.forward("m", CHAT, body)
            picked[answer.worker] += 1
        assert picked == {second.url: 8}
        await router.close()


async def test_a_dropped_event_stream_falls_back_and_recovers_by_replay() -> None:
    async with sims(events_sim()) as (server,):
        router = subscribed_router([server])
        await router.start()
        policy = policy_of(router)
        blocks = policy.kv.blocks(server.url)
        assert blocks is not None and server.kv_events is not None
        first = chat_body(SYSTEM, "before the drop")
        await post_direct(server, first)
        await wait_until(lambda: blocks.state is IndexState.LIVE and len(blocks) > 0, "live")
        server.kv_events.pause()  # the publisher's socket goes away
        await wait_until(lambda: IndexState.DEGRADED in blocks.history, "the drop noticed")
        tokens = _sim_tokens(CHAT, first)
        assert tokens is not None
        if blocks.state is IndexState.DEGRADED:  # until it reconnects: no exact answer
            assert policy.kv.cached_tokens(server.url, tokens) is None
        missed = chat_body("A prompt stored while nobody listened. " * 30, "q")
        await post_direct(server, missed)  # its events are numbered and kept for replay
        server.kv_events.resume()
        await wait_until(lambda: blocks.state is IndexState.LIVE, "recovered")
        assert blocks.history == [IndexState.LIVE, IndexState.DEGRADED, IndexState.LIVE]
        missed_tokens = _sim_tokens(CHAT, missed)
        assert missed_tokens is not None
        await wait_until(
            lambda: policy.kv.cached_tokens(server.url, missed_tokens)
            == engine_pages(server, missed_tokens),
            "the replayed batches applied",
        )
        assert engine_pages(server, missed_tokens) > 0
        await router.close()


async def test_a_sequence_gap_without_replay_stays_degraded_until_the_cache_is_cleared() -> None:
    no_replay = '{"publisher": "zmq", "endpoint": "tcp://*:*"}'
    config = parse_kv_events_config(no_replay)
    async with sims(events_sim(events=no_replay)) as (server,):
        # No speed probe: nothing may be published before the subscription is up, since
        # without a replay socket a batch missed at the start is never recovered.
        router = subscribed_router([server], expected_completion={"speed_probe": False})
        await router.start()
        policy = policy_of(router)
        blocks = policy.kv.blocks(server.url)
        publisher = server.kv_events
        assert blocks is not None and publisher is not None and config.replay_endpoint is None
        subscriber = policy.kv.subscribers[server.url]
        await wait_until(lambda: subscriber.connected, "subscribed")
        await post_direct(server, chat_body(SYSTEM, "one"))
        await wait_until(lambda: blocks.state is IndexState.LIVE, "live")
        publisher._next_seq += 1  # a batch lost on the way: the next one leaves a gap
        await post_direct(server, chat_body("Something else to store. " * 30, "two"))
        await wait_until(lambda: blocks.state is IndexState.DEGRADED, "the gap noticed")
        tokens = _sim_tokens(CHAT, chat_body(SYSTEM, "one"))
        assert tokens is not None and policy.kv.cached_tokens(server.url, tokens) is None
        async with (
            aiohttp.ClientSession() as http,
            http.post(server.url + "/flush_cache") as answer,
        ):
            assert answer.status == 200  # AllBlocksCleared: the cache is known again
        await wait_until(lambda: blocks.state is IndexState.LIVE, "live after the clear")
        assert policy.kv.cached_tokens(server.url, tokens) == 0
        await router.close()


def test_the_publisher_writes_sglangs_frames() -> None:
    """Topic, 8-byte big-endian sequence, msgpack [ts, [["BlockStored", ...], ...]]."""
    import msgpack

    context = zmq.Context.instance()
    config = parse_kv_events_config(
        '{"publisher": "zmq", "endpoint": "inproc://kv-test", "topic": "t"}'
    )
    publisher = KvEventPublisher(config, page_size=4, clock=lambda: 12.5)
    publisher._open_pub()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"t")
    sub.connect("inproc://kv-test")
    publisher.stored([1, 2, 3, 4, 5, 6, 7, 8, 9], 0)
    publisher.flush()
    topic, seq, payload = sub.recv_multipart()
    ts, events = msgpack.unpackb(payload)
    assert (topic, int.from_bytes(seq, "big"), ts) == (b"t", 0, 12.5)
    assert [e[0] for e in events] == ["BlockStored", "BlockStored"]
    first, second = events
    assert first[2] is None and first[3] == [1, 2, 3, 4] and first[4] == 4
    assert second[2] == first[1][0] and second[3] == [5, 6, 7, 8]
    publisher.removed([1, 2, 3, 4, 5, 6, 7, 8, 9], 6)  # the path is cut inside page 2
    publisher.flush()
    _, seq, payload = sub.recv_multipart()
    assert int.from_bytes(seq, "big") == 1
    assert msgpack.unpackb(payload)[1] == [["BlockRemoved", [second[1][0]]]]
    sub.close(linger=0)
    publisher.pause()
