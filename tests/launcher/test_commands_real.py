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


@contextlib.contextmanager
def killed_at_end(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """`proc`, killed if it still runs and reaped when the block ends, however it ends."""
    try:
        yield proc
    finally:
        proc.kill()  # a no-op once it was waited for
        proc.wait()


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


def _write_fleet(
    tmp_path: Path, models: str, hosts: str = "", launcher: str = "", gpus: str = "none"
) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[fleet]
name = "launcher-test"
state_dir = "{tmp_path / "state"}"

[[hosts]]
name = "local"
address = "127.0.0.1"
gpus = "{gpus}"
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
{launcher}
""")
    return Fleet(path, tmp_path / "state" / "state-local.json")


def _sim(name: str, **extra: str) -> str:
    lines = [f'name = "{name}"', 'backend = "sim"', f"port = {free_port_range()}"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "[[models]]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(models: str, hosts: str = "", launcher: str = "", gpus: str = "none") -> Fleet:
        made.append(_write_fleet(tmp_path, models, hosts, launcher, gpus))
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
    assert f"stopped local: supervisor pid {supervisor}, 2 running workers" in down.stdout
    assert not running(supervisor) and not any(running(p) for p in pids)
    after = fleet.read()
    assert after["supervisor"] is None
    assert {w["status"] for w in after["workers"]} == {"stopped"}
    again = fleet.run("down", str(fleet.path))
    assert again.returncode == 0 and "nothing runs on local" in again.stdout, again.stdout


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_foreground_up_stops_every_worker_on_sigterm_and_on_sighup(
    make_fleet: Callable[..., Fleet], signum: int
) -> None:
    fleet = make_fleet(_sim("tiny"))
    with killed_at_end(subprocess.Popen(
        [sys.executable, "-m", "modelserver", "up", str(fleet.path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=fleet.path.parent,
    )) as proc:
        state = fleet.wait_for(_all_ready, "every worker to be ready")
        pid = state["workers"][0]["pid"]
        proc.send_signal(signum)  # SIGHUP: its terminal closed; no worker may outlive it
        assert proc.wait(timeout=DEADLINE_S) == 0
        assert not running(pid)
        assert fleet.workers()["tiny-0@local"]["status"] == "stopped"


def test_logs_resolves_a_prefix_and_a_second_up_of_the_same_file_changes_nothing(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny"))
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    logs = fleet.run("logs", str(fleet.path), "tiny-0")
    assert logs.returncode == 0 and "modelserver starts" in logs.stdout
    url = fleet.workers()["tiny-0@local"]["url"]
    assert fleet.run("logs", str(fleet.path), url).stdout == logs.stdout
    before = fleet.read()
    twice = fleet.run("up", str(fleet.path), "--detach")
    assert twice.returncode == 0, twice.stderr
    assert "local: nothing to change (1 workers as the file says)" in twice.stdout
    after = fleet.read()
    assert after["supervisor"]["pid"] == before["supervisor"]["pid"]
    assert after["workers"][0]["pid"] == before["workers"][0]["pid"]
    assert after["applying"] is None  # the supervisor was not even asked


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
    with killed_at_end(subprocess.Popen(
        [sys.executable, "-m", "modelserver", "sim", "--port", str(port), "--model", "far"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )):
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield port


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


@pytest.fixture
def held_port() -> Iterator[tuple[socket.socket, int]]:
    """A port this test process listens on: another program's, for the launcher."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock, int(sock.getsockname()[1])
    finally:
        sock.close()


WAITING_LAUNCHER = "wait_for_gpus_s = 40\nplacement_poll_s = 0.2\n"


def _start_detached(fleet: Fleet) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelserver", "up", str(fleet.path), "--detach"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=fleet.path.parent,
    )


def _one_waits_for_the_port(port: int) -> Callable[[dict[str, Any]], bool]:
    def check(state: dict[str, Any]) -> bool:
        workers = {w["name"]: w for w in state["workers"]}
        blocked = workers.get("blocked-0@local", {})
        return (
            workers.get("free-0@local", {}).get("status") == "ready"
            and blocked.get("status") == "waiting"
            and f"port {port} is in use by pid {os.getpid()}" in (blocked["waiting_for"] or "")
        )

    return check


