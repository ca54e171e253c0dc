"""The state file of one host: what runs there, written by its supervisor, read by anyone.

`{state_dir}/state-{host}.json`, replaced atomically (`_files.atomic_write_json`, mode 0o644),
so a reader sees the previous file or the next one, never half of one. The shape is the
contract with the router (see `HostState.to_json`). One supervisor per host and state folder
holds `supervisor-{host}.lock` (flock) while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from modelserver._files import atomic_write_json, read_json
from modelserver.config import Fleet
from modelserver.errors import LaunchError

STATE_MODE = 0o644
LOG_MODE = 0o640


@dataclass
class WorkerRecord:
    name: str
    model: str
    kind: str
    url: str
    host: str
    port: int
    status: str
    pid: int | None = None
    create_time: float | None = None
    gpus: list[str] = field(default_factory=list)
    restarts: int = 0
    last_error: str | None = None
    started_at: float | None = None
    log: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class SupervisorRecord:
    pid: int
    started_at: float
    create_time: float


@dataclass
class HostState:
    host: str
    fleet: str
    updated_at: float = 0.0
    supervisor: SupervisorRecord | None = None
    workers: list[WorkerRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "fleet": self.fleet,
            "updated_at": self.updated_at,
            "supervisor": asdict(self.supervisor) if self.supervisor else None,
            "workers": [asdict(w) for w in self.workers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostState:
        sup = data.get("supervisor")
        return cls(
            host=str(data.get("host", "")),
            fleet=str(data.get("fleet", "")),
            updated_at=float(data.get("updated_at", 0.0)),
            supervisor=SupervisorRecord(**sup) if isinstance(sup, dict) else None,
            workers=[WorkerRecord.from_json(w) for w in data.get("workers", [])],
        )

    def worker(self, name: str) -> WorkerRecord | None:
        return next((w for w in self.workers if w.name == name), None)


def state_path(fleet: Fleet, host: str) -> Path:
    return fleet.state_dir() / f"state-{host}.json"


def log_path(fleet: Fleet, worker: str) -> Path:
    return fleet.state_dir() / "logs" / f"{worker}.log"


def supervisor_log_path(fleet: Fleet, host: str) -> Path:
    return fleet.state_dir() / "logs" / f"supervisor-{host}.log"


def write_state(path: Path, state: HostState) -> None:
    state.updated_at = time.time()
    atomic_write_json(path, state.to_json(), STATE_MODE)


def read_state(path: Path) -> HostState | None:
    """The host's state, or None when there is none yet (or it is not ours to read)."""
    try:
        data = read_json(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError as exc:
        raise LaunchError(f"{path}: not a state file ({exc})") from None
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: not a state file (top level is not an object)")
    return HostState.from_json(data)


def process_is(pid: int | None, create_time: float | None) -> bool:
    """True if `pid` runs and is the very process recorded (same create_time), not a reuse."""
    if pid is None or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != "zombie"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def create_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def log_tail(path: Path | str, max_lines: int = 20, max_bytes: int = 4096) -> str:
    """The last lines of a log, for `last_error` and messages."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


class SupervisorLock:
    """An flock on `supervisor-{host}.lock`: one supervisor per host and state folder."""

    def __init__(self, fleet: Fleet, host: str) -> None:
        self.path = fleet.state_dir() / f"supervisor-{host}.lock"
        self.host = host
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LaunchError(
                f"a supervisor (pid {holder}) already runs for host {self.host!r} with"
                f" state in {self.path.parent}; stop it with `modelserver down` first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def held_by_other(self) -> bool:
        """True if some process holds the lock now (used by `down` and `status`)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
