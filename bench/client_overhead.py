"""Client CPU per routed request: how much CPU the client process spends per request.

The engines run in OTHER processes (a minimal answer-at-once engine by default, or
`modelserver sim` processes), so their work is excluded; the client process's CPU time
(time.process_time: user + system, all threads) is divided by the number of requests.
Three clients side by side, same engines, same requests:

  raw-aiohttp    one aiohttp session posting the same JSON straight to the engines
                 (the floor: HTTP + JSON, no routing)
  router         AsyncModelServer.chat(): routing policy, breaker, EWMA, retries, result
  forward        Router.forward() with a bytes body (the gateway's pass-through path)
  routing-only   AsyncModelServer.chat() on a MockTransport that answers at once: the
                 routing layer's own CPU, no sockets (printed once, concurrency 1)

Usage:
  .venv/bin/python bench/client_overhead.py [--engine minimal|sim] [--engines 2]
      [--requests 3000] [--concurrency 1,8,32,128] [--policy cache_aware]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 41,
            "completion_tokens": 9,
            "total_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 32},
        },
    }
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. " * 8},
    {"role": "user", "content": "Say hello in one short sentence."},
]


# -- the minimal engine (runs in its own process) --------------------------------------------


def serve_minimal() -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_engines(kind: str, count: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    for _ in range(count):
        if kind == "minimal":
            proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
        else:
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            exe = os.path.join(os.path.dirname(sys.executable), "modelserver")
            proc = subprocess.Popen(
                [exe, "sim", "--port", str(port), "--model", "m", "--speed", "1000"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_ready(f"http://127.0.0.1:{port}")
        processes.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    return processes, urls


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"engine at {url} did not come up")


# -- the clients -------------------------------------------------------------------------------


async def run_batch(
    call: Callable[[int], Awaitable[Any]], requests: int, concurrency: int
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the client process for `requests` calls."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await call(i)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def measure(
    urls: list[str], requests: int, concurrencies: list[int], policy: str
) -> list[dict[str, Any]]:
    from modelserver import AsyncModelServer

    rows: list[dict[str, Any]] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    client = AsyncModelServer({"m": urls}, policy=policy, probe=False)
    router = client.router
    body = orjson.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 16})

    async def raw(i: int) -> None:
        async with session.post(
            urls[i % len(urls)] + "/v1/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        ) as response:
            orjson.loads(await response.read())

    async def routed(i: int) -> None:
        await client.chat("m", MESSAGES, max_tokens=16)

    async def forward(i: int) -> None:
        await router.forward("m", "/v1/chat/completions", body)

    clients = {"raw-aiohttp": raw, "router": routed, "forward": forward}
    for call in clients.values():  # warm up connections, caches, EWMAs
        await run_batch(call, 300, 16)
    for concurrency in concurrencies:
        for name, call in clients.items():
            cpu, wall = await run_batch(call, requests, concurrency)
            rows.append(
                {
                    "client": name,
                    "concurrency": concurrency,
                    "cpu_ms_per_request": cpu / requests * 1000,
                    "requests_per_s": requests / wall,
                }
            )
    await client.close()
    await session.close()
    rows.append(await routing_only(requests, policy))
    return rows


async def routing_only(requests: int, policy: str) -> dict[str, Any]:
    from modelserver import AsyncModelServer
    from modelserver.routing import MockResponse, MockTransport

    answer = MockResponse(body=ANSWER)
    client = AsyncModelServer(
        {"m": ["http://a:1", "http://b:2"]},
        policy=policy,
        probe=False,
        transport=MockTransport(lambda request: answer),
    )
    transport = client.router.transport
    assert isinstance(transport, MockTransport)
    for _ in range(300):
        await client.chat("m", MESSAGES, max_tokens=16)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(requests):
        await client.chat("m", MESSAGES, max_tokens=16)
        transport.requests.clear()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await client.close()
    return {
        "client": "routing-only (mock transport)",
        "concurrency": 1,
        "cpu_ms_per_request": cpu / requests * 1000,
        "requests_per_s": requests / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=["minimal", "sim"], default="minimal")
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--policy", default="cache_aware")
    parser.add_argument("--profile", action="store_true", help="cProfile the router client")
    args = parser.parse_args()
    if args.serve:
        serve_minimal()
        return
    processes, urls = start_engines(args.engine, args.engines)
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        rows = asyncio.run(measure(urls, args.requests, concurrencies, args.policy))
        if args.profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=10)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, engine={args.engine} x{args.engines},"
        f" policy={args.policy}, {args.requests} requests per cell"
    )
    print("| client | concurrency | client CPU per request | requests/s |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['client']} | {row['concurrency']} | {row['cpu_ms_per_request']:.3f} ms"
            f" | {row['requests_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
