"""`modelserver up FLEET --detach` on a bad fleet file: one clear message naming the file and
the key (or the worker and the reason), a non-zero exit, and nothing started: no process, no
state file, no supervisor log.

Every mistake of the config suite's table (`CASES`) goes through `up` in this process (the
console command's own `main()`, so cheap enough for all of them), and through `validate`
and `gateway`, which must refuse the same file with the same message; a few also go through
a real `modelserver up` process. The rest only the launcher can see: GPUs a static inventory does
not have, more GPUs than it has, a llama.cpp GGUF that is not there, a port a foreign
process holds, a state folder that cannot be made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from modelserver import cli
from modelserver.netinfo import free_port_range
from tests.config.test_bad_fleet_files import CASES

# Through a real process as well: syntax, a strict type, a backend option, a port clash.
IN_A_PROCESS = {
    "bad toml syntax",
    "port a boolean",
    "negative sim speed",
    "localhost and 127.0.0.1 hosts share a port",
}

# Two GPUs written out in the fleet file, so placement needs no NVML.
INVENTORY = """
inventory = [
  { index = 0, total_gib = 80 },
  { index = 1, total_gib = 80 },
]
"""


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Ran]


@pytest.fixture
def modelserver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    """`modelserver ARGS...` in this process, from the fleet file's folder."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Ran:
        monkeypatch.setattr(sys, "argv", ["modelserver", *args])
        with pytest.raises(SystemExit) as exited:  # a refused file exits non-zero
            cli.main()
        captured = capsys.readouterr()
        code = exited.value.code
        return Ran(code if isinstance(code, int) else 1, captured.out, captured.err)

    yield run
    _stop_whatever_started(tmp_path)


