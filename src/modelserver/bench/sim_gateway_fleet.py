"""Two (or more) `modelserver sim` engines and one router process in front of them, as the
mixed-tenants benchmark (`bench/mixed_tenants.py`) and the gateway's shared-fleet tests run
them. Every process starts in its own session and is always stopped (SIGTERM, a wait, then
SIGKILL), its log closed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import aiohttp

from modelserver.bench.procs import spawn, stop_group

HOST = "127.0.0.1"


async def wait_healthy(http: aiohttp.ClientSession, url: str, timeout_s: float = 60.0) -> None:
    """Poll `url`/health until it answers 200; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/health") as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy in {timeout_s} s")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def sims_behind_router(
    http: aiohttp.ClientSession,
    workdir: Path,
    router_argv: list[str],
    *,
    model: str,
    port: int,
    router_port: int,
    slots: int,
    speed: float,
    engine_priority: bool,
    replicas: int = 2,
    log_prefix: str = "",
) -> AsyncIterator[list[str]]:
    """Start `replicas` sims on `port`, `port + 1`, ... (seeds 0, 1, ...; SGLang's priority
    scheduling on if `engine_priority`), wait for them, then start `router_argv` (listening
    on `router_port`) and wait for it; yields the engines' URLs. Logs go to
    `workdir/{log_prefix}sim-{i}.log` and `workdir/{log_prefix}gateway.log`."""
    procs = []
    logs: list[IO[bytes] | None] = []
    try:
        for replica in range(replicas):
            argv = [sys.executable, "-m", "modelserver", "sim", "--port", str(port + replica),
                    "--model", model, "--max-running", str(slots), "--speed", str(speed),
                    "--seed", str(replica)]
            if engine_priority:
                argv.append("--enable-priority-scheduling")
            proc, log = spawn(argv, workdir / f"{log_prefix}sim-{replica}.log")
            procs.append(proc)
            logs.append(log)
        engines = [f"http://{HOST}:{port + i}" for i in range(replicas)]
        for url in engines:
            await wait_healthy(http, url)
        proc, log = spawn(router_argv, workdir / f"{log_prefix}gateway.log")
        procs.append(proc)
        logs.append(log)
        await wait_healthy(http, f"http://{HOST}:{router_port}")
        yield engines
    finally:
        for proc in procs:
            await stop_group(proc)
        for log in logs:
            if log is not None:
                log.close()
