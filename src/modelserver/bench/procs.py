"""Processes the benchmark starts (simulated engines, SGLang's router): each in its own
session, so a signal to its process group reaches everything it started; stopped with
SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import IO


def spawn(
    cmd: list[str], log_path: Path | None
) -> tuple[subprocess.Popen[bytes], IO[bytes] | None]:
    """Start `cmd` in a new session, output appended to `log_path` (or dropped)."""
    log: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed by the owner with the process
    proc = subprocess.Popen(
        cmd,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, log


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


async def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                     grace_s: float = 5.0) -> None:
    """Signal the process group, wait up to `grace_s`, then SIGKILL it; reaps the process."""
    if proc.poll() is not None:
        return
    signal_group(proc.pid, sig)
    try:
        await asyncio.to_thread(proc.wait, grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