def test_a_worker_waiting_for_a_port_is_seen_by_status_and_down_stops_it_before_it_starts(
    make_fleet: Callable[..., Fleet], held_port: tuple[socket.socket, int]
) -> None:
    sock, port = held_port
    fleet = make_fleet(_sim("free") + f'[[models]]\nname = "blocked"\nbackend = "sim"\n'
                       f"port = {port}\n", launcher=WAITING_LAUNCHER)
    with killed_at_end(_start_detached(fleet)) as up:
        # The placeable worker does not wait for the blocked one.
        state = fleet.wait_for(_one_waits_for_the_port(port), "one ready, one waiting")
        supervisor = state["supervisor"]["pid"]
        rows = {r["name"]: r for r in json.loads(
            fleet.run("status", str(fleet.path), "--json").stdout)}
        assert rows["blocked-0@local"]["status"] == "waiting"
        assert f"port {port} is in use" in rows["blocked-0@local"]["waiting_for"]
        table = fleet.run("status", str(fleet.path))
        assert f"supervisor of local: pid {supervisor}" in table.stdout
        assert "waiting" in table.stdout

        down = fleet.run("down", str(fleet.path))
        assert down.returncode == 0, down.stderr
        assert f"stopped local: supervisor pid {supervisor}" in down.stdout
        assert not running(supervisor)
        assert up.wait(timeout=DEADLINE_S) == 1  # its supervisor ended before all were ready
    sock.close()  # the port is free now: nobody is left to start the worker on it
    after = fleet.workers()
    assert {w["status"] for w in after.values()} == {"stopped"}
    assert all(w["pid"] is None for w in after.values())
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there


def test_a_worker_waiting_for_a_port_starts_once_it_is_free(
    make_fleet: Callable[..., Fleet], held_port: tuple[socket.socket, int]
) -> None:
    sock, port = held_port
    fleet = make_fleet(_sim("free") + f'[[models]]\nname = "blocked"\nbackend = "sim"\n'
                       f"port = {port}\n", launcher=WAITING_LAUNCHER)
    with killed_at_end(_start_detached(fleet)) as up:
        fleet.wait_for(_one_waits_for_the_port(port), "one ready, one waiting")
        sock.close()
        out, err = up.communicate(timeout=DEADLINE_S)
        assert up.returncode == 0, out + err
    workers = fleet.workers()
    assert workers["blocked-0@local"]["status"] == "ready"
    assert workers["blocked-0@local"]["waiting_for"] is None
    assert running(workers["blocked-0@local"]["pid"])


def test_when_every_worker_fails_up_detach_shows_each_reason_and_exits_1(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("broken", options='{ fault = "crash-at=0" }'))
    up = fleet.run("up", str(fleet.path), "--detach")
    assert up.returncode == 1, up.stdout + up.stderr
    assert "broken-0@local failed:" in up.stderr and "exited with code" in up.stderr
    assert "before every worker was ready" not in up.stderr
    assert "failed" in up.stdout  # the table of what each worker came to
    assert fleet.workers()["broken-0@local"]["status"] == "failed"


def _nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_nvml_works(), reason="needs a machine without NVML")
def test_without_nvml_up_starts_the_cpu_workers_and_fails_the_gpu_ones(
    make_fleet: Callable[..., Fleet],
) -> None:
    # A vLLM "installed" (an executable that exists) so only the missing GPUs stop it.
    gpu_model = (f'[[models]]\nname = "big"\nbackend = "vllm"\npath = "org/big"\n'
                 f"port = {free_port_range()}\noptions = {{ executable = '{sys.executable}' }}\n")
    fleet = make_fleet(_sim("tiny") + gpu_model, gpus="all")
    up = fleet.run("up", str(fleet.path), "--detach")
    assert up.returncode == 1, up.stdout + up.stderr
    assert "big-0@local failed:" in up.stderr and "NVML" in up.stderr
    workers = fleet.workers()
    assert workers["tiny-0@local"]["status"] == "ready"
    assert workers["big-0@local"]["status"] == "failed"
    assert workers["big-0@local"]["restarts"] == 0  # refused at once, not retried
    assert not (fleet.state.parent / "logs" / "big-0@local.log").exists()  # never spawned


def _sglang_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang") is not None


