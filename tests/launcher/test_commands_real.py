"""`modelserver up / status / down / logs` with real processes: simulated engines on free ports.

Every test waits on the state file (a condition with a deadline), never on a fixed sleep, and
its fixture runs `down` and then kills whatever the state file still names.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelserver.netinfo import free_port_range

DEADLINE_S = 60.0
SECRET = "sk-launcher-test-secret"



def running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Fleet:
    path: Path
    state: Path

    def run(self, *args: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelserver", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.path.parent,
        )

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.state.read_text()))

    def workers(self) -> dict[str, dict[str, Any]]:
        return {w["name"]: w for w in self.read()["workers"]}

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = self.read()
                if condition(state):
                    return state
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; state: {self.state.read_text()}")


def _write_fleet(tmp_path: Path, models: str, hosts: str = "") -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[fleet]
name = "launcher-test"
state_dir = "{tmp_path / "state"}"

[[hosts]]
name = "local"
address = "127.0.0.1"
gpus = "none"
{hosts}

{models}

[launcher]
backoff_initial_s = 0.05
backoff_max_s = 0.2
max_restarts = 2
health_interval_s = 0.5
ready_poll_s = 0.1
ready_timeout_s = 30
stop_grace_s = 5
""")
    return Fleet(path, tmp_path / "state" / "state-local.json")


