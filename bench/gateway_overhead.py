"""Latency a router adds, and the throughput it sustains, in front of engines that answer at once.

    .venv/bin/python bench/gateway_overhead.py [--requests 6000] [--concurrency 64] [--json F]

Each engine is a separate process that answers every chat completion at once with a fixed
body, so what is measured is the router. The load generator is another process (this one):
a closed loop of `--concurrency` aiohttp requests. Contenders, one after the other, in front of
the same two engines:

- direct:          the load generator alternates between the engines itself (the floor);
- modelserver:     `modelserver gateway` (policy round_robin, as cache-aware bookkeeping is
                   measured by bench/client_overhead.py);
- smg:             SGLang's gateway today, `smg launch --policy round_robin` (smg 1.13.0);
- sglang-router:   `python -m sglang_router.launch_router --policy round_robin` (0.3.2, history);
- litellm-router:  LiteLLM's Router in the load generator's process (simple-shuffle), as
                   its users call it; its CPU is then the load generator's.

Added latency = contender's percentile - direct's percentile at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from modelserver.netinfo import free_port_range

ANSWER = orjson.dumps(
    {
        "id": "cmpl-instant",
        "object": "chat.completion",
        "created": 0,
        "model": "instant",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
)
INFO = orjson.dumps({"model_path": "instant", "tokenizer_path": "instant", "is_generation": True})
BODY = orjson.dumps(
    {"model": "instant", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
)


# -- the instant engine (runs in its own process) ---------------------------------------------


def serve_engine(port: int) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def info(request: web.Request) -> web.Response:
        return web.Response(body=INFO, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    for path in ("/model_info", "/get_model_info", "/server_info", "/get_server_info"):
        app.router.add_get(path, info)
    app.router.add_get("/health", health)
    app.router.add_get("/health_generate", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- helpers -----------------------------------------------------------------------------------




def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


async def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=BODY, headers=JSON) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


JSON = {"Content-Type": "application/json"}


# -- the load generator ------------------------------------------------------------------------


async def closed_loop(
    send: Callable[[int], Awaitable[None]], requests: int, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    counter = iter(range(requests))

    async def lane() -> None:
        nonlocal failures
        for index in counter:
            began = time.perf_counter()
            try:
                await send(index)
            except Exception:
                failures += 1
                continue
            latencies.append(time.perf_counter() - began)

    cpu0 = time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * latencies[int(0.90 * (len(latencies) - 1))],
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "load_generator_cpu_ms_per_request": 1000 * cpu / max(1, len(latencies)),
    }


async def http_contender(urls: list[str], requests: int, concurrency: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(index: int) -> None:
            url = urls[index % len(urls)]
            async with session.post(url, data=BODY, headers=JSON) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(response.status)

        await closed_loop(send, min(500, requests), concurrency)  # warm up
        return await closed_loop(send, requests, concurrency)


async def litellm_contender(engines: list[str], requests: int, concurrency: int) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # optional peer, imported only when measured

    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": "instant",
                "litellm_params": {
                    "model": "openai/instant",
                    "api_base": url + "/v1",
                    "api_key": "none",
                },
            }
            for url in engines
        ],
        routing_strategy="simple-shuffle",
        num_retries=0,
    )
    messages = [{"role": "user", "content": "ping"}]

    async def send(index: int) -> None:
        await router.acompletion(model="instant", messages=messages, max_tokens=1)

    await closed_loop(send, min(300, requests), concurrency)
    return await closed_loop(send, requests, concurrency)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    base = free_port_range(2)
    engines = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    processes = [
        start([sys.executable, __file__, "--engine", str(base + i)], workdir / f"engine{i}.log")
        for i in range(2)
    ]
    results: dict[str, Any] = {}
    try:
        for url in engines:
            await wait_http(url + "/v1/chat/completions")
        chat = [url + "/v1/chat/completions" for url in engines]
        results["direct"] = await http_contender(chat, args.requests, args.concurrency)

        gateway_port = free_port_range(2)
        fleet = workdir / "fleet.toml"
        fleet.write_text(
            f'[[hosts]]\nname = "local"\ngpus = "none"\n'
            f'[[models]]\nname = "instant"\nbackend = "sim"\nreplicas = 2\nport = {base}\n'
            f'[router]\npolicy = "round_robin"\n'
            f"[gateway]\nport = {gateway_port}\n"
        )
        contenders = {
            "modelserver": [sys.executable, "-m", "modelserver", "gateway", str(fleet)],
        }
        ports = {"modelserver": gateway_port}
        if not args.skip_smg:
            from modelserver.bench.contenders.smg_gateway import smg_program

            ports["smg"] = free_port_range(2)
            contenders["smg"] = [
                *smg_program(), "launch",
                "--host", "127.0.0.1", "--port", str(ports["smg"]),
                "--worker-urls", *engines,
                "--policy", "round_robin",
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(ports["smg"] + 1),
                "--log-level", "warn",
            ]
        if not args.skip_sglang:
            router_port = free_port_range(2)
            contenders["sglang-router"] = [
                sys.executable,
                "-m",
                "sglang_router.launch_router",
                "--host",
                "127.0.0.1",
                "--port",
                str(router_port),
                "--worker-urls",
                *engines,
                "--policy",
                "round_robin",
                "--log-level",
                "warn",
            ]
        if "sglang-router" in contenders:
            ports["sglang-router"] = router_port
        for name, argv in contenders.items():
            process = start(argv, workdir / f"{name}.log")
            try:
                url = f"http://127.0.0.1:{ports[name]}/v1/chat/completions"
                await wait_http(url)
                results[name] = await http_contender([url], args.requests, args.concurrency)
            finally:
                stop(process)
        if not args.skip_litellm:
            results["litellm-router"] = await litellm_contender(
                engines, args.requests, args.concurrency
            )
    finally:
        for process in processes:
            stop(process)
    floor = results["direct"]
    for figures in results.values():
        figures["added_p50_ms"] = figures["p50_ms"] - floor["p50_ms"]
        figures["added_p99_ms"] = figures["p99_ms"] - floor["p99_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-smg", action="store_true")
    parser.add_argument("--skip-sglang", action="store_true")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.engine:
        serve_engine(args.engine)
        return
    results = asyncio.run(run(args))
    print(f"{'contender':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50':>8}{'+p99':>8}")
    for name, f in results.items():
        print(
            f"{name:<16}{f['throughput_rps']:>9.0f}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}"
            f"{f['added_p50_ms']:>8.2f}{f['added_p99_ms']:>8.2f}"
        )
    if args.json:
        args.json.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
