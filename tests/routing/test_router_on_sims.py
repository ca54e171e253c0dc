"""The router against real simulated engines (real sockets, in-process SimServers).

Assertions are on counts and ratios, never on times; every sim a test starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelserver import AsyncModelServer, ModelServer
from modelserver.config import RouterConfig
from modelserver.errors import EngineRejected, NoHealthyWorker
from modelserver.routing import Router, WorkerEntry
from modelserver.routing.breaker import BreakerState
from modelserver.sim import SimConfig, SimServer, SimThread

from .helpers import Recorder

FAST = 100.0  # sim speed: 100x a real GPU keeps these tests quick
# Above speed ~5 the sim's step loop has a floor (about 1 ms a token), so a test about
# *relative* speed runs the sims slower, where their times differ as configured.
TIMED = 2.0


@contextlib.asynccontextmanager
async def sims(*configs: SimConfig) -> AsyncIterator[list[SimServer]]:
    servers: list[SimServer] = []
    try:
        for config in configs:
            server = SimServer(config, host="127.0.0.1", port=0)
            await server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            await server.stop()


def chat(model: str = "m", speed: float = FAST, **kw: Any) -> SimConfig:
    return SimConfig(model=model, kind="chat", speed=speed, **kw)


def router_for(servers: list[SimServer], policy: str = "cache_aware", **config: Any) -> Router:
    entries = [WorkerEntry(s.config.model, s.url, s.config.kind) for s in servers]
    return Router(entries, config=RouterConfig.model_validate({"policy": policy, **config}))


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("policy", ["round_robin", "least_load", "cache_aware", "fastest"])
async def test_load_spreads_over_every_replica(policy: str) -> None:
    async with sims(chat(), chat(), chat()) as servers:
        client = AsyncModelServer({"m": [s.url for s in servers]}, policy=policy, probe=False)
        async with client:
            results = await asyncio.gather(
                *(
                    client.chat("m", messages(f"question {i} " * 30), max_tokens=16)
                    for i in range(60)
                )
            )
    counts = Counter(r.worker for r in results)
    # fastest sticks to one worker by design, but must have measured every one first.
    assert len(counts) == 3
    if policy != "fastest":
        assert min(counts.values()) >= 8, counts


@pytest.mark.parametrize("policy", ["least_load", "cache_aware"])
async def test_a_slow_worker_gets_clearly_less_traffic(policy: str) -> None:
    async with sims(chat(speed=TIMED), chat(speed=TIMED), chat(speed=TIMED * 0.3)) as servers:
        slow_url = servers[2].url
        client = AsyncModelServer({"m": [s.url for s in servers]}, policy=policy, probe=False)
        counts: Counter[str] = Counter()
        async with client:
            semaphore = asyncio.Semaphore(12)

            async def one(i: int) -> None:
                async with semaphore:
                    result = await client.chat("m", messages(f"unique {i} " * 20), max_tokens=16)
                    counts[result.worker] += 1

            await asyncio.gather(*(one(i) for i in range(150)))
    fast_mean = (sum(counts.values()) - counts[slow_url]) / 2
    assert counts[slow_url] < 0.6 * fast_mean, counts


async def test_conversations_stick_to_their_worker_while_load_stays_balanced() -> None:
    async with sims(chat(), chat(), chat()) as servers:
        client = AsyncModelServer({"m": [s.url for s in servers]}, probe=False)  # cache_aware
        conversations = {
            f"c{i}": [{"role": "system", "content": f"You are assistant number {i}. " * 20}]
            for i in range(9)
        }
        homes: dict[str, set[str]] = {name: set() for name in conversations}
        cached_later = 0
        async with client:
            for turn in range(4):
                for convo in conversations.values():
                    convo.append({"role": "user", "content": f"turn {turn} question " * 5})
                results = await asyncio.gather(
                    *(client.chat("m", convo, max_tokens=12) for convo in conversations.values())
                )
                for (name, convo), result in zip(conversations.items(), results, strict=True):
                    homes[name].add(result.worker)
                    convo.append({"role": "assistant", "content": result.text})
                    if turn > 0:
                        cached_later += result.usage.cached_tokens > 0
    assert all(len(urls) == 1 for urls in homes.values()), homes
    per_worker = Counter(next(iter(urls)) for urls in homes.values())
    assert len(per_worker) == 3 and max(per_worker.values()) <= 5, per_worker
    assert cached_later == 27  # every later turn found its prefix in the engine's cache


@pytest.mark.parametrize("how", ["crash-after=4", "refuse", "stop"])
async def test_a_worker_killed_mid_run_loses_no_request(how: str) -> None:
    async with sims(chat(speed=20), chat(speed=20), chat(speed=20)) as servers:
        victim = servers[0]
        if how.startswith("crash"):
            await victim.set_faults(how)
        client = AsyncModelServer(
            {"m": [s.url for s in servers]}, policy="round_robin", probe=False
        )
        async with client:
            tasks = [
                asyncio.create_task(client.chat("m", messages(f"q{i}"), max_tokens=32))
                for i in range(45)
            ]
            if not how.startswith("crash"):
                await wait_until(
                    lambda: client.router.worker(victim.url).in_flight > 0, "requests on the victim"
                )
                if how == "refuse":
                    await victim.set_faults("refuse")
                else:
                    await victim.stop()
            results = await asyncio.gather(*tasks)
    assert len(results) == 45 and all(r.text for r in results)


async def test_a_hung_worker_is_abandoned_and_the_request_succeeds_elsewhere() -> None:
    async with sims(chat(faults="hang"), chat()) as servers:
        recorder = Recorder()
        router = router_for(servers, "round_robin", attempt_timeout_s=0.5)
        router.add_observer(recorder)
        async with router:
            body = {"model": "m", "messages": messages("hi"), "max_tokens": 8}
            responses = [await router.forward("m", "/v1/chat/completions", body) for _ in range(4)]
    assert all(r.worker == servers[1].url for r in responses)
    assert responses[0].attempts == 2  # first try went to the hung worker, then elsewhere
    hung = [r for r in recorder.results if r.worker == servers[0].url]
    assert hung and all(not r.ok and r.status is None for r in hung)


async def test_a_503_worker_is_opened_by_the_breaker_then_readmitted() -> None:
    async with sims(chat(faults="error-rate=1.0:503"), chat()) as servers:
        bad_url = servers[0].url
        router = router_for(
            servers,
            "round_robin",
            breaker={"failure_threshold": 3, "cooldown_s": 0.2, "success_threshold": 2},
        )
        body = {"model": "m", "messages": messages("hi"), "max_tokens": 4}
        async with router:
            bad = router.worker(bad_url)
            while bad.breaker.state is not BreakerState.OPEN:
                response = await router.forward("m", "/v1/chat/completions", body)
                assert response.worker == servers[1].url
            assert bad.errors == 3
            await servers[0].set_faults("")  # the engine recovers

            async def traffic_until_closed() -> None:
                while bad.breaker.state is not BreakerState.CLOSED:
                    await router.forward("m", "/v1/chat/completions", body)
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(traffic_until_closed(), 20)
            served_before = bad.requests
            for _ in range(4):
                await router.forward("m", "/v1/chat/completions", body)
            assert bad.requests > served_before  # back in rotation


async def test_a_400_is_not_retried() -> None:
    async with sims(chat(), chat()) as servers:
        recorder = Recorder()
        router = router_for(servers, "round_robin")
        router.add_observer(recorder)
        body = {"model": "m", "messages": messages("hi"), "max_tokens": 10_000_000}
        async with router:
            with pytest.raises(EngineRejected) as caught:
                await router.forward("m", "/v1/chat/completions", body)
    assert caught.value.status == 400
    assert "maximum context length" in str(caught.value)
    assert len(recorder.attempts) == 1


async def test_embeddings_route_to_embedding_workers_only() -> None:
    async with sims(
        chat(),
        chat(),
        SimConfig(model="emb", kind="embedding", speed=FAST),
        SimConfig(model="emb", kind="embedding", speed=FAST),
    ) as servers:
        embedding_urls = {s.url for s in servers[2:]}
        fleet = {
            "m": [s.url for s in servers[:2]],
            "emb": {"kind": "embedding", "urls": sorted(embedding_urls)},
        }
        recorder = Recorder()
        async with AsyncModelServer(fleet, probe=False, observers=[recorder]) as client:
            vectors = await asyncio.gather(
                *(client.embed("emb", [f"text {i}", f"other {i}"]) for i in range(20))
            )
    assert all(len(v) == 2 and len(v[0]) > 0 for v in vectors)
    assert {r.worker for r in recorder.results} == embedding_urls


def test_sync_client_from_16_threads_at_once() -> None:
    with SimThread(chat()) as first, SimThread(chat()) as second:
        urls = [first.url, second.url]
        with ModelServer({"m": urls}, policy="least_load") as client:
            with ThreadPoolExecutor(16) as pool:
                results = list(
                    pool.map(lambda i: client.chat("m", messages(f"t{i}"), max_tokens=8), range(96))
                )
            assert client.get_completion_or_embedding("m", "seed style", max_tokens=4)
    assert len(results) == 96 and all(r.text for r in results)
    assert {r.worker for r in results} == set(urls)


async def test_fleet_file_client_records_a_model_down_and_back(tmp_path: Path) -> None:
    async with sims(chat()) as servers:
        sim = servers[0]
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(
            f"""
