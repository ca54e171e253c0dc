"""A long run of mixed good and bad requests against `modelserver gateway` in its own process,
in rounds: after each round the gateway is back to the asyncio tasks it ran before any request
and to the file descriptors it had after the warm-up; over the rounds no type of object it
holds and not its allocated memory blocks grow; it never answers 500, and every kind of
request gets the answer it should.

The gateway runs as a subprocess (tests/reliability/probed_gateway.py: the command, plus a
probe that counts its tasks, gc-tracked objects by type and memory blocks on its own loop) so
what is measured is the gateway alone; the simulated engines run on threads of the test
process. The counts are exact, so one object kept per request stands out from the noise,
which RSS (allocator pages, fragmentation) cannot show: a task, a list or a small bytes
object kept per request each fail this test (tried by injecting them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import psutil
import pytest
import requests

from modelserver.netinfo import free_port_range
from modelserver.sim import SimConfig, SimThread
from tests.reliability.probed_gateway import PROBE_PREFIX
from tests.waiting import wait_until_sync

KEY = "sk-long-run-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WARM_UP = 600
ROUNDS = 5
ROUND = 600
CONCURRENCY = 16
MAX_BODY = 64 * 1024
LEAK_OBJECTS = 100
"""Growth of one type of object over the run that fails the test. The rarest kind of request
in the mix comes ~150 times over the rounds, so one object kept per request of any kind
exceeds it; an idle gateway's counts move by a few (see probed_gateway.py)."""
LEAK_BLOCKS = 1000
"""The same for allocated memory blocks: one small allocation kept per request (2/3 of the
mix reach the proxy code) exceeds it."""
RSS_BOUND = 48 * 1024 * 1024
"""A coarse backstop for leaks the counts cannot see (large buffers outside pymalloc)."""
PROBED_GATEWAY = Path(__file__).with_name("probed_gateway.py")


@dataclass
class Gateway:
    url: str
    port: int
    process: psutil.Process
    popen: subprocess.Popen[str]
    sims: list[SimThread]

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def fds(self) -> int:
        return int(self.process.num_fds())

    def probe(self) -> Probe:
        """The gateway's asyncio tasks and gc objects by type, counted inside it."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write("\n")
        self.popen.stdin.flush()
        while line := self.popen.stdout.readline():
            if line.startswith(PROBE_PREFIX):
                counts = orjson.loads(line.removeprefix(PROBE_PREFIX))
                return Probe(counts["tasks"], Counter(counts["objects"]), counts["blocks"])
        raise AssertionError("the gateway exited before answering the probe")


@dataclass
class Probe:
    tasks: int
    objects: Counter[str]
    """gc-tracked objects by type name."""
    blocks: int
    """Memory blocks allocated: also counts what gc does not track (bytes, str, numbers)."""

    def total(self) -> int:
        return sum(self.objects.values())



@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    sims = [
        SimThread(SimConfig(model="chat", speed=1000.0, seed=0)),
        SimThread(SimConfig(model="emb", kind="embedding", speed=1000.0)),
    ]
    started: list[SimThread] = []
    proc: subprocess.Popen[str] | None = None
    try:
        for sim in sims:
            started.append(sim.start())
        port = free_port_range()
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(f"""
[fleet]
state_dir = "{tmp_path / 'state'}"

[[hosts]]
name = "local"
address = "127.0.0.1"

[[models]]
name = "chat"
backend = "sim"
port = {sims[0].port}

[[models]]
name = "emb"
kind = "embedding"
backend = "sim"
port = {sims[1].port}

[router]
policy = "round_robin"
attempt_timeout_s = 10
request_timeout_s = 20

