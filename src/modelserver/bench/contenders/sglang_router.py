"""SGLang's router (the `sglang-router` wheel) as a real process in front of the engines.

Started as `python -m sglang_router.launch_router --host 127.0.0.1 --port P --worker-urls
URL... --policy cache_aware|power_of_two` (flags as `launch_router --help` lists them in
sglang-router 0.3.2). Everything that decides routing, retries, circuit breaking and health
is left at the wheel's defaults, as a user would run it; only what must differ on a shared
machine or in this benchmark is set: its own Prometheus port on 127.0.0.1, warn-level logs,
a 1 s worker start-up check interval (the default 30 s only delays the start), and its
request timeout set to the benchmark's per-attempt timeout, as every contender's is. It
learns each worker's `model_path` from `/model_info` and tries to load a tokenizer from
there; the simulated engines report a local directory, so it never reaches for a model hub.

The router process's CPU time counts as this contender's client-side CPU.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import aiohttp

from modelserver.bench.contenders.base import Contender, Target
from modelserver.bench.fleet import HOST, free_port
from modelserver.bench.openai_http import chat_body, client_session, post_chat, post_embedding
from modelserver.bench.outcome import Outcome
from modelserver.bench.procs import spawn, stop_group
from modelserver.errors import BenchError

POLICIES = ("cache_aware", "power_of_two", "round_robin", "random")


def router_command(policy: str, port: int, metrics_port: int, urls: list[str],
                   attempt_timeout_s: float) -> list[str]:
    return [sys.executable, "-m", "sglang_router.launch_router",
            *router_arguments(policy, port, metrics_port, urls, attempt_timeout_s)]


def router_arguments(policy: str, port: int, metrics_port: int, urls: list[str],
                     attempt_timeout_s: float) -> list[str]:
    """The flags SGLang's router and SMG (`smg launch`, its successor) both take."""
    return [
        "--host", HOST, "--port", str(port),
        "--worker-urls", *urls,
        "--policy", policy,
        "--prometheus-host", HOST, "--prometheus-port", str(metrics_port),
        "--worker-startup-check-interval", "1",
        "--request-timeout-secs", str(max(1, round(attempt_timeout_s))),
        "--log-level", "warn",
    ]


class SglangRouterContender(Contender):
    family = "sglang"
    policies: tuple[str, ...] = POLICIES
    label = "sglang router"

    def __init__(self, policy: str, log_dir: Path | None = None,
                 ready_timeout_s: float = 60.0) -> None:
        if policy not in self.policies:
            raise BenchError(f"{self.label} policy {policy!r} unknown; "
                             f"valid: {', '.join(self.policies)}")
        self.policy = policy
        self.name = f"{self.family}:{policy}"
        self.log_dir = log_dir
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self._target: Target | None = None

    async def start(self, target: Target) -> None:
        self._target = target
        port = free_port()
        cmd = self.command(port, free_port(), list(target.urls), target.attempt_timeout_s)
        log = (self.log_dir / f"{self.family}-{self.policy}.log"
               if self.log_dir is not None else None)
        self._process, self._log = spawn(cmd, log)
        self._base = f"http://{HOST}:{port}"
        self._session = client_session()
        try:
            await self._wait_ready(len(target.urls))
        except BaseException:
            await self.stop()
            raise

    def command(self, port: int, metrics_port: int, urls: list[str],
                attempt_timeout_s: float) -> list[str]:
        return router_command(self.policy, port, metrics_port, urls, attempt_timeout_s)

    async def _wait_ready(self, workers: int) -> None:
        """Up when `/workers` lists every worker (its `/health` answers before that)."""
        assert self._session is not None and self._process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"{self.label} exited with {self._process.returncode} "
                                 "while starting (see its log in the output directory)")
            try:
                async with self._session.get(f"{self._base}/workers",
                                             timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200 and _count_workers(await resp.json()) >= workers:
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.2)
        raise BenchError(f"{self.label} not ready after {self.ready_timeout_s:.0f} s")

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, stream: bool) -> Outcome:
        assert self._session is not None and self._target is not None
        body = chat_body(self._target.model, messages, max_tokens, stream)
        return await post_chat(self._session, self._base, body, self._target.request_timeout_s)

    async def embed(self, text: str) -> Outcome:
        assert self._session is not None and self._target is not None
        return await post_embedding(self._session, self._base, self._target.model, text,
                                    self._target.request_timeout_s)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._process is not None:
            await stop_group(self._process)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def external_pids(self) -> list[int]:
        return [self._process.pid] if self._process is not None else []


def _count_workers(data: object) -> int:
    if isinstance(data, dict):
        for key in ("workers", "urls"):
            value = data.get(key)
            if isinstance(value, list):
                return len(value)
        total = data.get("total")
        if isinstance(total, int):
            return total
    if isinstance(data, list):
        return len(data)
    return 0
