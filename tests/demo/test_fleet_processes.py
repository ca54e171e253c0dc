"""What the demo checks (and kills) at its end: only processes provably its fleet's.

A pid alone proves nothing on a shared machine (pids are reused), so a pid the state file
named counts only while it is the same process (same start time), and an engine counts by
the state-file mark in its environment.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from modelserver.config import load_fleet
from modelserver.demo.fleet import DemoFleet
from modelserver.launcher.processes import STATE_FILE_ENV

FLEET = """
[fleet]
name = "pids"
state_dir = "."

[[hosts]]
name = "local"
address = "127.0.0.1"
gpus = "none"

[[models]]
name = "m"
backend = "sim"
port = 1
"""


@pytest.fixture
def fleet(tmp_path: Path) -> DemoFleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return DemoFleet(path, load_fleet(path), {})


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def sleeper(started: list[subprocess.Popen[bytes]], env: dict[str, str] | None = None) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, **(env or {})}, start_new_session=True,
    )
    started.append(proc)
    return proc.pid


def test_a_reused_pid_is_neither_counted_nor_killed(
    fleet: DemoFleet, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    stranger = sleeper(sleepers)
    # The state file once named this pid, for a process that started at another time.
    fleet.seen[stranger] = psutil.Process(stranger).create_time() - 1000.0
    assert fleet.still_running() == []
    assert fleet.down() == []
    assert sleepers[0].poll() is None  # still running: not ours, not touched


def test_a_named_process_and_a_marked_engine_are_counted_and_killed(
    fleet: DemoFleet, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    named = sleeper(sleepers)
    fleet.seen[named] = psutil.Process(named).create_time()
    marked = sleeper(sleepers, {STATE_FILE_ENV: str(fleet.state_file.resolve())})
    other_fleet = sleeper(sleepers, {STATE_FILE_ENV: "/elsewhere/state-local.json"})
    assert fleet.still_running() == sorted([named, marked])
    # `modelserver down` itself stops the marked engine; the named process is the demo's
    # to find still running, report, and kill.
    left = fleet.down()
    assert named in left and set(left) <= {named, marked}
    for gone in sleepers[:2]:  # (the demo waited on them, so their exit codes are its)
        gone.wait(timeout=30)
    assert sleepers[2].poll() is None  # another fleet's engine: not touched
    assert fleet.still_running() == []
    assert other_fleet not in fleet.still_running()
