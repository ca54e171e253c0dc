"""How many requests per second simulated engines sustain on this machine.

Starts N `modelserver sim` processes (each its own process, as the launcher runs them) at a
high --speed, so the simulated GPU is never the bottleneck and what is measured is the
simulator's own CPU cost, then drives them with a closed loop of concurrent chat requests
(a shared system prompt plus a distinct question, so the prefix cache works) for a while,
and prints requests/s in total and per engine.

    .venv/bin/python bench/sim_throughput.py --sims 8 --speed 1000 --seconds 20

The load generator runs on the same cores, so the figure is a floor for the sims alone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time

import aiohttp

from modelserver.netinfo import free_port_range


async def wait_healthy(session: aiohttp.ClientSession, url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never became healthy")


async def drive(urls: list[str], concurrency: int, seconds: float, max_tokens: int) -> None:
    system = "You are a helpful assistant that answers briefly and precisely. " * 8
    counter = itertools.count()
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls:
            await wait_healthy(session, url, time.monotonic() + 30)
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < end:
                n = next(counter)
                url = urls[n % len(urls)]
                body = {
                    "model": "sim",
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"Question {n}: what is {n} squared?"},
                    ],
                    "max_tokens": max_tokens,
                }
                try:
                    async with session.post(url + "/v1/chat/completions", json=body) as reply:
                        await reply.read()
                        if reply.status == 200:
                            done += 1
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    rate = done / elapsed
    print(
        f"{len(urls)} sims, concurrency {concurrency}, max_tokens {max_tokens}: "
        f"{done} requests in {elapsed:.1f} s = {rate:.0f} req/s "
        f"({rate / len(urls):.0f} per sim), {errors} errors"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=8)
    parser.add_argument("--speed", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    ports = [free_port_range() for _ in range(args.sims)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelserver",
                "sim",
                "--port",
                str(port),
                "--model",
                "sim",
                "--speed",
                str(args.speed),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        for port in ports
    ]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        asyncio.run(drive(urls, args.concurrency, args.seconds, args.max_tokens))
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
