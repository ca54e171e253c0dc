"""The `mixed` workload through a shared fleet: a batch flood and interactive chats.

    PYTHONPATH=src .venv/bin/python bench/mixed_tenants.py [--flood 96] [--seconds 30]
        [--speed 1.0] [--json F]

Two simulated engines (`modelserver sim`, 4 running slots each) behind one
`modelserver gateway` process. The batch tenant runs `--flood` closed-loop callers (the
`mixed` workload's batch sessions, 128 output tokens, not streamed); once the flood has
filled the fleet, the interactive tenant sends one streamed chat a second (the workload's
interactive sessions, 16 output tokens) for `--seconds`. Reported: the interactive chats'
time to first token (p50, p99) and the batch goodput (completed batch requests and output
tokens per second) over the same window; and the interactive TTFT with no flood at all.

Contenders, each on fresh engines:

- ours:            tenants in the fleet file (lab interactive, eval batch): the router's
                   admission queue (batch fills each engine's cap, an interactive request
                   may go one past it, `reserved_where = "above_cap"`, what `auto` picks
                   for these engines; fair queueing) and
                   SGLang's `priority` passed to engines started with
                   `--enable-priority-scheduling`, which preempt a batch request for it;
- ours-below-cap:  the same with `reserved_where = "below_cap"` (what `auto`, the default,
                   picks for engines that do not preempt): batch stops one slot short of
                   each engine's cap;
- engine-priority: the same tenants with `[router.admission] enabled = false`: every request
                   goes to the engines at once with its priority; SGLang's own priority
                   scheduling (and preemption) alone decides;
- no-admission:    no tenants (one API key each), engines in SGLang's default FIFO: today's
                   gateway;
- smg-priority:    SMG 1.13 (`smg launch`) with its priority scheduler on
                   (`--priority-scheduler-enabled`, per-tenant keys `--tenant-api-key`,
                   `x-smg-priority` header, capacity `--max-concurrent-requests 8`), engines
                   in FIFO. Run only when `smg` is on the PATH of this Python.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from modelserver.bench.sim_gateway_fleet import sims_behind_router
from modelserver.bench.workloads import mixed
from modelserver.netinfo import free_port_range

MODEL = "llama-8b"
SLOTS = 4
KEYS = {"lab": "k-lab", "eval": "k-eval"}
BASE = """
[fleet]
name = "mixed"
state_dir = "{state}"
[[hosts]]
name = "local"
[[models]]
name = "{model}"
backend = "sim"
port = {port}
replicas = 2
[router]
policy = "least_load"
[router.admission]
{admission}
[gateway]
port = {gateway_port}
"""
TENANTS = """
[[gateway.tenants]]
name = "lab"
keys = ["k-lab"]
priority = "interactive"
[[gateway.tenants]]
name = "eval"
keys = ["k-eval"]
priority = "batch"
"""
CONTENDERS: dict[str, dict[str, Any]] = {
    "ours": {"tenants": True, "admission": 'reserved_where = "above_cap"',
             "engine_priority": True},
    "ours-below-cap": {"tenants": True, "admission": 'reserved_where = "below_cap"',
                       "engine_priority": True},
    "engine-priority": {"tenants": True, "admission": "enabled = false",
                        "engine_priority": True},
    "no-admission": {"tenants": False, "admission": "", "engine_priority": False},
    "smg-priority": {"tenants": False, "admission": "", "engine_priority": False, "smg": True},
}
SMG_SCHEDULER = """
classes:
  system: {reserved_floor: 0, reserved_per_slot: 0.0, queue_size: 64, queue_timeout_secs: 30,
           starvation_threshold_secs: 5, can_preempt: true}
  interactive: {reserved_floor: 1, reserved_per_slot: 0.0, queue_size: 256,
                queue_timeout_secs: 600, starvation_threshold_secs: 5, can_preempt: true}
  default: {reserved_floor: 0, reserved_per_slot: 0.0, queue_size: 512, queue_timeout_secs: 600,
            starvation_threshold_secs: 30, can_preempt: false}
  bulk: {reserved_floor: 0, reserved_per_slot: 0.0, queue_size: 1024, queue_timeout_secs: 600,
         starvation_threshold_secs: 600, can_preempt: false}
tenant_policies:
  "auth:lab": {max_class: interactive}
  "auth:eval": {max_class: bulk}
"""
"""SMG's priority scheduler (`smg launch --priority-scheduler-enabled`), its documented YAML
(docs/reference/priority-scheduler.md of SMG): one interactive slot reserved, the batch tenant
capped to `bulk`, long queue timeouts so nothing is shed in the window."""


SMG_CLASS = {KEYS["lab"]: "interactive", KEYS["eval"]: "bulk"}


async def chat(http: aiohttp.ClientSession, url: str, key: str, text: str, max_tokens: int,
               stream: bool) -> tuple[float, int]:
    """(seconds to the first byte of the answer, completion tokens)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "stream": stream, "temperature": 0.0}
    start = time.perf_counter()
    async with http.post(url + "/v1/chat/completions", data=orjson.dumps(body),
                         headers={"Authorization": f"Bearer {key}",
                                  "Content-Type": "application/json",
                                  "x-smg-priority": SMG_CLASS[key]}) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        if stream:
            await r.content.readline()
            first = time.perf_counter() - start
            await r.read()
            return first, max_tokens
        data = await r.json()
        return time.perf_counter() - start, int(data["usage"]["completion_tokens"])