def run_up_process(fleet: Path) -> Ran:
    done = subprocess.run(
        [sys.executable, "-m", "modelserver", "up", str(fleet), "--detach"],
        capture_output=True, text=True, timeout=60, cwd=fleet.parent,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def processes_mentioning(folder: Path) -> list[psutil.Process]:
    """Every live process whose command line names a path under `folder` (ours would)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmdline and proc.info["pid"] != os.getpid():
            found.append(proc)
    return found


def _stop_whatever_started(folder: Path) -> None:
    """Only if a test failed to refuse: stop the supervisor and engines it started."""
    started = processes_mentioning(folder)
    for proc in started:
        proc.terminate()
    _, alive = psutil.wait_procs(started, timeout=10)
    for proc in alive:
        proc.kill()


def assert_refused_and_nothing_started(fleet: Path, done: Ran, *words: str) -> None:
    message = done.stderr
    assert done.returncode != 0, done.stdout + done.stderr
    assert str(fleet.name) in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in done.stdout + done.stderr
    state = fleet.parent / ".modelserver"
    assert not list(state.glob("state-*.json")) if state.exists() else True
    assert not (state / "logs").exists(), "a supervisor or worker log was started"
    assert [" ".join(p.cmdline()) for p in processes_mentioning(fleet.parent)] == []


@pytest.mark.parametrize(
    ("text", "key", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_fleet_file_mistake_stops_up_before_anything_starts_and_validate_and_gateway_agree(
    tmp_path: Path, modelserver: Run, text: str, key: str, words: list[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(text)
    up = modelserver("up", str(fleet), "--detach")
    assert_refused_and_nothing_started(fleet, up, key, *words)
    for command in ("validate", "gateway"):
        refused = modelserver(command, str(fleet))
        assert (refused.returncode, refused.stderr) == (up.returncode, up.stderr), command


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [c[1:] for c in CASES if c[0] in IN_A_PROCESS],
    ids=[c[0] for c in CASES if c[0] in IN_A_PROCESS],
)
def test_a_fleet_file_mistake_stops_a_real_up_process(
    tmp_path: Path, text: str, key: str, words: list[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(text)
    assert_refused_and_nothing_started(fleet, run_up_process(fleet), key, *words)


def test_every_process_case_is_in_the_table() -> None:
    assert {c[0] for c in CASES} >= IN_A_PROCESS


def _gpu_fleet(tmp_path: Path, model: str) -> Path:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[hosts]]\nname = "h"\naddress = "127.0.0.1"\n{INVENTORY}\n{model}')
    return fleet


def test_a_gpu_the_static_inventory_does_not_have(tmp_path: Path, modelserver: Run) -> None:
    fleet = _gpu_fleet(
        tmp_path,
        f'[[models]]\nname = "m"\nbackend = "sglang"\npath = "org/model"\n'
        f"port = {free_port_range()}\ngpus = [5]\n",
    )
    done = modelserver("up", str(fleet), "--detach")
    assert_refused_and_nothing_started(fleet, done, "models[0]", "m-0@h", "GPU 5 does not exist")


def test_replicas_times_gpus_more_than_the_inventory_has(
    tmp_path: Path, modelserver: Run
) -> None:
    fleet = _gpu_fleet(
        tmp_path,
        f'[[models]]\nname = "m"\nbackend = "vllm"\npath = "org/model"\n'
        f"port = {free_port_range()}\nreplicas = 2\ngpus_per_replica = 2\n",
    )
    done = modelserver("up", str(fleet), "--detach")
    assert_refused_and_nothing_started(fleet, done, "models[0].replicas", "2 × 2 = 4", "has 2")


def test_two_models_needing_more_gpus_together_than_the_inventory_has(
    tmp_path: Path, modelserver: Run
) -> None:
    model = '[[models]]\nname = "{name}"\nbackend = "sglang"\npath = "org/m"\nport = {port}\n'
    fleet = _gpu_fleet(
        tmp_path,
        model.format(name="a", port=free_port_range()) + "gpus_per_replica = 2\n"
        + model.format(name="b", port=free_port_range()),
    )
    done = modelserver("up", str(fleet), "--detach")
    assert_refused_and_nothing_started(fleet, done, "need 3 GPUs", "a: 2", "b: 1", "has 2")


def test_a_llamacpp_model_file_that_does_not_exist(tmp_path: Path, modelserver: Run) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[hosts]]\nname = "h"\naddress = "127.0.0.1"\n'
        f'[[models]]\nname = "m"\nbackend = "llamacpp"\npath = "./weights/m.gguf"\n'
        f"port = {free_port_range()}\n"
    )
    done = modelserver("up", str(fleet), "--detach")
    missing = str(tmp_path / "weights" / "m.gguf")
    assert_refused_and_nothing_started(fleet, done, "models[0].path", missing, "does not exist")


def test_a_llamacpp_path_that_is_a_folder(tmp_path: Path, modelserver: Run) -> None:
    (tmp_path / "weights").mkdir()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[hosts]]\nname = "h"\naddress = "127.0.0.1"\n'
        f'[[models]]\nname = "m"\nbackend = "llamacpp"\npath = "./weights"\n'
        f"port = {free_port_range()}\n"
    )
    done = modelserver("up", str(fleet), "--detach")
    assert_refused_and_nothing_started(fleet, done, "models[0].path", "not a file")


def test_a_state_folder_that_cannot_be_made(tmp_path: Path, modelserver: Run) -> None:
    # A path through a regular file cannot become a folder, even for root.
    (tmp_path / "blocker").write_text("x")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[fleet]\nstate_dir = "blocker/state"\n[[hosts]]\nname = "h"\naddress = "127.0.0.1"\n'
        f'[[models]]\nname = "m"\nbackend = "sim"\nport = {free_port_range()}\n'
    )
    done = modelserver("up", str(fleet), "--detach")
    assert_refused_and_nothing_started(fleet, done, "fleet.state_dir", "blocker")


@pytest.fixture
def foreign_listener() -> Iterator[int]:
    """A port someone else (this test process, not the launcher) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_held_by_a_foreign_process(tmp_path: Path, foreign_listener: int) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[hosts]]\nname = "h"\naddress = "127.0.0.1"\n'
        f'[[models]]\nname = "ok"\nbackend = "sim"\nport = {free_port_range()}\n'
        f'[[models]]\nname = "m"\nbackend = "sim"\nport = {foreign_listener}\n'
    )
    done = run_up_process(fleet)
    assert_refused_and_nothing_started(
        fleet, done, "models[1].port", "m-0@h", str(foreign_listener), f"pid {os.getpid()}"
    )
