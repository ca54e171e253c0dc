"""Per-engine load over time, read from each engine's `/sim/state` on a thread of its own.

It runs on its own thread and event loop so that its polling is not charged to the
contender: the runner subtracts this thread's CPU time from the driver's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class LoadSample:
    t_s: float
    """Seconds since the contender started."""
    engine: int
    running: int | None
    """None: the engine did not answer (dead or hung)."""
    queued: int | None


class LoadSampler:
    def __init__(self, urls: list[str], t0: float, interval_s: float = 0.25) -> None:
        self.urls = urls
        self.t0 = t0
        self.interval_s = interval_s
        self.samples: list[LoadSample] = []
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            asyncio.run(self._loop())
        finally:
            self.cpu_s = time.thread_time() - cpu0

    async def _loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(self.interval_s, 0.5))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                t = time.monotonic() - self.t0
                results = await asyncio.gather(
                    *(self._one(session, i, url, t) for i, url in enumerate(self.urls))
                )
                self.samples.extend(results)
                await asyncio.sleep(self.interval_s)

    async def _one(self, session: aiohttp.ClientSession, index: int, url: str,
                   t: float) -> LoadSample:
        try:
            async with session.get(f"{url}/sim/state") as resp:
                if resp.status == 200:
                    state = await resp.json()
                    return LoadSample(t, index, int(state.get("running", 0)),
                                      int(state.get("queued", 0)))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        return LoadSample(t, index, None, None)