async def warm(http: aiohttp.ClientSession, url: str) -> None:
    """Three answered chats; a router may answer before it has found its workers (SMG)."""
    answered = 0
    deadline = time.monotonic() + 60
    while answered < 3:
        try:
            await chat(http, url, KEYS["lab"], "warm up", 4, True)
            answered += 1
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def run_contender(name: str, flood: int, seconds: float, speed: float,
                        workdir: Path) -> dict[str, Any]:
    spec = CONTENDERS[name]
    workload = mixed(4096, 0, MODEL)
    batch = [s for s in workload.sessions if s.priority == "batch"]
    interactive = [s for s in workload.sessions if s.priority == "interactive"]
    port = free_port_range(2)
    gateway_port = free_port_range(1, avoid=range(port, port + 2))
    fleet = workdir / f"{name}.toml"
    text = BASE.format(state=workdir / f"state-{name}", model=MODEL, port=port,
                       gateway_port=gateway_port, admission=spec["admission"])
    text += TENANTS if spec["tenants"] else '\n'
    if not spec["tenants"]:
        text = text.replace("[gateway]\n", '[gateway]\napi_keys = ["k-lab", "k-eval"]\n')
    fleet.write_text(text)
    if spec.get("smg"):
        config = workdir / "smg-scheduler.yaml"
        config.write_text(SMG_SCHEDULER)
        router = [str(Path(sys.executable).parent / "smg"), "launch",
                  "--worker-urls", *[f"http://127.0.0.1:{port + i}" for i in range(2)],
                  "--host", "127.0.0.1", "--port", str(gateway_port),
                  "--policy", "round_robin", "--max-concurrent-requests", str(2 * SLOTS),
                  "--priority-scheduler-enabled", "--priority-scheduler-config",
                  str(config), "--tenant-api-key", "lab:k-lab",
                  "--tenant-api-key", "eval:k-eval"]
    else:
        router = [sys.executable, "-m", "modelserver", "gateway", str(fleet)]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
    ) as http, sims_behind_router(
        http, workdir, router, model=MODEL, port=port, router_port=gateway_port,
        slots=SLOTS, speed=speed, engine_priority=spec["engine_priority"],
        log_prefix=f"{name}-",
    ):
        url = f"http://127.0.0.1:{gateway_port}"
        asked = iter(interactive)

        async def interactive_window() -> list[float]:
            seen = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                session = next(asked)
                ttft, _ = await chat(http, url, KEYS["lab"], session.turns[0],
                                     session.max_tokens, True)
                seen.append(ttft)
                await asyncio.sleep(max(0.0, 1.0 - ttft))
            return seen

        await warm(http, url)
        alone = await interactive_window() if name == "ours" else []
        done: list[tuple[float, int]] = []
        turns = iter(batch * 8)

        async def caller() -> None:
            while True:
                session = next(turns)
                _, tokens = await chat(http, url, KEYS["eval"], session.turns[0],
                                       session.max_tokens, False)
                done.append((time.monotonic(), tokens))

        callers = [asyncio.create_task(caller()) for _ in range(flood)]
        try:
            await asyncio.sleep(3.0)  # the flood fills every engine
            t0 = time.monotonic()
            under = await interactive_window()
            t1 = time.monotonic()
        finally:
            for task in callers:
                task.cancel()
            await asyncio.gather(*callers, return_exceptions=True)
    in_window = [tokens for at, tokens in done if t0 <= at <= t1]
    return {
        "contender": name,
        "interactive_samples": len(under),
        "ttft_p50_s": statistics.median(under),
        "ttft_p99_s": _p99(under),
        "ttft_alone_p50_s": statistics.median(alone) if alone else None,
        "batch_requests_per_s": len(in_window) / (t1 - t0),
        "batch_tokens_per_s": sum(in_window) / (t1 - t0),
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--logs", type=Path, help="Keep the processes' logs here.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mixed-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.contenders.split(","):
            row = await run_contender(name, args.flood, args.seconds, args.speed, workdir)
            rows.append(row)
            print(orjson.dumps(row).decode(), flush=True)
    print("| contender | interactive TTFT p50 | p99 | batch req/s | batch tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['contender']} | {row['ttft_p50_s'] * 1000:.0f} ms |"
              f" {row['ttft_p99_s'] * 1000:.0f} ms | {row['batch_requests_per_s']:.1f} |"
              f" {row['batch_tokens_per_s']:.0f} |")
    for row in rows:
        if row["ttft_alone_p50_s"] is not None:
            print(f"interactive TTFT p50 with no flood: {row['ttft_alone_p50_s'] * 1000:.0f} ms")
    if args.json:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    asyncio.run(main())