def _sim(name: str, **extra: str) -> str:
    lines = [f'name = "{name}"', 'backend = "sim"', f"port = {free_port_range()}"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "[[models]]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(models: str, hosts: str = "") -> Fleet:
        made.append(_write_fleet(tmp_path, models, hosts))
        return made[-1]

    yield make
    for fleet in made:
        with contextlib.suppress(Exception):
            if _pids(fleet):  # a test that ran `down` itself leaves nothing to do
                fleet.run("down", str(fleet.path))
        with contextlib.suppress(Exception):
            for pid in _pids(fleet):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _pids(fleet: Fleet) -> list[int]:
    """Processes the state file names that still run (supervisor and workers)."""
    try:
        state = fleet.read()
    except FileNotFoundError:
        return []
    pids = [w["pid"] for w in state["workers"]]
    pids.append((state.get("supervisor") or {}).get("pid"))
    return [pid for pid in pids if running(pid)]


def _all_ready(state: dict[str, Any]) -> bool:
    return bool(state["workers"]) and all(w["status"] == "ready" for w in state["workers"])


def test_up_detach_then_status_json_then_down_leaves_no_process(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny", api_key=f'"{SECRET}"') + _sim("other"))
    up = fleet.run("up", str(fleet.path), "--detach")
    assert up.returncode == 0, up.stderr + up.stdout
    state = fleet.read()
    assert _all_ready(state)
    supervisor = state["supervisor"]["pid"]
    pids = [w["pid"] for w in state["workers"]]
    assert running(supervisor) and all(running(p) for p in pids)
    # Each worker leads its own session, so its group can be signalled as a whole.
    assert all(os.getsid(p) == p for p in pids)

    status = fleet.run("status", str(fleet.path), "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert {r["model"] for r in rows} == {"tiny", "other"}
    required = {"model", "url", "host", "status", "pid", "restarts", "gpus", "last_error"}
    for row in rows:
        assert required <= set(row)
        assert row["status"] == "ready" and row["host"] == "local" and row["restarts"] == 0
    # The engine's key is never shown: not by status, not in the state file, not in the log.
    log_file = fleet.state.parent / "logs" / "tiny-0@local.log"
    assert log_file.stat().st_mode & 0o002 == 0  # not world-writable
    log = log_file.read_text()
    assert SECRET not in status.stdout + fleet.state.read_text() + log
    # Nor on an engine's command line, which every user of the host can read with `ps`.
    for pid in pids:
        assert SECRET not in " ".join(psutil.Process(pid).cmdline())

    down = fleet.run("down", str(fleet.path))
    assert down.returncode == 0, down.stderr
    assert not running(supervisor) and not any(running(p) for p in pids)
    after = fleet.read()
    assert after["supervisor"] is None
    assert {w["status"] for w in after["workers"]} == {"stopped"}


def test_a_worker_killed_with_sigkill_comes_back(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(_sim("tiny"))
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    [before] = fleet.read()["workers"]
    os.kill(before["pid"], signal.SIGKILL)
    state = fleet.wait_for(
        lambda s: s["workers"][0]["restarts"] == 1 and s["workers"][0]["status"] == "ready",
        "the killed worker to be ready again",
    )
    [after] = state["workers"]
    assert after["pid"] != before["pid"] and running(after["pid"])
    assert after["last_error"] == "killed by SIGKILL"


def test_a_worker_crashing_on_every_start_ends_failed_with_its_log_tail(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("good") + _sim("broken", options='{ fault = "crash-at=0" }'))
    up = fleet.run("up", str(fleet.path), "--detach")
    assert up.returncode != 0
    assert "broken-0@local failed" in up.stderr
    workers = fleet.workers()
    broken = workers["broken-0@local"]
    assert broken["status"] == "failed" and broken["restarts"] == 2 and broken["pid"] is None
    assert broken["last_error"].startswith("exited with code")
    assert "--- log tail ---" in broken["last_error"]
    assert "crash" in broken["last_error"].split("--- log tail ---")[1]
    assert workers["good-0@local"]["status"] == "ready"  # the others keep running


def test_a_relaunched_launcher_adopts_its_live_workers(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(_sim("tiny") + _sim("other"))
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    first = fleet.read()
    pids = {w["name"]: w["pid"] for w in first["workers"]}
    old_supervisor = first["supervisor"]["pid"]
    os.kill(old_supervisor, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while running(old_supervisor) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(running(p) for p in pids.values())  # own sessions: they outlive the launcher

    again = fleet.run("up", str(fleet.path), "--detach")
    assert again.returncode == 0, again.stderr
    second = fleet.read()
    assert second["supervisor"]["pid"] != old_supervisor
    assert {w["name"]: w["pid"] for w in second["workers"]} == pids  # adopted, not restarted
    assert all(w["restarts"] == 0 for w in second["workers"])

    # The adopted workers are watched like children: a crash is still noticed.
    os.kill(pids["tiny-0@local"], signal.SIGKILL)
    fleet.wait_for(
        lambda s: any(
            w["name"] == "tiny-0@local" and w["restarts"] == 1 and w["status"] == "ready"
            for w in s["workers"]
        ),
        "the adopted worker to be restarted",
    )


def test_foreground_up_stops_every_worker_on_sigterm(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(_sim("tiny"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelserver", "up", str(fleet.path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=fleet.path.parent,
    )
    try:
        state = fleet.wait_for(_all_ready, "every worker to be ready")
        pid = state["workers"][0]["pid"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
        assert not running(pid)
        assert fleet.workers()["tiny-0@local"]["status"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_logs_resolves_a_prefix_and_a_second_up_is_refused(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny"))
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    logs = fleet.run("logs", str(fleet.path), "tiny-0")
    assert logs.returncode == 0 and "modelserver starts" in logs.stdout
    url = fleet.workers()["tiny-0@local"]["url"]
    assert fleet.run("logs", str(fleet.path), url).stdout == logs.stdout
    twice = fleet.run("up", str(fleet.path), "--detach")
    assert twice.returncode == 2 and "already runs" in twice.stderr


def test_down_stops_the_workers_of_a_launcher_killed_with_sigkill(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny"))
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    state = fleet.read()
    pid = state["workers"][0]["pid"]
    os.kill(state["supervisor"]["pid"], signal.SIGKILL)
    down = fleet.run("down", str(fleet.path))
    assert down.returncode == 0, down.stderr
    assert not running(pid)
    assert fleet.workers()["tiny-0@local"]["status"] == "stopped"


@pytest.fixture
def far_engine(tmp_path: Path) -> Iterator[int]:
    """A simulated engine this test runs itself, standing for a worker on another host."""
    port = free_port_range()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelserver", "sim", "--port", str(port), "--model", "far"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_status_probes_the_workers_of_other_hosts(
    make_fleet: Callable[..., Fleet],
    far_engine: int,
) -> None:
    # Host "far" is reached over HTTP; both hosts use 127.0.0.1 so traffic stays local.
    far = """
[[hosts]]
name = "far"
address = "127.0.0.1"
"""
    models = (
        _sim("tiny").replace("[[models]]", '[[models]]\nhosts = ["local"]')
        + f'[[models]]\nname = "far"\nbackend = "sim"\nport = {far_engine}\nhosts = ["far"]\n'
        + f'[[models]]\nname = "gone"\nbackend = "sim"\nport = {free_port_range()}\n'
        'hosts = ["far"]\n'
    )
    fleet = make_fleet(models, far)
    status = fleet.run("status", str(fleet.path), "--host", "local", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert rows["tiny-0@local"]["status"] == "stopped"  # nothing launched here
    assert rows["far-0@far"]["status"] == "ready"
    assert rows["gone-0@far"]["status"] == "unreachable"
    assert "GET /health" in rows["gone-0@far"]["last_error"]
