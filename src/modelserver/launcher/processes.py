"""Engine processes: how the supervisor starts them, waits on them and signals them.

`SubprocessSpawner` starts an engine without a shell, in its own session (so its pid is its
process group id and a stop reaches everything it started), stdin closed, stdout and stderr
appended to its log. A `ChildProcess` is awaited directly; an `AdoptedProcess` (started by a
previous launcher, so not our child) is watched through a pidfd the event loop reads, never
by polling with sleeps.

Every engine carries `MODELSERVER_STATE_FILE` (the state file of the launcher that started
it) in its environment. A launcher killed between spawning an engine and recording its pid
leaves an engine no state file names; the next launcher (and `down`) find it by that mark
and stop it (`stop_unrecorded_engines`), so no engine is orphaned or started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

import psutil

from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.state import LOG_MODE, create_time_of


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


def stop_groups(pgids: Collection[int], grace_s: float) -> None:
    """SIGTERM to each process group, `grace_s`, then SIGKILL to what is left (`down`, for
    the workers a supervisor killed with SIGKILL left running)."""
    for pgid in pgids:
        _killpg(pgid, signal.SIGTERM)
    procs = []
    for pgid in pgids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pgid))
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for pgid in pgids:
        _killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


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


STATE_FILE_ENV = "MODELSERVER_STATE_FILE"
"""Set in every engine's environment: the state file of the launcher that started it."""
WORKER_ENV = "MODELSERVER_WORKER"
"""Set in every engine's environment: the worker's name (for messages)."""


def engine_mark(state_file: Path, worker: str) -> dict[str, str]:
    """The environment entries that mark an engine as started for `state_file`."""
    return {STATE_FILE_ENV: str(state_file.resolve()), WORKER_ENV: worker}


def marked_engine_groups(state_file: Path, keep: Collection[int] = ()) -> dict[int, str]:
    """Process groups holding a live process marked with `state_file` -> its worker name,
    leaving out the engines in `keep` and everything they started (even in a group or
    session of its own)."""
    wanted = str(state_file.resolve())
    groups: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env = proc.environ()
            if env.get(STATE_FILE_ENV) != wanted:
                continue
            pgid = os.getpgid(proc.pid)
            if pgid in keep or proc.pid in keep or any(p.pid in keep for p in proc.parents()):
                continue
            groups.setdefault(pgid, env.get(WORKER_ENV, "?"))
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to read
    return groups


def stop_unrecorded_engines(
    state_file: Path, keep: Collection[int], wait_s: float = 10.0
) -> dict[int, str]:
    """SIGKILL every marked engine group not in `keep` (the pids the launcher adopts) and
    wait until its processes are gone (so its port is free). Returns pgid -> worker stopped.
    Only call with no launcher running for `state_file` (it holds the supervisor lock)."""
    orphans = marked_engine_groups(state_file, keep)
    procs: list[psutil.Process] = []
    for pgid in orphans:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pgid))
        _killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=wait_s)
    return orphans
