"""The gateway's Prometheus metrics: what counts against a worker, and the dashboard's queries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import orjson

from modelserver.config import RouterConfig
from modelserver.gateway import GatewayServer
from modelserver.gateway.app import METRICS_KEY
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router
from tests.gateway.conftest import API_KEY, Stack
from tests.waiting import wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana-dashboard.json"


async def scrape(http: aiohttp.ClientSession, stack: Stack) -> str:
    async with http.get(stack.gateway.url + "/metrics") as response:
        return await response.text()


def errors_by_outcome(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for labels, value in re.findall(
        r"^modelserver_request_errors_total\{(.*?)\} (\S+)$", text, re.MULTILINE
    ):
        outcome = re.search(r'outcome="(\w+)"', labels)
        assert outcome is not None, labels
        counts[outcome.group(1)] = counts.get(outcome.group(1), 0.0) + float(value)
    return counts


async def test_errors_say_whether_the_worker_failed_the_engine_refused_or_the_caller_left(
    stack: Stack,
) -> None:
    async with aiohttp.ClientSession() as http:
        # The engine refuses a request that is wrong: not the worker's fault.
        bad = orjson.dumps({"model": "chat", "messages": "not a list"})
        async with http.post(stack.base_url + "/chat/completions", data=bad, headers=AUTH) as r:
            assert 400 <= r.status < 500
        assert errors_by_outcome(await scrape(http, stack)) == {"engine_rejected": 1.0}

        # The caller leaves a stream: not the worker's fault either.
        long = orjson.dumps({"model": "chat", "prompt": "go", "max_tokens": 20_000, "stream": True})
        async with http.post(stack.base_url + "/completions", data=long, headers=AUTH) as r:
            assert r.status == 200
            await r.content.readline()
            r.close()

        metrics = stack.gateway.app[METRICS_KEY]
        await wait_until(
            lambda: "caller_cancelled" in errors_by_outcome(metrics.exposition().decode()),
            "the left stream counted as caller_cancelled",
        )

        counts = errors_by_outcome(await scrape(http, stack))
    assert counts == {"engine_rejected": 1.0, "caller_cancelled": 1.0}
    assert all(w.errors == 0 for w in stack.gateway.router.workers())


async def test_a_worker_that_fails_counts_as_a_worker_failure() -> None:
    broken, sound = "http://127.0.0.1:9", "http://127.0.0.1:10"

    def engine(request: MockRequest) -> MockResponse:
        if request.method == "POST" and request.worker == broken:
            return MockResponse(status=500, json={"error": {"message": "boom"}})
        return MockResponse(json={"choices": [{"text": "ok"}]})

    config = RouterConfig(policy="round_robin")
    router = Router.from_mapping(
        {"m": [broken, sound]}, transport=MockTransport(engine), config=config
    )
    ok = orjson.dumps({"model": "m", "prompt": "hi"})
    async with (
        GatewayServer(router, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):  # round robin: one of these tries the broken worker first
            async with http.post(gateway.url + "/v1/completions", data=ok) as r:
                assert r.status == 200
        async with http.get(gateway.url + "/metrics") as response:
            counts = errors_by_outcome(await response.text())
        failures = router.worker(broken).errors
    assert failures >= 1
    assert counts == {"worker_failure": float(failures)}  # what its circuit breaker counted


async def test_the_dashboard_reads_only_metrics_and_labels_the_gateway_exports(
    stack: Stack,
) -> None:
    async with aiohttp.ClientSession() as http:
        # A series exists once counted: a stream (latency) and a refused request (errors).
        ok = orjson.dumps({"model": "chat", "prompt": "hi", "max_tokens": 2, "stream": True})
        bad = orjson.dumps({"model": "chat", "messages": "not a list"})
        for path, body in (("/completions", ok), ("/chat/completions", bad)):
            async with http.post(stack.base_url + path, data=body, headers=AUTH) as r:
                await r.read()
        text = await scrape(http, stack)
    exported: dict[str, set[str]] = {}
    for match in re.finditer(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE):
        name, kind = match.groups()
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(kind, [""]):
            exported[name + suffix if not name.endswith(suffix) else name] = set()
    for labels_of, labels in re.findall(r"^(\w+)\{(.*?)\} ", text, re.MULTILINE):
        exported.setdefault(labels_of, set()).update(re.findall(r'(\w+)="', labels))

    queries = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", [])
    ]
    assert queries
    for query in queries:
        for name, matchers in re.findall(r"(modelserver_\w+)(?:\{(.*?)\})?", query):
            assert name in exported, (name, query)
            for label in re.findall(r"(\w+)\s*!?=~?", matchers):
                assert label in exported[name], (label, name, query)