[fleet]
state_dir = "state"

[[hosts]]
name = "local"
gpus = "none"

[[models]]
name = "m"
backend = "sim"
port = {sim.port}

[router.breaker]
failure_threshold = 1
cooldown_s = 0.1
success_threshold = 1
"""
        )
        availability = tmp_path / "state" / "availability.json"
        async with AsyncModelServer(fleet, probe=False) as client:
            assert (await client.chat("m", "hi", max_tokens=4)).worker_url == sim.url
            await sim.set_faults("refuse")
            with pytest.raises(NoHealthyWorker) as caught:
                await client.chat("m", "hi", max_tokens=4)
            assert "circuit open" in caught.value.reasons[sim.url]
            record = orjson.loads(availability.read_bytes())
            assert record["m"]["available"] is False and sim.url in record["m"]["reasons"]
            await sim.set_faults("")  # listening again on the same port

            async def until_served() -> None:
                while True:
                    with contextlib.suppress(NoHealthyWorker):
                        await client.chat("m", "hi", max_tokens=4)
                        return
                    await asyncio.sleep(0.05)  # the breaker's cool-down, then a trial

            await asyncio.wait_for(until_served(), 20)
            assert orjson.loads(availability.read_bytes())["m"]["available"] is True


async def test_stream_from_a_real_engine_fails_over_before_its_first_piece() -> None:
    async with sims(chat(faults="refuse"), chat()) as servers:
        recorder = Recorder()
        client = AsyncModelServer(
            {"m": [s.url for s in servers]},
            policy="round_robin",
            probe=False,
            observers=[recorder],
        )
        async with client:
            pieces = [p async for p in client.stream("m", "tell me a story", max_tokens=24)]
            again = [p async for p in client.stream("m", "tell me a story", max_tokens=24)]
    assert pieces and again and all(isinstance(p, str) for p in pieces)
    # Each stream: refused before any chunk reached the caller, then served elsewhere.
    assert [(r.worker == servers[0].url, r.ok) for r in recorder.results] == [
        (True, False),
        (False, True),
    ] * 2
