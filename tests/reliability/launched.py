"""A fleet of simulated engines run by the real launcher, for the reliability suites.

Free consecutive ports per model (the launcher gives replica i the port `port + i`), a fleet
file with small launcher intervals (and, if asked, a static GPU inventory with one GPU per
engine), and a view of the machine's processes from outside: which engine processes of this
fleet run (by their `--port` argument), which GPUs each was given (its CUDA_VISIBLE_DEVICES),
who listens on each port, and every pid ever seen, so cleanup can make sure none is left.
`StateFolderWatch` waits on the state folder's changes and a supervisor's exit together
(inotify and a pidfd), so a test reacts to a state write at once without polling.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from modelserver.launcher.processes import STATE_FILE_ENV
from modelserver.netinfo import free_port_range
from tests.processes import still_running

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

    def engine_gpus(self) -> dict[int, str]:
        """pid -> CUDA_VISIBLE_DEVICES of every live engine process of this fleet."""
        found: dict[int, str] = {}
        for pid in self.engine_processes():
            with contextlib.suppress(psutil.Error):
                found[pid] = psutil.Process(pid).environ().get("CUDA_VISIBLE_DEVICES", "")
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
        return [pid for pid in pids if still_running(pid)]

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
            if not is_ours(pid, self.state, self.path):
                continue  # the pid was reused by a process that is not this fleet's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return left


def is_ours(pid: int, state_file: Path, fleet_file: Path) -> bool:
    """An engine marked with this fleet's state file, or a launcher of this fleet file: what
    a test may kill. A bare pid may have been reused by anyone's process on a shared
    machine."""
    try:
        proc = psutil.Process(pid)
        if proc.environ().get(STATE_FILE_ENV) == str(state_file.resolve()):
            return True
        return str(fleet_file) in proc.cmdline()
    except psutil.Error:
        return False


def write_fleet(
    folder: Path,
    models: Iterable[SimModel],
    *,
    launcher: dict[str, float] | None = None,
    extra: str = "",
    name: str = "reliability",
    gpus: int = 0,
) -> LaunchedFleet:
    """A fleet file of simulated engines on free ports, on the one host `local` (127.0.0.1).

    `launcher` overrides the quick `[launcher]` settings below; `extra` is appended as is
    (e.g. a `[router]` section). `gpus` > 0 gives the host a static inventory of that many
    GPUs and every engine one of them, so placement runs as for a real GPU engine."""
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
            + ("gpus_per_replica = 1\n" if gpus else "")
        )
    state_dir = folder / "state"
    inventory = ", ".join(f"{{ index = {i}, total_gib = 80 }}" for i in range(gpus))
    host_gpus = f'gpus = "all"\ninventory = [{inventory}]\n' if gpus else 'gpus = "none"\n'
    text = (
        f'[fleet]\nname = "{name}"\nstate_dir = "{state_dir}"\n\n'
        '[[hosts]]\nname = "local"\naddress = "127.0.0.1"\n' + host_gpus + "\n"
        + "\n".join(blocks)
        + "\n[launcher]\n"
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
        + "\n"
        + extra
    )
    path = folder / "fleet.toml"
    path.write_text(text)
    return LaunchedFleet(path, state_dir / "state-local.json", ports)


IN_MOVED_TO = 0x80
IN_CREATE = 0x100
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class StateFolderWatch:
    """Files created or renamed into a folder (inotify), and a process's exit (pidfd), waited
    on together with select(2): a test wakes the moment a state write starts or lands."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, bytes(folder), IN_CREATE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        self._pidfd: int | None = None

    def watch_exit(self, pid: int) -> None:
        self._pidfd = os.pidfd_open(pid)

    def wait(self, timeout_s: float) -> tuple[list[tuple[int, str]], bool]:
        """(events as (mask, file name), whether the watched process exited), after at most
        `timeout_s`; no event and no exit means the time ran out."""
        fds = [self._fd] + ([self._pidfd] if self._pidfd is not None else [])
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout_s))
        events: list[tuple[int, str]] = []
        if self._fd in readable:
            with contextlib.suppress(BlockingIOError):
                data = os.read(self._fd, 65536)
                offset = 0
                while offset < len(data):
                    _, mask, _, size = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size
                    name = data[offset:offset + size].rstrip(b"\0").decode(errors="replace")
                    offset += size
                    events.append((mask, name))
        return events, self._pidfd is not None and self._pidfd in readable

    def close(self) -> None:
        os.close(self._fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
