"""`python -m modelserver.launcher.cluster.guard --parent PID -- ENGINE ARGV...`

The supervising actor starts each engine through this guard, so that no engine outlives its
actor (Ray kills an actor's worker process, but not the processes that worker started in a
session of their own; an orphan engine would hold its GPUs). The guard:

- leads the engine's process group (the spawner starts it in a new session) and runs the
  engine as its child in that group, so the actor's SIGTERM / SIGKILL to the group reaches
  the guard, the engine and whatever the engine started;
- watches the actor through a pidfd: the moment the actor's process is gone (killed, its node
  taken down, `ray.kill`), it SIGKILLs the whole group, itself included;
- asks the kernel for SIGTERM when the actor's thread that started it dies
  (prctl PR_SET_PDEATHSIG), and gives the engine SIGKILL on the guard's own death, in case
  the guard itself is killed first;
- exits as the engine did (its code, or the same signal), so the supervisor reads the
  engine's exit.

Standard library only: it starts before anything else and must not fail to import.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _kill_group() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the engine, its children, and this guard


def run(parent: int, argv: list[str]) -> int:
    _die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the actor died before the line above took effect
        return 1
    parent_fd = os.pidfd_open(parent)
    # SIGTERM reaches the engine directly (same group); the guard just waits for its exit,
    # unless the SIGTERM was the kernel telling it the actor is gone: the pidfd says which.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        engine = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, preexec_fn=lambda: _die_with_parent(signal.SIGKILL)
        )
    except OSError as exc:
        print(f"modelserver guard: cannot start {argv[0]}: {exc.strerror or exc}", flush=True)
        return 127
    engine_fd = os.pidfd_open(engine.pid)
    while True:
        readable, _, _ = select.select([parent_fd, engine_fd], [], [])
        if engine_fd in readable:
            code = engine.wait()
            if code < 0:  # killed by a signal: end the same way
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            return code
        if parent_fd in readable:
            with contextlib.suppress(OSError):  # the log may be gone with the actor
                print("modelserver guard: the supervising actor is gone; stopping the engine",
                      flush=True)
            _kill_group()


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--parent" or args[2] != "--":
        sys.exit("usage: python -m modelserver.launcher.cluster.guard --parent PID -- ARGV...")
    sys.exit(run(int(args[1]), args[3:]))


if __name__ == "__main__":
    main()
