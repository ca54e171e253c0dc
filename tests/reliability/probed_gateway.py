"""`modelserver gateway FLEET` with a probe, for the long-run leak test.

Each line written to this process's stdin is answered by one JSON line on stdout: the
gateway's asyncio tasks, its garbage-collected objects by type and its allocated memory
blocks, counted on the gateway's own event loop after a full collection. The gateway itself
logs to stderr.

One change to what runs: connections to the engines are not kept alive. How many a pool
keeps depends on the last burst of requests, and each holds dozens of objects and about a
hundred memory blocks, enough to hide a leak of one object per request of a rarer kind;
without the pool an idle gateway holds the same objects after every round.

Run as `python tests/reliability/probed_gateway.py FLEET`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading
from collections import Counter
from typing import Any

import aiohttp

import modelserver.gateway.server as server_module
from modelserver.cli import main

PROBE_PREFIX = "probe: "
_serve = server_module.serve_until_signalled


async def _serve_with_probe(server: server_module.GatewayServer) -> None:
    loop = asyncio.get_running_loop()
    threading.Thread(target=_answer_probes, args=(loop,), daemon=True).start()
    await _serve(server)


async def _counts() -> dict[str, Any]:
    gc.collect()
    objects = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    # Allocated blocks count what gc does not track (bytes, str, numbers): a body kept in a
    # list that already exists adds no gc object, but adds a block.
    return {
        "tasks": len(asyncio.all_tasks()),
        "objects": dict(objects),
        "blocks": sys.getallocatedblocks(),
    }


def _answer_probes(loop: asyncio.AbstractEventLoop) -> None:
    for _ in sys.stdin:
        counts = asyncio.run_coroutine_threadsafe(_counts(), loop).result()
        sys.stdout.write(PROBE_PREFIX + json.dumps(counts) + "\n")
        sys.stdout.flush()


class _ConnectorWithoutKeepAlive(aiohttp.TCPConnector):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, force_close=True, **kwargs)


if __name__ == "__main__":
    # The router makes its connector when it first sends, so it makes this one.
    aiohttp.TCPConnector = _ConnectorWithoutKeepAlive  # type: ignore[misc]
    # The command imports serve_until_signalled when it runs, so it picks this one up.
    server_module.serve_until_signalled = _serve_with_probe
    sys.argv = ["modelserver", "gateway", *sys.argv[1:]]
    main()
