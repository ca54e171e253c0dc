"""The state file of one host: what runs there, written by its supervisor, read by anyone.

`{state_dir}/state-{host}.json`, replaced atomically (`_files.atomic_write_json`, mode 0o640:
it names the processes `down` signals, and an engine's error may quote its output), so a
reader sees the previous file or the next one, never half of one. The shape is the
contract with the router (see `HostState.to_json`). One supervisor per host and state folder
holds `supervisor-{host}.lock` (flock) while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from modelserver._files import atomic_write_json, read_json
from modelserver.config import Fleet
from modelserver.errors import LaunchError
from modelserver.launcher.secrets import REDACTED

STATE_MODE = 0o640
LOG_MODE = 0o640
LOCK_MODE = 0o640


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
    waiting_for: str | None = None
    """While `waiting`: what it waits for ("port 30001 is in use by pid 81 (nginx)")."""
    started_with: dict[str, Any] | None = None
    """What its process was started with (`plan.Fingerprint.to_json`: command line, GPUs,
    the environment the launcher set, keys masked), so `up` on a changed fleet file can tell
    what changed. None: never started, or started by a launcher that did not record it."""

    @classmethod
    def from_json(cls, data: Any) -> WorkerRecord:
        return cls(**_fields(data, _WORKER_FIELDS, "a worker"))


@dataclass
class SupervisorRecord:
    pid: int
    started_at: float
    create_time: float

    @classmethod
    def from_json(cls, data: Any) -> SupervisorRecord:
        return cls(**_fields(data, _SUPERVISOR_FIELDS, "the supervisor"))


class BadStateFile(ValueError):
    """A state file that parses as JSON but is not one a launcher wrote."""


_STR, _INT, _NUM, _NONE, _LIST = (str,), (int,), (int, float), (type(None),), (list,)
# field -> (allowed JSON types, required)
_WORKER_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": (_STR, True), "model": (_STR, True), "kind": (_STR, True), "url": (_STR, True),
    "host": (_STR, True), "port": (_INT, True), "status": (_STR, True),
    "pid": (_INT + _NONE, False), "create_time": (_NUM + _NONE, False),
    "gpus": (_LIST, False), "restarts": (_INT, False), "last_error": (_STR + _NONE, False),
    "started_at": (_NUM + _NONE, False), "log": (_STR, False),
    "waiting_for": (_STR + _NONE, False), "started_with": ((dict, *_NONE), False),
}
_SUPERVISOR_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "pid": (_INT, True), "started_at": (_NUM, True), "create_time": (_NUM, True),
}


def _fields(
    data: Any, spec: dict[str, tuple[tuple[type, ...], bool]], what: str
) -> dict[str, Any]:
    """The known fields of `data`, checked against `spec`; BadStateFile naming the first
    missing or mistyped one. Unknown fields are ignored (a newer launcher may add some)."""
    if not isinstance(data, dict):
        raise BadStateFile(f"{what} is not an object")
    out: dict[str, Any] = {}
    for key, (types, required) in spec.items():
        if key not in data:
            if required:
                raise BadStateFile(f"{what} has no {key!r}")
            continue
        value = data[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise BadStateFile(f"{what}'s {key!r} is {value!r}")
        out[key] = value
    gpus = out.get("gpus", [])
    if not all(isinstance(g, str) for g in gpus):
        raise BadStateFile(f"{what}'s 'gpus' is {gpus!r}, not a list of strings")
    return out


@dataclass
class HostState:
    host: str
    fleet: str
    updated_at: float = 0.0
    supervisor: SupervisorRecord | None = None
    workers: list[WorkerRecord] = field(default_factory=list)
    applying: dict[str, Any] | None = None
    """The last change `up` asked the running supervisor to apply (`reconcile.Applying`):
    its request id, the plan, whether it is under way, done or failed and why."""

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "fleet": self.fleet,
            "updated_at": self.updated_at,
            "supervisor": asdict(self.supervisor) if self.supervisor else None,
            "workers": [asdict(w) for w in self.workers],
            "applying": self.applying,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostState:
        """The state in `data`; BadStateFile if a field is missing or of the wrong type."""
        sup = data.get("supervisor")
        workers = data.get("workers", [])
        if not isinstance(workers, list):
            raise BadStateFile(f"'workers' is {type(workers).__name__}, not a list")
        updated_at = data.get("updated_at", 0.0)
        if not isinstance(updated_at, int | float):
            raise BadStateFile(f"'updated_at' is {updated_at!r}")
        records = []
        for index, worker in enumerate(workers):
            try:
                records.append(WorkerRecord.from_json(worker))
            except BadStateFile as exc:
                raise BadStateFile(f"workers[{index}]: {exc}") from None
        return cls(
            host=str(data.get("host", "")),
            fleet=str(data.get("fleet", "")),
            updated_at=float(updated_at),
            supervisor=SupervisorRecord.from_json(sup) if sup is not None else None,
            workers=records,
            applying=applying if isinstance(applying := data.get("applying"), dict) else None,
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
    """The host's state, or None when there is none yet. LaunchError naming the file when it
    is not a state file (not JSON, or fields missing or of the wrong type)."""
    try:
        data = read_json(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise LaunchError(f"{path}: cannot read the state file (permission denied)") from None
    except (ValueError, IsADirectoryError) as exc:
        raise _not_a_state_file(path, str(exc)) from None
    if not isinstance(data, dict):
        raise _not_a_state_file(path, "the top level is not an object")
    try:
        return HostState.from_json(data)
    except BadStateFile as exc:
        raise _not_a_state_file(path, str(exc)) from None


def _not_a_state_file(path: Path, why: str) -> LaunchError:
    return LaunchError(
        f"{path}: not a state file a launcher wrote ({why}); `modelserver down` stops the"
        " engines started for it and replaces it"
    )


def check_state_dir(fleet: Fleet) -> None:
    """LaunchError naming `fleet.state_dir` if the launcher cannot create or write it. Creates
    nothing: a refused `up` leaves no trace."""
    folder = fleet.state_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = ""
    if not probe.is_dir():
        problem = f"{probe} is not a folder"
    else:
        # Try it (access() says yes to root even in /proc): a folder made and removed.
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".modelserver-check-", dir=probe))
        except OSError as exc:
            problem = f"{probe} refuses a new folder ({exc.strerror})"
            if probe != folder:
                problem = f"it does not exist and {problem}, so it cannot be created"
    if problem:
        raise LaunchError(
            f"{fleet.source}: fleet.state_dir = {fleet.fleet.state_dir!r}: the launcher keeps"
            f" its state, locks and logs in {folder}, but {problem}"
        )


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


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by ***, longest first (so a key that contains
    another is hidden whole)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def log_tail(
    path: Path | str, max_lines: int = 20, max_bytes: int = 4096, secrets: Iterable[str] = ()
) -> str:
    """The last lines of a log, for `last_error` and messages, with `secrets` redacted (an
    engine may print its own key: SGLang logs its server_args, vLLM its non-default args)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    # Redact before cutting: a key split by the byte window could still show in part.
    lines = redact(data.decode("utf-8", "replace"), secrets).splitlines()
    return "\n".join(lines[-max_lines:])


class SupervisorLock:
    """An flock on `supervisor-{host}.lock`: one supervisor per host and state folder."""

    def __init__(self, fleet: Fleet, host: str) -> None:
        self.path = fleet.state_dir() / f"supervisor-{host}.lock"
        self.host = host
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
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
            fd = os.open(self.path, os.O_RDONLY)  # flock needs no write access
        except (FileNotFoundError, PermissionError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def holder(self) -> int | None:
        """The pid of the process holding the lock, None if nobody holds it."""
        if not self.held_by_other():
            return None
        # The holder writes its pid right after taking the lock: allow it that instant.
        for _ in range(50):
            try:
                text = self.path.read_text().strip()
            except OSError:
                return None
            if text.isdigit():
                return int(text)
            time.sleep(0.01)
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
