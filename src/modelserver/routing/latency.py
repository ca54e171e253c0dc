"""`modelserver latency`: the seed's get_all_latency / get_fastest_server, done cheaply.

Every worker gets one short request at the same time (8 tokens, not the seed's 256, and
concurrently, not one after the other). Once the fastest worker of a model has answered in
t seconds, the others of that model have until `cutoff_ratio` × t to answer; slower ones are
cut off (the seed's early cut-off idea) instead of being waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from modelserver.errors import WorkerError
from modelserver.routing.retry import error_for_status
from modelserver.routing.router import WorkerEntry
from modelserver.routing.transport import Transport

PROMPT = "Say hello."


@dataclass(frozen=True)
class LatencyResult:
    entry: WorkerEntry
    latency_s: float | None
    """Seconds to the whole (short) answer; None if it failed or was cut off."""
    outcome: str
    """"ok", "cut off", or the error."""
    fastest: bool = False


def probe_body(entry: WorkerEntry, max_tokens: int) -> tuple[str, bytes]:
    if entry.kind == "embedding":
        return "/v1/embeddings", orjson.dumps({"model": entry.model, "input": [PROMPT]})
    body = {
        "model": entry.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return "/v1/chat/completions", orjson.dumps(body)


async def measure_latency(
    entries: Sequence[WorkerEntry],
    transport: Transport,
    *,
    max_tokens: int = 8,
    cutoff_ratio: float = 2.0,
    timeout_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[LatencyResult]:
    """Probe every worker at once; results sorted by latency (failures and cut-offs last),
    the fastest worker of each model marked."""
    by_model: dict[str, list[WorkerEntry]] = {}
    for entry in entries:
        by_model.setdefault(entry.model, []).append(entry)
    groups = await asyncio.gather(
        *(
            _measure_model(group, transport, max_tokens, cutoff_ratio, timeout_s, clock)
            for group in by_model.values()
        )
    )
    results = [result for group in groups for result in group]
    return sorted(results, key=lambda r: (r.latency_s is None, r.latency_s or 0.0))


async def _measure_model(
    entries: list[WorkerEntry],
    transport: Transport,
    max_tokens: int,
    cutoff_ratio: float,
    timeout_s: float,
    clock: Callable[[], float],
) -> list[LatencyResult]:
    start = clock()

    async def one(entry: WorkerEntry) -> float:
        path, body = probe_body(entry, max_tokens)
        headers = {"content-type": "application/json"}
        if entry.api_key:
            headers["authorization"] = f"Bearer {entry.api_key}"
        answer = await transport.send(
            "POST", entry.url.rstrip("/") + path, body=body, headers=headers, timeout_s=timeout_s
        )
        data = await answer.read()
        if answer.status >= 400:
            raise error_for_status(entry.url, answer.status, data)
        return clock() - start

    tasks = {asyncio.create_task(one(entry)): entry for entry in entries}
    outcomes: dict[str, LatencyResult] = {}
    deadline: float | None = None
    pending = set(tasks)
    while pending:
        wait_s = None if deadline is None else max(deadline - clock(), 0.0)
        done, pending = await asyncio.wait(
            pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:  # the cut-off passed
            break
        for task in done:
            entry = tasks[task]
            try:
                latency = task.result()
            except WorkerError as exc:
                outcomes[entry.url] = LatencyResult(entry, None, exc.reason)
                continue
            outcomes[entry.url] = LatencyResult(entry, latency, "ok")
            if deadline is None:
                deadline = start + latency * cutoff_ratio
    for task in pending:
        task.cancel()
        entry = tasks[task]
        bound = (deadline - start) if deadline is not None else timeout_s
        outcomes[entry.url] = LatencyResult(entry, None, f"cut off (slower than {bound:.2f} s)")
    await asyncio.gather(*pending, return_exceptions=True)
    answered = [r for r in outcomes.values() if r.latency_s is not None]
    if answered:
        best = min(answered, key=lambda r: r.latency_s or 0.0)
        outcomes[best.entry.url] = LatencyResult(best.entry, best.latency_s, "ok", fastest=True)
    return [outcomes[entry.url] for entry in entries]
