"""Logs that do not fill the disk: rotation by copy and truncate, with the engine writing on."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from modelserver.config import LauncherConfig
from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.logfiles import keep_logs_capped, read_last_lines, rotate_all, rotated
from modelserver.launcher.processes import SubprocessSpawner
from modelserver.launcher.state import LOG_MODE
from tests.launcher.fakes import ManualClock
from tests.waiting import wait_until

MAX = 4096
KEEP = 3


def _append(fd: int, label: str, size: int) -> None:
    line = f"{label} " + "x" * 60 + "\n"
    os.write(fd, (line * (size // len(line) + 1)).encode())


def test_writing_far_past_the_size_leaves_only_capped_files(tmp_path: Path) -> None:
    log = tmp_path / "llama-8b-0@lo.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)  # as the spawner does
    try:
        for round_ in range(10):
            _append(fd, f"round-{round_}", 3 * MAX)  # 30 sizes in all
            assert rotate_all([log], MAX, KEEP) == [log]
    finally:
        os.close(fd)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [log.name, f"{log.name}.1", f"{log.name}.2", f"{log.name}.3"]
    assert log.stat().st_size == 0  # truncated, the writer's file itself (same inode)
    for generation in (1, 2, 3):
        assert rotated(log, generation).stat().st_size <= MAX
        assert rotated(log, generation).stat().st_mode & 0o777 == LOG_MODE
    # Newest first: .1 holds the end of the last round, .3 of the third-last.
    assert rotated(log, 1).read_text().splitlines()[-1].startswith("round-9 ")
    assert rotated(log, 3).read_text().splitlines()[-1].startswith("round-7 ")


def test_a_log_under_the_size_is_left_alone_and_keep_0_only_truncates(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("short\n")
    assert rotate_all([log, tmp_path / "missing.log"], MAX, KEEP) == []
    assert log.read_text() == "short\n"
    log.write_text("y" * (MAX + 1))
    assert rotate_all([log], MAX, 0) == [log]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log"]
    assert log.stat().st_size == 0


ENGINE = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("before-rotation " * 400, flush=True)
print("-".join(["first", "batch", "written"]), flush=True)  # not in the header
signal.sigwait({signal.SIGUSR1})
print("after-rotation", flush=True)
print("to stderr too", file=sys.stderr, flush=True)
"""


async def test_an_engine_writes_on_into_its_truncated_log_from_the_start(
    tmp_path: Path,
) -> None:
    # The engine's stdout is the file itself (O_APPEND), nothing in between that could die
    # with the launcher; after the truncation its writes land at offset 0, not at its old
    # offset behind a hole of zeros.
    log = tmp_path / "engine.log"
    spec = LaunchSpec((sys.executable, "-c", ENGINE), dict(os.environ))
    proc = await SubprocessSpawner().spawn(spec, log)
    try:
        await wait_until(lambda: b"first-batch-written" in log.read_bytes(), "the first batch")
        assert rotate_all([log], 1024, KEEP) == [log]
        proc.signal_group(signal.SIGUSR1)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        proc.signal_group(signal.SIGKILL)
    assert log.read_bytes() == b"after-rotation\nto stderr too\n"
    older = rotated(log, 1).read_bytes()
    assert len(older) <= 1024 and older.endswith(b"first-batch-written\n")


async def test_the_supervisor_checks_the_sizes_on_its_clock_and_sees_new_workers(
    tmp_path: Path,
) -> None:
    settings = LauncherConfig(log_max_bytes=MAX, log_keep=2, log_check_s=10.0)
    clock = ManualClock()
    logs = [tmp_path / "a.log"]
    logs[0].write_text("a" * (MAX + 1))
    task = asyncio.create_task(keep_logs_capped(lambda: list(logs), settings, clock))
    try:
        await wait_until(lambda: rotated(logs[0], 1).exists(), "the first round")
        await wait_until(lambda: clock.asleep_until(clock.now() + 10.0), "the wait")
        logs.append(tmp_path / "b.log")  # a worker added meanwhile
        logs[1].write_text("b" * (MAX + 1))
        assert not rotated(logs[1], 1).exists()  # not before the next check
        clock.advance(10.0)
        await wait_until(lambda: rotated(logs[1], 1).exists(), "the second round")
    finally:
        task.cancel()


def test_the_last_lines_reach_into_the_rotated_file_just_after_a_rotation(
    tmp_path: Path,
) -> None:
    log = tmp_path / "w.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    rotate_all([log], 100, KEEP)
    with open(log, "a") as handle:
        handle.write("line 100\nline 101\n")
    shown, end = read_last_lines(log, 5, MAX)
    assert shown == [b"line 97", b"line 98", b"line 99", b"line 100", b"line 101"]
    assert end == log.stat().st_size


def test_the_last_lines_of_a_huge_untrimmed_log_are_read_from_its_end_only(
    tmp_path: Path,
) -> None:
    log = tmp_path / "w.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))  # 1.3 MB
    shown, end = read_last_lines(log, 3, 64)
    assert shown == [b"line 99997", b"line 99998", b"line 99999"]
    assert end == log.stat().st_size
