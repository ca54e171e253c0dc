"""The launcher's supervisor killed with SIGKILL at random moments, many times (seeded).

Each iteration starts the supervisor (`up --supervise`, the process `up --detach` leaves in the
background) on a fleet of three simulated engines and kills it, by a seeded draw:

- after a random delay (0 to 5 s: a cold start settles in about 4 s, an adopting one in 1.5);
- the moment a state write is under way (a temporary file beside the state file exists: the
  window of `_files.atomic_write_bytes` between writing the temp file and renaming it);
- the same, at the n-th write (n = 1..3), with every write slowed by 50 ms through
  `MODELSERVER_TEST_WRITE_PAUSE_S` so the kill surely lands inside it. The write after an
  engine is spawned is the one that records its pid, so these kills also leave engines that
  no state file names: the next launcher must stop them.

After every kill:

- the state file parses (never half-written);
- no port has two listeners and no port two engine processes;

and when a restarted supervisor settles before its own kill:

- every worker that was ready and alive when it started keeps its pid (adopted, not restarted);
- there is exactly one engine process per worker, each recorded in the state file (an
  engine the killed supervisor had started but not yet recorded is not left running).

Then a supervisor settles and is killed (the common case, made certain), the next one must
adopt every worker, `down` runs, and no process ever seen (supervisor or engine, recorded or
observed) still runs. `MODELSERVER_CRASH_SEED` and
`MODELSERVER_CRASH_ITERATIONS` change the seed and the count (bench/crash_consistency.py runs
more).
"""

from __future__ import annotations

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

from modelserver.processes import engine_mark, marked_engine_groups, stop_unrecorded_engines
from tests.reliability.launched import DEADLINE_S, LaunchedFleet, SimModel, write_fleet
from tests.waiting import wait_until_sync

SEED = int(os.environ.get("MODELSERVER_CRASH_SEED", "8"))
ITERATIONS = int(os.environ.get("MODELSERVER_CRASH_ITERATIONS", "16"))
MAX_KILL_DELAY_S = 5.0
SLOWED_WRITES = {"MODELSERVER_TEST_WRITE_PAUSE_S": "0.05"}
ORPHAN_NOTE = "started by a launcher that died before recording it"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LaunchedFleet]:
    launched = write_fleet(tmp_path, [SimModel("alpha", replicas=2), SimModel("beta")])
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


def run_until_killed(
    fleet: LaunchedFleet, rng: random.Random, tally: Tally, iteration: int,
    before: dict[str, int],
) -> None:
    """Start a supervisor and kill it at its moment, checking adoption if it settles first."""
    mode = rng.choice(("delay", "write", "slowed write"))
    aim_at_write = mode != "delay"
    slowed = mode == "slowed write"
    # Every start writes the state at least three times (each worker starts or is adopted),
    # so a slowed run always reaches the write it aims at; the deadline is only a guard.
    writes_to_skip = rng.randrange(3) if slowed else 0
    supervisor = fleet.start_supervisor(SLOWED_WRITES if slowed else None)
    delay = DEADLINE_S if slowed else rng.uniform(0.0, MAX_KILL_DELAY_S)
    deadline = time.monotonic() + delay
    checked = False
    seen_writes: set[str] = set()
    while time.monotonic() < deadline:
        if aim_at_write:
            writing = temp_files(fleet)
            seen_writes.update(writing)
            if writing and len(seen_writes) > writes_to_skip:
                break  # the chosen state write is under way: kill now
        if not checked and not aim_at_write and settled_under(fleet, supervisor.pid):
            checked = True
            tally.settled_before_kill += 1
            check_settled(fleet, tally, iteration, before)
        if supervisor.poll() is not None:
            tally.violations.append(f"#{iteration}: supervisor exited by itself"
                                    f" (code {supervisor.returncode})")
            return
    os.killpg(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    tally.kills += 1


def test_supervisor_killed_at_random_moments_keeps_state_whole_adopts_and_orphans_nothing(
    fleet: LaunchedFleet,
) -> None:
    rng = random.Random(SEED)
    tally = Tally()
    for iteration in range(ITERATIONS):
        before = ready_and_alive(fleet)
        leftovers_before = set(temp_files(fleet))
        run_until_killed(fleet, rng, tally, iteration, before)
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
    if temp_files(fleet):
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
          f" {orphans_stopped} stopped by the next launcher, {len(fleet.seen_pids)} pids seen,"
          f" violations: {tally.violations}")
    assert tally.violations == []
    assert left == [], f"processes left after down: {left}"
    # The run exercised what it claims to: kills inside writes, settled restarts, adoption.
    assert tally.during_write > 0, "no kill hit a state write; the write window was not tested"
    assert tally.adopted >= len(fleet.ports)


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
