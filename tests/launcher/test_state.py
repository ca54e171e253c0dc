from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil
import pytest

from modelserver.config import parse_fleet
from modelserver.errors import LaunchError
from modelserver.launcher.state import (
    HostState,
    SupervisorLock,
    SupervisorRecord,
    WorkerRecord,
    check_state_dir,
    log_tail,
    process_is,
    read_state,
    write_state,
)

# The contract with the router (/tmp/state_schema.md): exactly these keys.
WORKER_KEYS = {"name", "model", "kind", "url", "host", "port", "status", "pid", "create_time",
               "gpus", "restarts", "last_error", "started_at", "log", "waiting_for",
               "started_with"}


def _state() -> HostState:
    return HostState(
        host="local", fleet="demo", supervisor=SupervisorRecord(1, 2.0, 3.0),
        workers=[WorkerRecord(name="m-0@local", model="m", kind="chat",
                              url="http://127.0.0.1:31000", host="local", port=31000,
                              status="ready", pid=10, create_time=11.0, gpus=["GPU-a"],
                              restarts=2, last_error="killed by SIGKILL", started_at=12.0,
                              log="/x/m-0@local.log")],
    )


def test_state_file_has_exactly_the_contract_shape_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "state-local.json"
    write_state(path, _state())
    import json

    data = json.loads(path.read_text())
    assert set(data) == {"host", "fleet", "updated_at", "supervisor", "workers", "applying"}
    assert set(data["supervisor"]) == {"pid", "started_at", "create_time"}
    assert set(data["workers"][0]) == WORKER_KEYS
    # Not world-readable: it names the processes `down` signals, and errors quote engines.
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    again = read_state(path)
    assert again is not None and again.workers == _state().workers
    assert [p.name for p in tmp_path.iterdir()] == ["state-local.json"]  # no temp file left


def test_absent_state_reads_as_none_and_garbage_is_a_clear_error(tmp_path: Path) -> None:
    assert read_state(tmp_path / "nope.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LaunchError, match="not a state file"):
        read_state(tmp_path / "bad.json")


def test_a_reused_pid_is_not_the_recorded_process() -> None:
    me = psutil.Process()
    assert process_is(me.pid, me.create_time())
    assert not process_is(me.pid, me.create_time() - 100)  # same pid, another process
    assert not process_is(None, None)
    assert not process_is(2**22 + 12345, 1.0)


def test_only_one_supervisor_per_host_and_state_dir(tmp_path: Path) -> None:
    fleet = parse_fleet({"fleet": {"state_dir": str(tmp_path)}, "hosts": [{"name": "h"}]})
    first, second = SupervisorLock(fleet, "h"), SupervisorLock(fleet, "h")
    first.acquire()
    try:
        assert second.held_by_other()
        with pytest.raises(LaunchError, match=rf"supervisor \(pid {os.getpid()}\) already runs"):
            second.acquire()
    finally:
        first.release()
    assert not second.held_by_other()
    second.acquire()
    second.release()


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, max_lines=3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"host": "h", "workers": [{"name": "w"}]}', "workers[0]: a worker has no 'model'"),
        ('{"workers": {"name": "w"}}', "'workers' is dict, not a list"),
        ('{"supervisor": {"pid": "12"}}', "the supervisor's 'pid' is '12'"),
        ('{"workers": [7]}', "workers[0]: a worker is not an object"),
        ('[1, 2]', "the top level is not an object"),
    ],
)
def test_a_state_file_with_missing_or_mistyped_fields_is_a_clear_error_naming_it(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / "state-h.json"
    path.write_text(text)
    with pytest.raises(LaunchError) as caught:
        read_state(path)
    assert str(caught.value).startswith(f"{path}: not a state file a launcher wrote ({why})")
    assert "`modelserver down`" in str(caught.value)


def test_the_lock_names_its_holder_and_nobody_once_released(tmp_path: Path) -> None:
    fleet = parse_fleet({"fleet": {"state_dir": str(tmp_path)}, "hosts": [{"name": "h"}]})
    lock, other = SupervisorLock(fleet, "h"), SupervisorLock(fleet, "h")
    assert other.holder() is None  # no lock file yet
    lock.acquire()
    try:
        assert other.holder() == os.getpid()
        assert not stat.S_IMODE(lock.path.stat().st_mode) & stat.S_IRWXO
    finally:
        lock.release()
    assert other.holder() is None


def test_log_tail_redacts_secrets_even_inside_longer_ones(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("server_args=ServerArgs(api_key='sk-abc', admin_api_key='sk-abc-admin')\n")
    tail = log_tail(log, secrets=("sk-abc", "sk-abc-admin", ""))
    assert tail == "server_args=ServerArgs(api_key='***', admin_api_key='***')"


@pytest.mark.parametrize("state_dir", ["/proc/x", "/proc/x/y", "/dev/null/state"])
def test_a_state_dir_that_cannot_be_written_is_a_clear_error_naming_the_key(
    state_dir: str,
) -> None:
    fleet = parse_fleet({"fleet": {"state_dir": state_dir}, "hosts": [{"name": "h"}]},
                        source="fleet.toml")
    with pytest.raises(LaunchError, match=rf"fleet.toml: fleet.state_dir = '{state_dir}'"):
        check_state_dir(fleet)


def test_a_state_dir_that_does_not_exist_yet_under_a_writable_folder_is_fine(
    tmp_path: Path,
) -> None:
    fleet = parse_fleet({"fleet": {"state_dir": str(tmp_path / "a" / "b")},
                         "hosts": [{"name": "h"}]})
    check_state_dir(fleet)
    assert not (tmp_path / "a").exists()  # checking creates nothing
