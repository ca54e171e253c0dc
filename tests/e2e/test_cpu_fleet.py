"""The whole job on a real engine: `examples/cpu.toml` (llama.cpp workers on this CPU) up,
used through the client and through the gateway with the `openai` SDK, a worker killed and
restarted under load, and `down` leaving nothing running.

The tests share one fleet (module scope) and run in the order written: the last one takes
the fleet down. Every wait is on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import time
from collections.abc import Sequence

import openai

from modelserver import AsyncModelServer, ModelServer, load_fleet
from modelserver.client import Completion
from modelserver.config import BreakerConfig, HealthConfig
from modelserver.errors import ModelServerError
from modelserver.gateway import GatewayServer
from modelserver.routing.events import AttemptResult, RouterObserver
from tests.waiting import wait_until

from .conftest import CpuFleet, marked_processes, running

MINILM_DIM = 384  # all-MiniLM-L6-v2's sentence embedding size
TRIPLES = [  # (sentence, its paraphrase, an unrelated sentence)
    ("A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."),
    (
        "How do I reset my password?",
        "I forgot my password; how can I change it?",
        "It is sunny in Paris this afternoon.",
    ),
    (
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates.",
    ),
]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


class VictimFailures(RouterObserver):
    """Failed attempts on one worker, and the retries that followed them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.killed_at: float | None = None
        self.failed = 0
        self.retried = 0
        self.first_failed_started_before_kill: bool | None = None

    def on_result(self, result: AttemptResult) -> None:
        if result.worker == self.url and not result.ok:
            self.failed += 1
            if self.first_failed_started_before_kill is None and self.killed_at is not None:
                started = time.monotonic() - result.e2e_s
                self.first_failed_started_before_kill = started < self.killed_at

    def on_retry(
        self, model: str, failed_worker: str, error: str, next_attempt: int, backoff_s: float
    ) -> None:
        if failed_worker == self.url:
            self.retried += 1


def urls(fleet: CpuFleet, model: str) -> set[str]:
    return {w["url"] for w in fleet.state()["workers"] if w["model"] == model}


def test_up_detach_starts_every_llamacpp_worker_of_the_example(cpu_fleet: CpuFleet) -> None:
    rows = cpu_fleet.status()
    assert sorted(r["name"] for r in rows) == [
        "minilm-0@local", "minilm-1@local", "tiny-chat-0@local", "tiny-chat-1@local",
    ]
    for row in rows:
        assert row["backend"] == "llamacpp"
        assert row["status"] == "ready" and row["restarts"] == 0, row
        assert running(row["pid"])
    assert running(cpu_fleet.state()["supervisor"]["pid"])


def test_client_gets_chat_stream_and_embeddings_from_real_workers(cpu_fleet: CpuFleet) -> None:
    chat_urls = urls(cpu_fleet, "tiny-chat")
    with ModelServer(cpu_fleet.path) as ms:
        answer = ms.chat("tiny-chat", "Hello, who are you?", max_tokens=12)
        pieces = list(ms.stream("tiny-chat", "Tell me a story about the sea.", max_tokens=12))
        vectors = ms.embed("minilm", ["a first sentence", "a second one"])
    # Random weights: the words mean nothing, but a real engine produced them.
    assert answer.text and answer.worker_url in chat_urls
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    assert len(pieces) >= 2 and "".join(pieces)
    assert [len(v) for v in vectors] == [MINILM_DIM, MINILM_DIM]


async def test_openai_sdk_through_the_gateway_gets_chat_stream_and_embeddings(
    cpu_fleet: CpuFleet,
) -> None:
    fleet = load_fleet(cpu_fleet.path)
    async with (
        GatewayServer.from_fleet(fleet, port=0, environ={}) as gateway,
        openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0) as sdk,
    ):
        raw = await sdk.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "Hi there"}], max_tokens=10
        )
        reply = raw.parse()
        stream = await sdk.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "Write a long poem"}],
            max_tokens=10,
            stream=True,
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        embedded = await sdk.embeddings.create(model="minilm", input=["one text", "another"])
        listed = await sdk.models.list()
    assert raw.headers["x-modelserver-worker"] in urls(cpu_fleet, "tiny-chat")
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert len([p for p in pieces if p]) >= 2
    assert [len(d.embedding) for d in embedded.data] == [MINILM_DIM, MINILM_DIM]
    assert {m.id for m in listed.data} == {"tiny-chat", "minilm"}


