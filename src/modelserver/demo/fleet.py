"""The demo's fleet: what runs, written as a fleet file, started and stopped by the launcher.

Real llama.cpp workers (the tiny chat model, MiniLM embeddings) and simulated SGLang engines
standing in for GPU servers, on free ports of this machine. `modelserver up --detach` starts
them (the supervisor restarts a killed worker), `modelserver down` stops them; both run as
subprocesses, exactly as a user types them. Every process the state file ever names is
remembered by pid and start time, so the end can check that none still runs, and never
mistakes (or kills) another process that got one of those pids since.

The fleet file is exactly what the demo runs and routes: `llama-8b` is one model of three
simulated replicas, the third at half speed (the sim backend's per-replica `speeds`), and
the demo's router is the one the file describes, so `modelserver up` and `modelserver
gateway` on the file left behind reproduce it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from modelserver.config import Fleet, load_fleet
from modelserver.errors import LaunchError
from modelserver.launcher.processes import marked_engine_groups, stop_unrecorded_engines
from modelserver.launcher.state import HostState, WorkerRecord, process_is, read_state, state_path
from modelserver.models import PreparedModels
from modelserver.netinfo import free_port_range
from modelserver.routing.entries import WorkerEntry

HOST = "local"
FLEET_FILE = "fleet.toml"
UP_TIMEOUT_S = 120.0
DOWN_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo fleet file and what it stands for."""

    name: str
    kind: str
    backend: str
    replicas: int
    engine: str
    """How the live view describes one of its workers (at full speed)."""
    speeds: tuple[float, ...] = ()
    """A simulated model's speed for each replica."""
    path: str = ""
    options: str = ""

    def engine_of(self, replica: int) -> str:
        """How the live view describes replica `replica`."""
        if self.speeds and self.speeds[replica] == 0.5:
            return self.engine.replace("H100", "½ H100")
        return self.engine

    def options_line(self) -> str:
        if self.speeds:
            return "speeds = [" + ", ".join(f"{s:g}" for s in self.speeds) + "]"
        return self.options


def demo_models(models: PreparedModels) -> tuple[DemoModel, ...]:
    """Two real llama.cpp chat workers, one real embedding worker, three simulated H100s."""
    return (
        DemoModel(
            "tiny-chat", "chat", "llamacpp", 2, "llama.cpp CPU",
            path=str(models.chat_path), options="ctx_size = 4096, parallel = 2, threads = 1",
        ),
        DemoModel(
            "minilm", "embedding", "llamacpp", 1, "llama.cpp CPU",
            path=str(models.embedding_path), options="ctx_size = 1024, parallel = 2, threads = 1",
        ),
        DemoModel("llama-8b", "chat", "sim", 3, "sim SGLang H100", speeds=(1.0, 1.0, 0.5)),
    )


def write_fleet_file(run_dir: Path, models: PreparedModels) -> Path:
    """Write `run_dir/fleet.toml` for the demo, on ports free right now."""
    taken: set[int] = set()
    blocks = []
    for model in demo_models(models):
        port = free_port_range(model.replicas, taken)
        taken.update(range(port, port + model.replicas))
        options = model.options_line()
        lines = [
            "[[models]]",
            f'name = "{model.name}"',
            f'kind = "{model.kind}"',
            f'backend = "{model.backend}"',
            f"replicas = {model.replicas}",
            f"port = {port}",
        ]
        if model.path:
            lines.append(f'path = "{model.path}"')
        if options:
            lines.append(f"options = {{ {options} }}")
        blocks.append("\n".join(lines))
    text = _FLEET_TEMPLATE.format(
        models="\n\n".join(blocks), gateway_port=free_port_range(1, taken)
    )
    path = run_dir / FLEET_FILE
    path.write_text(text, encoding="utf-8")
    return path


# Quick launcher and router settings: a demo should show a restart and a recovery within
# seconds, where a production fleet waits longer before it decides.
_FLEET_TEMPLATE = """\
# Written by `modelserver demo`: the fleet it runs. State and logs are in this folder.
[fleet]
name = "demo"
state_dir = "."

[[hosts]]
name = "local"
address = "127.0.0.1"
gpus = "none"

{models}

[launcher]
ready_timeout_s = 60
backoff_initial_s = 0.5
health_interval_s = 1.0
ready_poll_s = 0.2
stop_grace_s = 5

[router]
policy = "cache_aware"

[router.health]
interval_s = 1.0

[router.breaker]
cooldown_s = 3.0

[gateway]
host = "127.0.0.1"
port = {gateway_port}
"""




