"""Where a worker's health comes from besides traffic: active probes and the launcher.

Probes are one cheap GET of the engine's health endpoint per worker, all at once, with a
short timeout (never a generation: the seed's 256-token probes are what this replaces).
The launcher's state files (`{state_dir}/state-{host}.json`, see the launcher) say which
workers it knows to be failed, stopped or still starting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelserver import _files
from modelserver.config import HealthConfig
from modelserver.errors import WorkerError
from modelserver.routing.transport import Transport
from modelserver.routing.worker import Worker

log = logging.getLogger(__name__)


async def probe_round(
    workers: Sequence[Worker],
    transport: Transport,
    config: HealthConfig,
    headers: Mapping[str, Mapping[str, str]],
) -> None:
    """Probe every worker concurrently and update its probe health: `failure_threshold`
    failures in a row take it out, `success_threshold` successes bring it back."""
    results = await asyncio.gather(*(_probe(w, transport, config, headers) for w in workers))
    for worker, error in zip(workers, results, strict=True):
        if error is None:
            worker.probe_failures = 0
            worker.probe_successes += 1
            if not worker.probe_healthy and worker.probe_successes >= config.success_threshold:
                worker.probe_healthy = True
                log.info("%s answers its health probe again", worker.url)
        else:
            worker.probe_successes = 0
            worker.probe_failures += 1
            worker.last_probe_error = error
            if worker.probe_healthy and worker.probe_failures >= config.failure_threshold:
                worker.probe_healthy = False
                log.warning("%s is out: %s", worker.url, error)


async def _probe(
    worker: Worker,
    transport: Transport,
    config: HealthConfig,
    headers: Mapping[str, Mapping[str, str]],
) -> str | None:
    """None if the worker answered its health endpoint with a success status, else why not."""
    try:
        answer = await transport.send(
            "GET",
            worker.url + config.endpoint,
            headers=headers.get(worker.url),
            timeout_s=config.timeout_s,
        )
        await answer.read()
    except WorkerError as exc:
        return exc.reason
    if answer.status >= 400:
        return f"HTTP {answer.status}"
    return None


@dataclass(frozen=True)
class LaunchedWorker:
    """What a launcher's state file says of one worker."""

    url: str
    name: str
    model: str
    kind: str
    status: str


def read_launched_workers(state_dir: Path) -> dict[str, LaunchedWorker]:
    """URL -> each worker every host's state file names, with its status ("ready",
    "failed", ...).

    Absent or unreadable files mean "no news" (probes and traffic then decide alone)."""
    found: dict[str, LaunchedWorker] = {}
    for path in sorted(state_dir.glob("state-*.json")):
        try:
            state = _files.read_json(path)
        except (OSError, ValueError):
            continue
        records = state.get("workers", []) if isinstance(state, dict) else []
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict) and isinstance(record.get("url"), str):
                url = record["url"].rstrip("/")
                found[url] = LaunchedWorker(
                    url,
                    str(record.get("name") or url),
                    str(record.get("model") or ""),
                    str(record.get("kind") or ""),
                    str(record.get("status")),
                )
    return found
