"""Real engine processes: own session, log file, waiting without polling, group signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.processes import AdoptedProcess, SubprocessSpawner


async def test_spawned_engine_writes_its_log_and_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "w.log"
    spec = LaunchSpec(
        (sys.executable, "-c", "import sys; print('hello'); sys.exit(3)", "--api-key", "s3cret"),
        {"PATH": "/usr/bin:/bin"},
    )
    proc = await SubprocessSpawner().spawn(spec, log)
    assert await asyncio.wait_for(proc.wait(), 30) == 3
    text = log.read_text()
    assert "modelserver starts:" in text and "--api-key ***" in text and "s3cret" not in text
    assert text.rstrip().endswith("hello")
    assert log.stat().st_mode & 0o777 == 0o640


async def test_group_signal_reaches_what_the_engine_started(tmp_path: Path) -> None:
    # The "engine" starts a child of its own and waits; both share the engine's group.
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(p.pid, flush=True); time.sleep(60)")
    log = tmp_path / "w.log"
    proc = await SubprocessSpawner().spawn(LaunchSpec((sys.executable, "-c", script), {}), log)
    try:
        child_pid = await asyncio.to_thread(_first_number_in, log)
        assert psutil.Process(child_pid).ppid() == proc.pid
        proc.signal_group(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
        assert await asyncio.to_thread(_gone, child_pid)
    finally:
        proc.signal_group(signal.SIGKILL)


async def test_an_adopted_process_is_awaited_through_its_pidfd(
    stranger: subprocess.Popen[bytes],
) -> None:
    adopted = AdoptedProcess(stranger.pid, psutil.Process(stranger.pid).create_time())
    waiting = asyncio.ensure_future(adopted.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    adopted.signal_group(signal.SIGTERM)
    assert await asyncio.wait_for(waiting, 30) is None
    assert await asyncio.wait_for(adopted.wait(), 30) is None  # again: same answer


def _first_number_in(log: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if line.strip().isdigit()]
        if lines:
            return int(lines[0])
        time.sleep(0.05)
    raise AssertionError(f"no pid in {log}")


def _gone(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=30)
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
