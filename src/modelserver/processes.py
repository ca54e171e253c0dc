"""Engine processes: how the supervisor starts them, waits on them and signals them.

`SubprocessSpawner` starts an engine without a shell, in its own session (so its pid is its
process group id and a stop reaches everything it started), stdin closed, stdout and stderr
appended to its log. A `ChildProcess` is awaited directly; an `AdoptedProcess` (started by a
previous launcher, so not our child) is watched through a pidfd the event loop reads, never
by polling with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Protocol

from modelserver.backends.base import LaunchSpec
from modelserver.state import LOG_MODE, create_time_of


class ProcessHandle(Protocol):
    pid: int
    create_time: float | None

    async def wait(self) -> int | None:
        """Wait for the exit; the exit code (negative: signal), None if unknown (adopted)."""
        ...

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the process group (the worker and everything it started)."""
        ...


class Spawner(Protocol):
    async def spawn(self, spec: LaunchSpec, log: Path) -> ProcessHandle: ...


class ChildProcess:
    """A worker we spawned: awaited directly."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.create_time = create_time_of(proc.pid)

    async def wait(self) -> int | None:
        return await self._proc.wait()

    def signal_group(self, signum: int) -> None:
        _killpg(self.pid, signum)


class AdoptedProcess:
    """A worker a previous launcher spawned: not our child, so watched through a pidfd."""

    def __init__(self, pid: int, create_time: float | None) -> None:
        self.pid = pid
        self.create_time = create_time
        self._pidfd = os.pidfd_open(pid)
        self._exited: asyncio.Future[None] | None = None

    async def wait(self) -> int | None:
        if self._exited is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def on_readable() -> None:  # the pidfd turns readable when the process exits
                loop.remove_reader(self._pidfd)
                os.close(self._pidfd)
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(self._pidfd, on_readable)
            self._exited = exited
        await asyncio.shield(self._exited)
        return None

    def signal_group(self, signum: int) -> None:
        _killpg(self.pid, signum)


def _killpg(pgid: int, signum: int) -> None:
    # Workers start in their own session, so their pid is their process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class SubprocessSpawner:
    """Start an engine: no shell, own session, stdin closed, stdout+stderr to its log."""

    async def spawn(self, spec: LaunchSpec, log: Path) -> ProcessHandle:
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"\n=== {stamp} modelserver starts: {spec.shown()}\n".encode())
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                env=dict(spec.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        return ChildProcess(proc)
