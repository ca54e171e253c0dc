"""`modelserver demo` as a newcomer runs it: a real subprocess, real engines, real kill.

Whether anything is left behind is checked independently of what the demo says about
itself: no process may listen on a port of the fleet file it wrote, none may name this
test's folder on its command line (the supervisor, the llama.cpp workers), and no pid of
its state file may run. The fixture kills whatever is found, so a failing test leaves
nothing either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelserver.config import load_fleet
from modelserver.demo.run import DEMO_LOG
from modelserver.demo.summary import PARAPHRASE, UNRELATED
from tests.waiting import wait_until_sync

RUN_TIMEOUT_S = 240.0


@dataclass
class DemoProcess:
    proc: subprocess.Popen[str]
    run_dir: Path
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def summary(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "summary.json").read_text()))


@dataclass
class Demos:
    tmp_path: Path
    started: list[DemoProcess] = field(default_factory=list)

    def start(self, *args: str) -> DemoProcess:
        run_dir = self.tmp_path / "run"
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelserver", "demo", "--no-live", "--dir", str(run_dir),
             "--models-dir", str(self.tmp_path / "models"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp_path,
            start_new_session=True,  # a signal the test sends reaches the demo alone
        )
        demo = DemoProcess(proc, run_dir)
        self.started.append(demo)
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, demo.lines), daemon=True)
        reader.start()
        return demo


def _read_lines(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def leftovers(tmp_path: Path, run_dir: Path) -> list[psutil.Process]:
    """Processes of the demo that still run, found without asking the demo."""
    found: dict[int, psutil.Process] = {}
    fleet_file = run_dir / "fleet.toml"
    ports = {w.port for w in load_fleet(fleet_file).workers()} if fleet_file.exists() else set()
    with contextlib.suppress(psutil.AccessDenied):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports \
                    and conn.pid:
                found[conn.pid] = psutil.Process(conn.pid)
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(str(tmp_path) in arg
                                           for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    state_file = run_dir / "state-local.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        pids = [w["pid"] for w in state["workers"]]
        pids.append((state.get("supervisor") or {}).get("pid"))
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if pid:
                    found[pid] = psutil.Process(pid)
    return [p for p in found.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def demos(tmp_path: Path) -> Iterator[Demos]:
    made = Demos(tmp_path)
    try:
        yield made
    finally:
        for demo in made.started:
            if demo.proc.poll() is None:
                demo.proc.kill()
                demo.proc.wait()
            for proc in leftovers(tmp_path, demo.run_dir):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    proc.kill()


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_demo_runs_kills_a_worker_sees_it_restarted_and_leaves_nothing(
    demos: Demos, tmp_path: Path
) -> None:
    demo = demos.start("--duration", "10")
    code = demo.proc.wait(timeout=RUN_TIMEOUT_S)
    output = demo.output
    assert code == 0, output
    assert "KILL: llama-8b-0@local" in output
    assert "supervisor: llama-8b-0@local is ready again as pid" in output
    assert "router: llama-8b-0@local answers requests again" in output
    assert ", 0 non-streamed failed" in output
    assert "none left running" in output and "demo complete" in output

    summary = demo.summary()
    assert summary["problems"] == [] and summary["failed_plain"] == 0
    kill = summary["kill"]
    assert kill["restarted_after_s"] is not None and kill["new_pid"] != kill["pid"]
    assert summary["restarts"]["llama-8b-0@local"] == 1
    served = summary["served"]
    # Real llama.cpp workers answered chat and embeddings, and the simulated engines behind
    # `llama-8b` answered, the killed one included (before and after its restart).
    assert {"minilm-0@local", "llama-8b-0@local"} <= set(served)
    assert {"tiny-chat-0@local", "tiny-chat-1@local"} & set(served)
    assert set(served) <= {"tiny-chat-0@local", "tiny-chat-1@local", "minilm-0@local",
                           "llama-8b-0@local", "llama-8b-1@local", "llama-8b-2@local"}
    prompt, cached = summary["cache"]["llama-8b"]
    assert 0 < cached < prompt
    similarity = summary["similarity"]
    assert similarity[PARAPHRASE] > similarity[UNRELATED]  # and problems() checked it too
    # modelserver's own log lines went to the run folder, not nowhere.
    assert "gateway on http://127.0.0.1:" in (demo.run_dir / DEMO_LOG).read_text()
    assert leftovers(tmp_path, demo.run_dir) == []


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_ctrl_c_right_after_the_kill_still_stops_everything(
    demos: Demos, tmp_path: Path
) -> None:
    demo = demos.start("--duration", "30")
    wait_until_sync(lambda: "KILL: " in demo.output or demo.proc.poll() is not None,
                    "the demo to kill its worker", RUN_TIMEOUT_S)
    assert demo.proc.poll() is None, demo.output
    demo.proc.send_signal(signal.SIGINT)
    code = demo.proc.wait(timeout=RUN_TIMEOUT_S)
    assert code == 130, demo.output
    assert "stopping everything" in demo.output
    assert "interrupted (Ctrl-C)" in demo.output
    assert leftovers(tmp_path, demo.run_dir) == []


def test_a_second_demo_in_the_same_folder_is_refused_before_starting_anything(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with (run_dir / "demo.lock").open("a") as held:  # as a first demo holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run(
            [sys.executable, "-m", "modelserver", "demo", "--no-live", "--dir", str(run_dir),
             "--models-dir", str(tmp_path / "models")],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "another `modelserver demo` runs in" in done.stderr
    assert not (run_dir / "fleet.toml").exists() and not (tmp_path / "models").exists()