@pytest.mark.skipif(_sglang_installed(), reason="needs a machine without SGLang")
def test_an_engine_that_is_not_installed_fails_its_workers_at_once_and_others_start(
    make_fleet: Callable[..., Fleet],
) -> None:
    sglang = (f'[[models]]\nname = "big"\nbackend = "sglang"\npath = "org/big"\n'
              f"port = {free_port_range()}\ngpus_per_replica = 0\n")
    fleet = make_fleet(_sim("tiny") + sglang)
    up = fleet.run("up", str(fleet.path), "--detach")
    assert up.returncode == 1, up.stdout + up.stderr
    assert "big-0@local failed:" in up.stderr and "SGLang is not installed" in up.stderr
    workers = fleet.workers()
    assert workers["tiny-0@local"]["status"] == "ready"
    assert workers["big-0@local"]["restarts"] == 0  # no backoff through max_restarts
    fleet.run("down", str(fleet.path))
    # With nothing else to run, the whole host is refused before anything starts.
    only = make_fleet(sglang.replace('"big"', '"only"'))
    refused = only.run("up", str(only.path), "--detach")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "nothing started on host 'local'" in refused.stderr
    assert "models[0] (only-0@local): SGLang is not installed" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_state_file_missing_fields_is_a_clear_error_and_down_still_stops_its_engines(
    make_fleet: Callable[..., Fleet],
) -> None:
    from modelserver.launcher.processes import engine_mark

    fleet = make_fleet(_sim("tiny"))
    fleet.state.parent.mkdir(parents=True)
    fleet.state.write_text('{"host": "local", "workers": [{"name": "tiny-0@local"}]}')
    mark = engine_mark(fleet.state, "tiny-0@local")
    with killed_at_end(subprocess.Popen(["sleep", "60"], start_new_session=True,
                                        env={**os.environ, **mark})) as engine:
        status = fleet.run("status", str(fleet.path))
        assert status.returncode == 2
        assert f"{fleet.state}: not a state file a launcher wrote" in status.stderr
        assert "Traceback" not in status.stdout + status.stderr
        down = fleet.run("down", str(fleet.path))
        assert down.returncode == 0, down.stdout + down.stderr
        assert engine.wait(timeout=DEADLINE_S) == -signal.SIGKILL  # found by its mark
        assert "Traceback" not in down.stdout + down.stderr
        assert fleet.read()["workers"] == []  # replaced by a state file that reads
        assert fleet.run("status", str(fleet.path)).returncode == 0


def test_an_unwritable_state_dir_is_a_clear_error_naming_the_key(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny"))
    fleet.path.write_text(fleet.path.read_text().replace(
        f'state_dir = "{fleet.state.parent}"', 'state_dir = "/proc/x"'))
    up = fleet.run("up", str(fleet.path), "--detach")
    assert up.returncode == 2
    assert "fleet.toml: fleet.state_dir = '/proc/x'" in up.stderr
    assert "Traceback" not in up.stdout + up.stderr


def test_the_supervisor_rotates_a_growing_log_and_logs_supervisor_shows_its_own(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny"), launcher="log_max_bytes = 2048\nlog_keep = 2\n"
                                             "log_check_s = 0.1")
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    log = Path(fleet.workers()["tiny-0@local"]["log"])
    # Written as the engine writes it: appended to the same file.
    with open(log, "a") as engine_side:
        for batch in range(3):
            engine_side.write("x" * 3000 + f" batch {batch}\n")  # its end is kept
            engine_side.flush()
            older = log.with_name(f"{log.name}.1")
            deadline = time.monotonic() + DEADLINE_S
            while not (older.exists() and f" batch {batch}\n".encode() in older.read_bytes()):
                assert time.monotonic() < deadline, f"batch {batch} was not rotated"
                time.sleep(0.05)
    names = sorted(p.name for p in log.parent.iterdir() if p.name.startswith(log.name))
    assert names == [log.name, f"{log.name}.1", f"{log.name}.2"]
    assert all((log.parent / name).stat().st_size <= 2048 for name in names[1:])
    own = fleet.run("logs", str(fleet.path), "--supervisor")
    assert own.returncode == 0 and "tiny-0@local ready" in own.stdout, own.stdout + own.stderr
    neither = fleet.run("logs", str(fleet.path))
    assert neither.returncode == 2 and "--supervisor" in neither.stderr


def test_an_engine_outliving_its_launcher_writes_its_own_log_and_the_next_launcher_trims_it(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(_sim("tiny"), launcher="log_max_bytes = 2048\nlog_check_s = 0.1")
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    first = fleet.read()
    [worker] = first["workers"]
    os.kill(first["supervisor"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while running(first["supervisor"]["pid"]):
        assert time.monotonic() < deadline, "the supervisor outlived SIGKILL"
        time.sleep(0.05)
    # The engine's stdout and stderr are the log file itself, not a pipe to the dead launcher.
    log = Path(worker["log"])
    for fd in (1, 2):
        assert os.readlink(f"/proc/{worker['pid']}/fd/{fd}") == str(log.resolve())
    with open(log, "a") as engine_side:  # what it writes meanwhile piles up...
        engine_side.write("x" * 3000 + " while no launcher ran\n")
    assert fleet.run("up", str(fleet.path), "--detach").returncode == 0
    assert fleet.workers()["tiny-0@local"]["pid"] == worker["pid"]  # adopted
    older = log.with_name(f"{log.name}.1")  # ...until the next launcher trims it
    while not (older.exists() and b"while no launcher ran" in older.read_bytes()):
        assert time.monotonic() < deadline + DEADLINE_S, "the adopted worker's log not rotated"
        time.sleep(0.05)
    assert older.stat().st_size <= 2048