def test_real_embeddings_put_a_paraphrase_closer_than_an_unrelated_sentence(
    cpu_fleet: CpuFleet,
) -> None:
    with ModelServer(cpu_fleet.path) as ms:
        for sentence, paraphrase, unrelated in TRIPLES:
            a, p, u = ms.embed("minilm", [sentence, paraphrase, unrelated])
            near, far = cosine(a, p), cosine(a, u)
            assert near > far, (sentence, near, far)
            assert near > 0.5 > far, (sentence, near, far)


async def test_a_worker_killed_with_sigkill_restarts_while_every_request_succeeds(
    cpu_fleet: CpuFleet,
) -> None:
    victim = next(row for row in cpu_fleet.status() if row["name"] == "tiny-chat-0@local")
    # The fleet's router settings, with quicker probes and a short breaker cooldown so the
    # restarted worker is back in rotation within the test.
    config = load_fleet(cpu_fleet.path).router.model_copy(
        update={"breaker": BreakerConfig(cooldown_s=1.0), "health": HealthConfig(interval_s=0.5)}
    )
    results: list[Completion | ModelServerError] = []
    stop = asyncio.Event()
    victim_failures = VictimFailures(victim["url"])

    async with AsyncModelServer(cpu_fleet.path, config=config) as ms:
        ms.router.add_observer(victim_failures)

        async def user(index: int) -> None:
            turn = 0
            while not stop.is_set():
                question = f"User {index}, question {turn}: tell me about rivers and the sea."
                try:
                    results.append(await ms.chat("tiny-chat", question, max_tokens=48))
                except ModelServerError as exc:
                    results.append(exc)
                turn += 1

        def in_flight_on_victim() -> int:
            return next(w.in_flight for w in ms.workers("tiny-chat") if w.url == victim["url"])

        users = [asyncio.create_task(user(i)) for i in range(6)]
        try:
            await wait_until(lambda: in_flight_on_victim() > 0, "a request in flight on the victim")
            victim_failures.killed_at = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)  # while that request is in flight
            answered_before_kill = len(results)

            def restarted() -> bool:
                now = cpu_fleet.worker(victim["name"])
                return now["status"] == "ready" and now["restarts"] == 1

            await wait_until(restarted, "the supervisor to restart the killed worker", 60)
            restarted_at = len(results)
            await wait_until(
                lambda: any(
                    isinstance(r, Completion) and r.worker_url == victim["url"]
                    for r in results[restarted_at:]
                ),
                "the restarted worker to serve again",
                60,
            )
        finally:
            stop.set()
            await asyncio.gather(*users)

    failures = [r for r in results if isinstance(r, ModelServerError)]
    assert not failures, failures[:3]
    # Failover, not luck: attempts did fail on the killed worker (the one in flight at the
    # kill among them), and the router retried each elsewhere, since every request succeeded.
    assert victim_failures.failed >= 1, "no attempt failed on the killed worker"
    assert victim_failures.retried == victim_failures.failed, vars(victim_failures)
    assert victim_failures.first_failed_started_before_kill, vars(victim_failures)
    assert restarted_at > answered_before_kill  # answered while the victim was down
    after = cpu_fleet.worker(victim["name"])
    assert after["pid"] != victim["pid"] and running(after["pid"])
    assert after["last_error"] == "killed by SIGKILL"
    assert not running(victim["pid"])


def test_down_leaves_no_process_running_and_no_port_open(cpu_fleet: CpuFleet) -> None:
    cpu_fleet.status()
    assert len(cpu_fleet.seen) >= 6  # the supervisor, four workers, and the restarted one
    assert marked_processes(cpu_fleet.state_file)  # the check below can see engines
    ports = [w.port for w in load_fleet(cpu_fleet.path).workers()]
    assert all(listening(port) for port in ports)
    down = cpu_fleet.run("down", str(cpu_fleet.path))
    assert down.returncode == 0, down.stderr
    # Every process the state file named (same pid and start time), and any process carrying
    # this fleet's state-file mark, recorded or not.
    still = cpu_fleet.still_running()
    assert not still, f"still running after down: {[p.pid for p in still]}"
    assert not [port for port in ports if listening(port)]
    state = cpu_fleet.state()
    assert state["supervisor"] is None
    assert {w["status"] for w in state["workers"]} == {"stopped"}


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