[gateway]
port = {port}
api_keys = ["{KEY}"]
max_body_bytes = {MAX_BODY}
""")
        with open(tmp_path / "gateway.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(PROBED_GATEWAY), str(fleet)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        url = f"http://127.0.0.1:{port}"
        wait_until_sync(lambda: _healthy(url, proc), "the gateway to answer /health", 60)
        yield Gateway(url, port, psutil.Process(proc.pid), proc, sims)
    finally:
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sim in started:
            sim.stop()


def _healthy(url: str, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, "the gateway exited"
    with contextlib.suppress(requests.RequestException):
        return requests.get(url + "/health", timeout=5).status_code == 200
    return False


# -- the mix -----------------------------------------------------------------------------------

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 4}
Kind = Callable[[aiohttp.ClientSession, Gateway], Awaitable[int]]


async def good_chat(http: aiohttp.ClientSession, gw: Gateway) -> int:
    async with http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as r:
        assert (await r.json())["choices"]
        return r.status


async def good_stream(http: aiohttp.ClientSession, gw: Gateway) -> int:
    async with http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                         headers=AUTH) as r:
        assert (await r.read()).endswith(b"data: [DONE]\n\n")
        return r.status


async def stream_left(http: aiohttp.ClientSession, gw: Gateway) -> int:
    body = {**CHAT, "stream": True, "max_tokens": 5000}
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
        await r.content.readline()
        status = r.status
        r.close()  # leave mid-stream: the connection is dropped, not reused
    return status


async def embed(http: aiohttp.ClientSession, gw: Gateway) -> int:
    body = {"model": "emb", "input": ["one text", "two texts"]}
    async with http.post(gw.url + "/v1/embeddings", json=body, headers=AUTH) as r:
        assert len((await r.json())["data"]) == 2
        return r.status


async def not_json(http: aiohttp.ClientSession, gw: Gateway) -> int:
    async with http.post(gw.url + "/v1/chat/completions", data=b"{oops", headers=AUTH) as r:
        await r.read()
        return r.status


async def unknown_model(http: aiohttp.ClientSession, gw: Gateway) -> int:
    async with http.post(gw.url + "/v1/completions", json={"model": "nope", "prompt": "x"},
                         headers=AUTH) as r:
        await r.read()
        return r.status


async def no_key(http: aiohttp.ClientSession, gw: Gateway) -> int:
    async with http.post(gw.url + "/v1/chat/completions", json=CHAT) as r:
        await r.read()
        return r.status


async def too_big(http: aiohttp.ClientSession, gw: Gateway) -> int:
    body = orjson.dumps({"model": "chat", "prompt": "x" * (MAX_BODY + 1)})
    async with http.post(gw.url + "/v1/completions", data=body, headers=AUTH) as r:
        await r.read()
        return r.status


async def cut_off(http: aiohttp.ClientSession, gw: Gateway) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Length: 500\r\n\r\n{{\"model\": ".encode()
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    return 499


MIX: list[tuple[Kind, int, int]] = [
    # (request, weight, expected status)
    (good_chat, 30, 200),
    (good_stream, 15, 200),
    (stream_left, 8, 200),
    (embed, 10, 200),
    (not_json, 8, 400),
    (unknown_model, 8, 404),
    (no_key, 8, 401),
    (too_big, 5, 413),
    (cut_off, 8, 499),
]


async def run_mix(gw: Gateway, count: int, rng: random.Random) -> Counter[str]:
    kinds = rng.choices(MIX, weights=[w for _, w, _ in MIX], k=count)
    outcome: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[Kind, int, int]] = asyncio.Queue()
    for kind, weight, expected in kinds:
        queue.put_nowait((kind, weight, expected))

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            kind, _, expected = queue.get_nowait()
            status = await kind(http, gw)
            assert status == expected, (kind.__name__, status)
            outcome[kind.__name__] += 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    return outcome


def gateway_answers(gw: Gateway) -> Counter[str]:
    text = requests.get(gw.url + "/metrics", timeout=30).text
    counts: Counter[str] = Counter()
    for labels, value in re.findall(
        r"^modelserver_gateway_responses_total\{(.*?)\} (\S+)$", text, re.MULTILINE
    ):
        code = re.search(r'code="(\d+)"', labels)
        assert code is not None
        counts[code.group(1)] += int(float(value))
    return counts


def test_rounds_of_mixed_requests_leave_no_task_object_or_file_descriptor_behind(
    gateway: Gateway,
) -> None:
    idle = gateway.probe()  # before any request: the tasks the gateway runs on its own
    rng = random.Random(8)
    asyncio.run(run_mix(gateway, WARM_UP, rng))
    settle(gateway, idle)
    before = gateway.probe()
    rss_before, fds_before = gateway.rss(), gateway.fds()

    outcome: Counter[str] = Counter()
    for _ in range(ROUNDS):
        outcome += asyncio.run(run_mix(gateway, ROUND, rng))
        settle(gateway, idle)
        # Engine connections are not kept alive here (see probed_gateway.py), and every
        # caller has gone: one descriptor kept over the whole run shows.
        wait_until_sync(lambda: gateway.fds() <= fds_before,
                        f"the gateway back to its {fds_before} open files")
    assert sum(outcome.values()) == ROUNDS * ROUND and len(outcome) == len(MIX)
    after = gateway.probe()

    rss_after, fds_after = gateway.rss(), gateway.fds()
    answers = gateway_answers(gateway)
    print(
        f"\nlong run: {WARM_UP} warm-up + {ROUNDS} x {ROUND} requests {dict(outcome)};"
        f" gateway answers by status {dict(sorted(answers.items()))};"
        f" gc objects {before.total()} -> {after.total()},"
        f" largest changes {biggest_changes(before.objects, after.objects)};"
        f" allocated blocks {before.blocks} -> {after.blocks} ({after.blocks - before.blocks:+});"
        f" RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
        f" ({(rss_after - rss_before) / 2**20:+.1f}); open fds {fds_before} -> {fds_after}"
    )
    assert "500" not in answers
    grown = {
        name: (before.objects[name], after.objects[name])
        for name in after.objects
        if after.objects[name] - before.objects[name] >= LEAK_OBJECTS
    }
    assert grown == {}, f"objects kept by the gateway across the run: {grown}"
    assert after.blocks - before.blocks < LEAK_BLOCKS
    assert rss_after - rss_before < RSS_BOUND
    assert os.getpid() != gateway.process.pid  # measured the gateway, not ourselves


def settle(gw: Gateway, idle: Probe) -> None:
    """Wait until the engines are idle and every task a request started has ended (the
    callers' connection handlers, the engine requests, the streams' relays): a leaked task
    never ends, and fails the test here."""
    wait_until_sync(lambda: _engines_idle(gw), "the engines idle after a round")
    wait_until_sync(lambda: gw.probe().tasks <= idle.tasks,
                    f"the gateway back to the {idle.tasks} asyncio tasks it ran before any request")


def biggest_changes(before: Counter[str], after: Counter[str], top: int = 5) -> dict[str, int]:
    changes = {name: after[name] - before[name] for name in set(before) | set(after)}
    largest = sorted(changes.items(), key=lambda item: -abs(item[1]))[:top]
    return {name: change for name, change in largest if change}


def _engines_idle(gw: Gateway) -> bool:
    return not any(sim.engine.running or sim.engine.queue for sim in gw.sims)