@dataclass
class DemoFleet:
    """The demo's running fleet, seen through its fleet file and state file."""

    path: Path
    fleet: Fleet
    engines: dict[str, DemoModel]
    """Fleet model name -> what it is."""
    seen: dict[int, float] = field(default_factory=dict)
    """pid -> start time of every process the state file named (workers, supervisor)."""

    @classmethod
    def create(cls, run_dir: Path, models: PreparedModels) -> DemoFleet:
        path = write_fleet_file(run_dir, models)
        return cls(path, load_fleet(path), {m.name: m for m in demo_models(models)})

    @property
    def state_file(self) -> Path:
        return state_path(self.fleet, HOST)

    def router_entries(self) -> list[WorkerEntry]:
        """The workers as the fleet file names them: what `Router.from_fleet` would route."""
        return [WorkerEntry(w.model, w.url, w.kind, name=w.name) for w in self.fleet.workers(HOST)]

    def state(self) -> HostState | None:
        state = read_state(self.state_file)
        if state is not None:
            self.seen.update(
                (w.pid, w.create_time) for w in state.workers if w.pid and w.create_time
            )
            if state.supervisor is not None:
                self.seen[state.supervisor.pid] = state.supervisor.create_time
        return state

    def still_running(self) -> list[int]:
        """Processes of this fleet still running: a pid the state file named that is still
        the process it named (same start time), or the process group of one carrying this
        fleet's state-file mark (an engine the launcher started, whether or not it recorded
        it; an engine leads a group of its own)."""
        named = {proc.pid for proc in self._named_processes()}
        return sorted(named | marked_engine_groups(self.state_file).keys())

    def _named_processes(self) -> list[psutil.Process]:
        """Handles on the processes the state file named that are still those processes.
        psutil remembers the start time it saw, so a kill through a handle cannot reach a
        pid reused since."""
        found = []
        for pid, started in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if process_is(pid, started):
                    found.append(proc)
        return found

    def records(self) -> dict[str, WorkerRecord]:
        state = self.state()
        return {w.name: w for w in state.workers} if state else {}

    async def up(self) -> subprocess.CompletedProcess[str]:
        """`modelserver up FLEET --detach`: returns when every worker is ready or failed."""
        argv = _modelserver("up", str(self.path), "--detach")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=self.path.parent, env=_plain_env(),
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), UP_TIMEOUT_S)
        except BaseException:
            # Interrupted or too slow: the supervisor may be up already; `down` stops it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())

    def kill(self, name: str) -> WorkerRecord:
        """SIGKILL one worker's process, as a crash would; returns its record from before."""
        record = self.records().get(name)
        if record is None or record.pid is None or not process_is(record.pid, record.create_time):
            raise LaunchError(f"cannot kill {name}: the state file names no live process for it")
        os.kill(record.pid, signal.SIGKILL)
        return record

    def down(self) -> list[int]:
        """`modelserver down FLEET`, then return what of this fleet still runs (see
        `still_running`), after killing it, so nothing is left even then."""
        self.state()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                _modelserver("down", str(self.path)), capture_output=True, timeout=DOWN_TIMEOUT_S,
                cwd=self.path.parent, env=_plain_env(), start_new_session=True,
            )
        survivors = self.still_running()
        named = self._named_processes()
        for proc in named:
            _kill_with_its_group(proc)
        # Marked engines, stopped as `down` stops them: no supervisor is left to restart them.
        stop_unrecorded_engines(self.state_file, keep=())
        psutil.wait_procs(named, timeout=5)
        return survivors


def _modelserver(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelserver", *args]


def _plain_env() -> dict[str, str]:
    # Plain output from the launcher's subprocesses (they are read, not shown).
    return {**os.environ, "NO_COLOR": "1", "TERM": "dumb"}


def _kill_with_its_group(proc: psutil.Process) -> None:
    """SIGKILL `proc`, and its process group when it leads one (engines and the supervisor
    start in a session of their own, so what they started goes too)."""
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        leads_group = os.getpgid(proc.pid) == proc.pid
        proc.kill()  # raises NoSuchProcess if the pid is no longer this process
        if leads_group:
            os.killpg(proc.pid, signal.SIGKILL)


def stop_previous_run(run_dir: Path, say: Callable[[str, str], None]) -> None:
    """A demo killed hard may have left its fleet running in this folder: stop it first,
    then clear the old state and logs so this run's files tell only this run's story."""
    fleet_file = run_dir / FLEET_FILE
    if fleet_file.exists() and any(run_dir.glob("state-*.json")):
        try:
            leftover = DemoFleet(fleet_file, load_fleet(fleet_file), {})
            leftover.state()
            if leftover.still_running():
                say("stopping what a previous demo run in this folder left running", "yellow")
                leftover.down()
        except Exception as exc:  # an unreadable old run must not stop a new one; say so
            say(f"could not check the previous run in {run_dir}: {exc}", "red")
    for stale in [*run_dir.glob("state-*.json"), run_dir / "availability.json"]:
        stale.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "logs", ignore_errors=True)
