"""The launcher's supervisor killed with SIGKILL at random moments, many times (seeded).

Each iteration starts the supervisor (`up --supervise`, the process `up --detach` leaves in the
background) on a fleet of three simulated engines, each given one GPU of the host's static
inventory of four (so placement and adoption handle GPUs as for a real engine), and kills it
in one of four ways (each as often, in a seeded order):

- after a random delay (0 to 5 s: a cold start settles in about 4 s, an adopting one in 1.5);
- the moment a state write is under way (a temporary file beside the state file exists: the
  window of `_files.atomic_write_bytes` between writing the temp file and renaming it);
- the same, at the n-th write (n = 1..8), with every write slowed by 50 ms through
  `MODELSERVER_TEST_WRITE_PAUSE_S` so the kill surely lands inside it (a supervisor that
  settles in fewer writes, as an adopting one does, is killed once settled);
- every engine killed first (they died while no launcher watched), then the same, aimed at a
  write that records a new engine's pid: a cold start writes once for the launch, then per
  worker: starting, its pid (after the spawn), ready. Such a kill leaves an engine no state
  file names: the next launcher must stop it.

After every kill:

- the state file parses (never half-written);
- no port has two listeners and no port two engine processes;
- no GPU is given to two live engines (their CUDA_VISIBLE_DEVICES, read from their
  environment), and each recorded engine has the GPUs its record names;

and when a restarted supervisor settles before its own kill:

- every worker that was ready and alive when it started keeps its pid (adopted, not restarted);
- there is exactly one engine process per worker, each recorded in the state file (an
  engine the killed supervisor had started but not yet recorded is not left running).

Then a supervisor settles and is killed (the common case, made certain), the next one must
adopt every worker, `down` runs, and no process ever seen (supervisor or engine, recorded or
observed) still runs. `MODELSERVER_CRASH_SEED` and
`MODELSERVER_CRASH_ITERATIONS` change the seed and the count.

The test waits on the state folder (inotify) and the supervisor's exit (a pidfd) together, so
it kills the moment a write starts without spinning a core.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from modelserver.launcher.processes import (
    engine_mark,
    marked_engine_groups,
    stop_unrecorded_engines,
)
from tests.reliability.launched import (
    DEADLINE_S,
    IN_CREATE,
    IN_MOVED_TO,
    LaunchedFleet,
    SimModel,
    StateFolderWatch,
    write_fleet,
)
from tests.waiting import wait_until_sync

SEED = int(os.environ.get("MODELSERVER_CRASH_SEED", "8"))
ITERATIONS = int(os.environ.get("MODELSERVER_CRASH_ITERATIONS", "16"))
MAX_KILL_DELAY_S = 5.0
SLOWED_WRITES = {"MODELSERVER_TEST_WRITE_PAUSE_S": "0.05"}
GPUS = 4
"""One more than the engines, so a placement that ignored a GPU in use could choose it."""
ORPHAN_NOTE = "started by a launcher that died before recording it"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LaunchedFleet]:
    launched = write_fleet(tmp_path, [SimModel("alpha", replicas=2), SimModel("beta")],
                           gpus=GPUS)
    try:
        yield launched
    finally:
        launched.stop_everything()


@dataclass
class Tally:
    kills: int = 0
    during_write: int = 0
    settled_before_kill: int = 0
    adopted: int = 0
    unrecorded_after_kill: int = 0
    gpu_checks: int = 0
    violations: list[str] = field(default_factory=list)


def temp_files(fleet: LaunchedFleet) -> list[str]:
    """Temporary files of a state write under way (or cut short by a kill)."""
    prefix = f".{fleet.state.name}."
    try:
        return [n for n in os.listdir(fleet.state.parent) if n.startswith(prefix)]
    except FileNotFoundError:
        return []


def ready_and_alive(fleet: LaunchedFleet) -> dict[str, int]:
    state = fleet.read_state() or {}
    return {
        w["name"]: w["pid"] for w in state.get("workers", [])
        if w["status"] == "ready" and w.get("pid") and fleet.running([w["pid"]])
    }


def settled_under(fleet: LaunchedFleet, supervisor: int) -> bool:
    state = fleet.read_state()
    if not state or (state.get("supervisor") or {}).get("pid") != supervisor:
        return False
    workers = state["workers"]
    return len(workers) == len(fleet.ports) and all(w["status"] == "ready" for w in workers)


def check_after_kill(fleet: LaunchedFleet, tally: Tally, iteration: int) -> None:
    fleet.read_state()  # raises if half-written
    for port, pids in fleet.listeners().items():
        if len(pids) > 1:
            tally.violations.append(f"#{iteration}: port {port} has listeners {sorted(pids)}")
    per_port: dict[int, list[int]] = {}
    for pid, port in fleet.engine_processes().items():
        per_port.setdefault(port, []).append(pid)
    for port, pids in per_port.items():
        if len(pids) > 1:
            tally.violations.append(f"#{iteration}: port {port} has engines {sorted(pids)}")
    recorded = set(fleet.recorded_pids().values())
    tally.unrecorded_after_kill += sum(
        1 for pids in per_port.values() for pid in pids if pid not in recorded
    )
    check_gpus(fleet, tally, iteration)


def check_gpus(fleet: LaunchedFleet, tally: Tally, iteration: int) -> None:
    """No GPU in two live engines; a recorded engine runs on the GPUs its record names."""
    given = fleet.engine_gpus()
    holders: dict[str, list[int]] = {}
    for pid, devices in given.items():
        if not devices:
            tally.violations.append(f"#{iteration}: engine {pid} was given no GPU")
        for gpu in filter(None, devices.split(",")):
            holders.setdefault(gpu, []).append(pid)
    for gpu, pids in holders.items():
        if len(pids) > 1:
            tally.violations.append(f"#{iteration}: GPU {gpu} given to engines {sorted(pids)}")
    state = fleet.read_state() or {}
    for record in state.get("workers", []):
        pid = record.get("pid")
        if pid in given and given[pid] != ",".join(record["gpus"]):
            tally.violations.append(
                f"#{iteration}: {record['name']} (pid {pid}) runs on GPUs {given[pid]!r},"
                f" its record says {record['gpus']}"
            )
    tally.gpu_checks += len(given)


def check_settled(
    fleet: LaunchedFleet, tally: Tally, iteration: int, before: dict[str, int]
) -> None:
    recorded = fleet.recorded_pids()
    for name, pid in before.items():
        if not fleet.running([pid]):
            continue
        tally.adopted += 1
        if recorded.get(name) != pid:
            tally.violations.append(
                f"#{iteration}: {name} ran as pid {pid} but was not adopted"
                f" (now {recorded.get(name)})"
            )
    engines = fleet.engine_processes()
    if sorted(engines.values()) != sorted(fleet.ports):
        tally.violations.append(
            f"#{iteration}: engine processes on ports {sorted(engines.values())},"
            f" expected one on each of {sorted(fleet.ports)}"
        )
    unrecorded = set(engines) - set(recorded.values())
    if unrecorded:
        tally.violations.append(f"#{iteration}: engines {sorted(unrecorded)} are not recorded")
    for port, pids in fleet.listeners().items():
        if len(pids) != 1:
            tally.violations.append(f"#{iteration}: port {port} has listeners {sorted(pids)}")
    check_gpus(fleet, tally, iteration)


MODES = ("delay", "write", "slowed write", "engines died, pid write")


def kill_engines(fleet: LaunchedFleet) -> None:
    """Every engine of the fleet dies while no launcher watches (so the next start is cold)."""
    procs = []
    for pid in fleet.engine_processes():
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=DEADLINE_S)


def run_until_killed(
    fleet: LaunchedFleet, rng: random.Random, tally: Tally, iteration: int,
    before: dict[str, int], mode: str,
) -> None:
    """Start a supervisor and kill it at its moment, checking adoption if it settles first."""
    aim_at_write = mode != "delay"
    slowed = mode in ("slowed write", "engines died, pid write")
    writes_to_skip = rng.randrange(8) if slowed else 0
    if mode == "engines died, pid write":
        # A cold start of the three: 1 write for the launch, 3 as each starts, then 3 that
        # record their pids, each after its spawn: a kill there leaves an unrecorded engine.
        kill_engines(fleet)
        writes_to_skip = rng.randrange(4, 7)
    delay = DEADLINE_S if slowed else rng.uniform(0.0, MAX_KILL_DELAY_S)
    temp_prefix = f".{fleet.state.name}."
    watch = StateFolderWatch(fleet.state.parent)  # before the start: no write goes unseen
    try:
        supervisor = fleet.start_supervisor(SLOWED_WRITES if slowed else None)
        watch.watch_exit(supervisor.pid)
        deadline = time.monotonic() + delay
        checked = False
        seen_writes: set[str] = set()
        aimed = False
        while not aimed and (remaining := deadline - time.monotonic()) > 0:
            events, exited = watch.wait(remaining)
            if exited:
                supervisor.wait()
                tally.violations.append(f"#{iteration}: supervisor exited by itself"
                                        f" (code {supervisor.returncode})")
                return
            for mask, name in events:
                if aim_at_write and mask & IN_CREATE and name.startswith(temp_prefix):
                    seen_writes.add(name)
                    aimed = len(seen_writes) > writes_to_skip
                    if aimed:
                        break  # the chosen state write is under way: kill now
                landed = mask & IN_MOVED_TO and name == fleet.state.name
                if not landed or checked or not settled_under(fleet, supervisor.pid):
                    continue
                checked = True
                tally.settled_before_kill += 1
                check_settled(fleet, tally, iteration, before)
                # Settled in fewer writes than the one aimed at: kill it settled.
                aimed = aim_at_write
        os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        tally.kills += 1
    finally:
        watch.close()


def test_supervisor_killed_at_random_moments_keeps_state_whole_adopts_and_orphans_nothing(
    fleet: LaunchedFleet,
) -> None:
    rng = random.Random(SEED)
    tally = Tally()
    schedule = [MODES[i % len(MODES)] for i in range(ITERATIONS)]  # each mode, seeded order
    rng.shuffle(schedule)
    for iteration, mode in enumerate(schedule):
        before = ready_and_alive(fleet)
        leftovers_before = set(temp_files(fleet))
        run_until_killed(fleet, rng, tally, iteration, before, mode)
        if set(temp_files(fleet)) - leftovers_before:
            tally.during_write += 1  # the kill cut a state write short
        check_after_kill(fleet, tally, iteration)

    # The common case, made certain: a supervisor that settled is killed...
    before = ready_and_alive(fleet)
    supervisor = fleet.start_supervisor()
    wait_until_sync(lambda: settled_under(fleet, supervisor.pid), "a supervisor settles")
    check_settled(fleet, tally, ITERATIONS, before)
    os.killpg(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    tally.kills += 1
    check_after_kill(fleet, tally, ITERATIONS)
    # ...and the next one adopts every worker.
    before = ready_and_alive(fleet)
    assert len(before) == len(fleet.ports)
    supervisor = fleet.start_supervisor()
    wait_until_sync(lambda: settled_under(fleet, supervisor.pid), "the last supervisor settles")
    check_settled(fleet, tally, ITERATIONS + 1, before)
    # The settled supervisor may be saving its state right now (it saves again after it
    # settles): a write under way ends; a temp file a kill cut short never does.
    try:
        wait_until_sync(lambda: not temp_files(fleet), "the state writes under way to end")
    except AssertionError:
        tally.violations.append(f"temp files of cut-short writes left: {temp_files(fleet)}")

    down = fleet.run("down")
    assert down.returncode == 0, down.stderr + down.stdout
    supervisor.wait(timeout=30)
    fleet.engine_processes()
    left = fleet.running(fleet.seen_pids)
    orphans_stopped = fleet.supervisor_output().count(ORPHAN_NOTE)
    print(f"seed {SEED}: {tally.kills} kills, {tally.during_write} during a state write,"
          f" {tally.settled_before_kill} settled before their kill, {tally.adopted} adoptions"
          f" checked, {tally.unrecorded_after_kill} unrecorded engines left by a kill,"
          f" {orphans_stopped} stopped by the next launcher, {tally.gpu_checks} engine GPU"
          f" lists checked, {len(fleet.seen_pids)} pids seen, violations: {tally.violations}")
    assert tally.violations == []
    assert left == [], f"processes left after down: {left}"
    # The run exercised what it claims to: kills inside writes, settled restarts, adoption.
    assert tally.during_write > 0, "no kill hit a state write; the write window was not tested"
    assert tally.unrecorded_after_kill > 0 and orphans_stopped > 0, "no orphan was made"
    assert tally.adopted >= len(fleet.ports)
    assert tally.gpu_checks >= len(fleet.ports)  # GPUs were given and checked


def test_unrecorded_marked_engine_is_stopped_but_adopted_and_foreign_ones_are_not(
    tmp_path: Path,
) -> None:
    state_file = tmp_path / "state" / "state-local.json"
    state_file.parent.mkdir()

    def sleeper(mark: Path, *argv: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **engine_mark(mark, "alpha-0@local")}
        return subprocess.Popen(argv or ("sleep", "60"), env=env, start_new_session=True)

    orphan, foreign = sleeper(state_file), sleeper(tmp_path / "other" / "state-x.json")
    # An adopted engine with a helper that left for a session of its own.
    adopted = sleeper(state_file, "sh", "-c", "setsid sleep 60 & wait")
    wait_until_sync(lambda: len(psutil.Process(adopted.pid).children()) == 1, "the helper")
    helper = psutil.Process(adopted.pid).children()[0]
    try:
        assert set(marked_engine_groups(state_file)) == {orphan.pid, adopted.pid, helper.pid}
        stopped = stop_unrecorded_engines(state_file, keep={adopted.pid})
        assert stopped == {orphan.pid: "alpha-0@local"}
        orphan.wait(timeout=10)  # gone (stop_unrecorded_engines reaped it: code unknown)
        assert adopted.poll() is None and foreign.poll() is None and helper.is_running()
    finally:
        helper.kill()
        for proc in (orphan, adopted, foreign):
            proc.kill()
            proc.wait()
