"""Test doubles for the supervisor: a clock that does not wait, processes that do not run."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

from modelserver.launcher.backends.base import LaunchSpec


class FakeClock:
    """Time moves only when someone sleeps; sleeping yields once to the event loop."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        for when, waiter in self._waiters:
            if when <= self.t and not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)

    async def reached(self, when: float) -> None:
        """Return once someone's sleeping has moved the clock to `when`."""
        if self.t >= when:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((when, waiter))
        await waiter


class ManualClock:
    """Time moves only when the test calls `advance`; a sleeper waits until then. For tests
    where one task's sleeps must not move time for the others (FakeClock's would)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, waiter))
        await waiter

    def asleep_until(self, when: float) -> bool:
        """True if someone sleeps until `when` (so an `advance` will wake them)."""
        return any(due == when for due, _ in self._sleepers)

    def advance(self, seconds: float) -> None:
        self.t += seconds
        due = [(when, w) for when, w in self._sleepers if when <= self.t]
        self._sleepers = [(when, w) for when, w in self._sleepers if when > self.t]
        for _, waiter in due:
            if not waiter.done():
                waiter.set_result(None)


class FakeProcess:
    def __init__(self, pid: int, ignores_sigterm: bool = False) -> None:
        self.pid = pid
        self.create_time: float | None = float(pid)
        self.signals: list[int] = []
        self.ignores_sigterm = ignores_sigterm
        self._exit: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    @property
    def alive(self) -> bool:
        return not self._exit.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and not self.ignores_sigterm):
            self.exit(-signum)


class FakeSpawner:
    """Hands out FakeProcesses; `behaviours[i]` says what the i-th spawn does:
    "ok" (runs), "crash" (exits with code 1 at once), "stubborn" (ignores SIGTERM),
    "oserror" (the program cannot be started)."""

    def __init__(self, behaviours: Sequence[str] = ()) -> None:
        self.behaviours = list(behaviours)
        self.spawned: list[FakeProcess] = []
        self.specs: list[LaunchSpec] = []

    async def spawn(self, spec: LaunchSpec, log: Path) -> FakeProcess:
        index = len(self.specs)
        self.specs.append(spec)
        behaviour = self.behaviours[index] if index < len(self.behaviours) else "ok"
        if behaviour == "oserror":
            raise FileNotFoundError(2, "No such file or directory")
        _append(log, f"start {index}: {behaviour}\n")
        proc = FakeProcess(pid=5000 + index, ignores_sigterm=behaviour == "stubborn")
        self.spawned.append(proc)
        if behaviour == "crash":
            proc.exit(1)
        return proc


class FakeProbe:
    """Answers by URL: a set of URLs that are 'up'; everything else says why not."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail_next = 0
        """Fail this many of the next probes, whatever the URL, saying `fail_reason`."""
        self.fail_reason = "GET /health: HTTP 503"

    async def __call__(self, url: str, paths: Sequence[str], api_key: str | None) -> str | None:
        self.calls.append((url, tuple(paths)))
        await asyncio.sleep(0)
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.fail_reason
        return None if url in self.up else "GET /health: connection refused"


def _append(log: Path, text: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(text)
