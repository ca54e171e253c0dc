"""A fleet of simulated engines run by the real launcher, for the reliability suites.

Free consecutive ports per model (the launcher gives replica i the port `port + i`), a fleet
file with small launcher intervals, and a view of the machine's processes from outside: which
engine processes of this fleet run (by their `--port` argument), who listens on each port,
and every pid ever seen, so cleanup can make sure none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from modelserver.netinfo import free_port_range

DEADLINE_S = 60.0

QUICK_LAUNCHER: dict[str, float] = {
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.3,
    "max_restarts": 1000,
    "health_interval_s": 0.5,
    "unhealthy_after": 2,
    "ready_poll_s": 0.05,
    "ready_timeout_s": 30,
    "stop_grace_s": 3,
    "stable_after_s": 5,
}
"""Small backoffs and intervals so restarts and adoption happen within a test's time."""


@dataclass(frozen=True)
class SimModel:
    name: str
    replicas: int = 1
    speed: float = 1.0


@dataclass
class LaunchedFleet:
    """A fleet file on disk and what the launcher did with it."""

    path: Path
    state: Path
    ports: dict[int, str]
    """port -> worker name (`model-i@local`)."""
    seen_pids: set[int] = field(default_factory=set)
    """Every supervisor and engine pid ever recorded or observed (cleanup checks them all)."""

    # -- the launcher's commands --

    def run(self, *args: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelserver", *args, str(self.path), "--host", "local"],
            capture_output=True, text=True, timeout=timeout, cwd=self.path.parent,
        )

    def start_supervisor(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """The detached supervisor's own process (`up --supervise`, what `up --detach`
        starts), here started directly so a test can kill it at any moment. `env` is added
        to this process's environment."""
        log = open(self.path.parent / "supervisor.out", "ab")  # noqa: SIM115 - child keeps it
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "modelserver", "up", str(self.path), "--host", "local",
                 "--supervise"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.path.parent, env={**os.environ, **(env or {})},
            )
        finally:
            log.close()
        self.seen_pids.add(proc.pid)
        return proc

    # -- what the state file says --

    def read_state(self) -> dict[str, Any] | None:
        """The parsed state file, None if absent. A half-written file raises (orjson)."""
        try:
            data = self.state.read_bytes()
        except FileNotFoundError:
            return None
        state = orjson.loads(data)
        assert isinstance(state, dict)
        for worker in state.get("workers", []):
            if worker.get("pid"):
                self.seen_pids.add(int(worker["pid"]))
        return state

    def recorded_pids(self) -> dict[str, int]:
        state = self.read_state() or {}
        return {w["name"]: w["pid"] for w in state.get("workers", []) if w.get("pid")}

    # -- what the machine says --

    def engine_processes(self) -> dict[int, int]:
        """pid -> port of every live engine process of this fleet (by its `--port` argument)."""
        found: dict[int, int] = {}
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or "sim" not in cmdline:
                continue
            with contextlib.suppress(ValueError, IndexError):
                port = int(cmdline[cmdline.index("--port") + 1])
                if port in self.ports:
                    found[proc.info["pid"]] = port
        self.seen_pids.update(found)
        return found

    def listeners(self) -> dict[int, set[int]]:
        """port -> pids listening on it, for this fleet's ports."""
        held: dict[int, set[int]] = {port: set() for port in self.ports}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in held:
                held[conn.laddr.port].add(conn.pid if conn.pid is not None else -1)
        return held

    def supervisor_output(self) -> str:
        path = self.path.parent / "supervisor.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def running(self, pids: Iterable[int]) -> list[int]:
        return [pid for pid in pids if _alive(pid)]

    # -- cleanup --

    def stop_everything(self) -> list[int]:
        """`down`, then SIGKILL the group of every pid ever seen that still runs (a fallback
        when `down` missed one). Returns what `down` left behind."""
        with contextlib.suppress(Exception):
            self.engine_processes()
            self.read_state()
        with contextlib.suppress(Exception):
            if self.state.exists():
                self.run("down")
        left = self.running(self.seen_pids)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return left


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def write_fleet(
    folder: Path,
    models: Iterable[SimModel],
    *,
    launcher: dict[str, float] | None = None,
    extra: str = "",
    name: str = "reliability",
) -> LaunchedFleet:
    """A fleet file of simulated engines on free ports, on the one host `local` (127.0.0.1).

    `launcher` overrides the quick `[launcher]` settings below; `extra` is appended as is
    (e.g. a `[router]` section)."""
    settings = {**QUICK_LAUNCHER, **(launcher or {})}
    folder.mkdir(parents=True, exist_ok=True)
    ports: dict[int, str] = {}
    blocks: list[str] = []
    for model in models:
        base = free_port_range(model.replicas)
        for replica in range(model.replicas):
            ports[base + replica] = f"{model.name}-{replica}@local"
        blocks.append(
            f'[[models]]\nname = "{model.name}"\nbackend = "sim"\nport = {base}\n'
            f"replicas = {model.replicas}\noptions = {{ speed = {model.speed} }}\n"
        )
    state_dir = folder / "state"
    text = (
        f'[fleet]\nname = "{name}"\nstate_dir = "{state_dir}"\n\n'
        '[[hosts]]\nname = "local"\naddress = "127.0.0.1"\ngpus = "none"\n\n'
        + "\n".join(blocks)
        + "\n[launcher]\n"
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
        + "\n"
        + extra
    )
    path = folder / "fleet.toml"
    path.write_text(text)
    return LaunchedFleet(path, state_dir / "state-local.json", ports)
