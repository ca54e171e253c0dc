"""The guard between a supervising actor and its engine (no Ray needed): the engine's whole
group dies when the actor's process does, and the engine's exit is passed on unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from tests.processes import group_alive
from tests.waiting import wait_until_sync

# Stands for the actor: starts the guard the way GuardedSpawner does (own session), with an
# engine that starts a child of its own, prints the pids, then waits to be killed.
ACTOR = textwrap.dedent("""
    import subprocess, sys, time
    engine = [sys.executable, "-c",
              "import subprocess, sys, time; c = subprocess.Popen(['sleep', '300']);"
              " print(c.pid, flush=True); time.sleep(300)"]
    guard = subprocess.Popen(
        [sys.executable, "-m", "modelserver.launcher.cluster.guard", "--parent",
         str(__import__('os').getpid()), "--", *engine],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    print(guard.pid, guard.stdout.readline().strip(), flush=True)
    time.sleep(300)
""")


def test_the_engine_group_dies_with_the_actor_process() -> None:
    actor = subprocess.Popen([sys.executable, "-c", ACTOR], stdout=subprocess.PIPE, text=True)
    try:
        assert actor.stdout is not None
        guard_pid, grandchild = (int(x) for x in actor.stdout.readline().split())
        assert os.getpgid(grandchild) == guard_pid  # the engine's child is in the group
        actor.kill()  # SIGKILL: the actor gets no chance to clean up
        actor.wait()
        wait_until_sync(lambda: not group_alive(guard_pid), "the engine group to be gone", 30)
        assert not psutil.pid_exists(grandchild) or \
            psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    finally:
        actor.kill()
        actor.wait()


def test_the_engine_exit_code_and_signal_pass_through(tmp_path: Path) -> None:
    def guarded(code: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "modelserver.launcher.cluster.guard", "--parent",
             str(os.getpid()), "--", sys.executable, "-c", code], timeout=60,
        ).returncode

    assert guarded("raise SystemExit(3)") == 3
    assert guarded("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)") == -signal.SIGSEGV


def test_an_engine_that_cannot_start_is_reported() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelserver.launcher.cluster.guard", "--parent",
         str(os.getpid()), "--", "/nonexistent/engine"], capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 127
    assert "cannot start /nonexistent/engine" in done.stdout
