"""One fleet of real llama.cpp workers for the whole module: `examples/cpu.toml`, copied.

The copy differs from the example only where a test must: free ports found now, its own
state folder, and the model paths of a models folder `prepare_models` filled for this run.
`modelserver up --detach` starts it as a real subprocess; the fixture's finally runs
`modelserver down` and then kills what of this fleet still runs, so nothing outlives the
module even when a test fails: a process the state file named that is still that process
(same pid and start time: a pid alone may be another process's by then), or one carrying
this fleet's state-file mark in its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelserver.launcher.processes import STATE_FILE_ENV
from modelserver.models import prepare_models
from modelserver.netinfo import free_port_range

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpu.toml"
EXAMPLE_MODELS_DIR = "~/.cache/modelserver/models"
COMMAND_TIMEOUT_S = 120.0


def running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marked_processes(state_file: Path) -> list[psutil.Process]:
    """Live processes whose environment names `state_file`: engines its launcher started."""
    wanted = str(state_file.resolve())
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(STATE_FILE_ENV) == wanted:
                found.append(proc)
    return found


def copy_cpu_example(folder: Path, models_dir: Path) -> Path:
    """examples/cpu.toml with free ports, state in `folder/state`, models from `models_dir`."""
    text = EXAMPLE.read_text(encoding="utf-8")
    example = tomllib.loads(text)
    taken: set[int] = set()
    old_to_new: dict[int, int] = {}
    for model in example["models"]:
        base = free_port_range(model["replicas"], taken)
        taken.update(range(base, base + model["replicas"]))
        old_to_new[model["port"]] = base
    old_to_new[example["gateway"]["port"]] = free_port_range(1, taken)
    for old, new in old_to_new.items():
        text, count = re.subn(rf"(?m)^(port\s*=\s*){old}\b", rf"\g<1>{new}", text)
        assert count == 1, f"port {old} appears {count} times in {EXAMPLE}"
    text, count = re.subn(
        r'(?m)^state_dir\s*=\s*".*"', f'state_dir = "{folder / "state"}"', text
    )
    assert count == 1
    assert text.count(EXAMPLE_MODELS_DIR) == len(example["models"])
    text = text.replace(EXAMPLE_MODELS_DIR, str(models_dir))
    path = folder / "cpu.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class CpuFleet:
    path: Path
    state_file: Path
    seen: dict[int, float] = field(default_factory=dict)
    """pid -> start time of every supervisor and worker the state file named: none may
    outlive `down`."""

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelserver", *args],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=self.path.parent,
        )

    def status(self) -> list[dict[str, Any]]:
        """`modelserver status FLEET --json` (and the state file's processes remembered)."""
        done = self.run("status", str(self.path), "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        self.state()
        return rows

    def state(self) -> dict[str, Any]:
        """The state file as the supervisor last wrote it (remembering its processes)."""
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        for record in [*state["workers"], state.get("supervisor") or {}]:
            if record.get("pid") and record.get("create_time"):
                self.seen[record["pid"]] = record["create_time"]
        return state

    def still_running(self) -> list[psutil.Process]:
        """What of this fleet still runs: processes the state file named (still the same
        ones) and processes carrying its mark."""
        found = {proc.pid: proc for proc in marked_processes(self.state_file)}
        for pid, started in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - started) < 0.01 and running(pid):
                    found[pid] = proc
        return sorted(found.values(), key=lambda proc: proc.pid)

    def worker(self, name: str) -> dict[str, Any]:
        return next(w for w in self.state()["workers"] if w["name"] == name)


@pytest.fixture(scope="module")
def cpu_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpuFleet]:
    folder = tmp_path_factory.mktemp("cpu-fleet")
    models = prepare_models(folder / "models")
    path = copy_cpu_example(folder, models.chat_path.parent)
    fleet = CpuFleet(path, folder / "state" / "state-local.json")
    try:
        up = fleet.run("up", str(path), "--detach")
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        fleet.state()
        yield fleet
    finally:
        _stop_everything(fleet)


def _stop_everything(fleet: CpuFleet) -> None:
    with contextlib.suppress(Exception):
        fleet.state()
    if fleet.still_running():
        with contextlib.suppress(Exception):
            fleet.run("down", str(fleet.path))
    for proc in fleet.still_running():  # `down` failed or was not reached: stop it ourselves
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            leads_group = os.getpgid(proc.pid) == proc.pid
            proc.kill()  # psutil refuses if the pid is no longer this process
            if leads_group:  # engines and the supervisor run in sessions of their own
                os.killpg(proc.pid, signal.SIGKILL)
