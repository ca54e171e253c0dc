"""Runner processes for tests: start on a free 127.0.0.1 port, wait for /health, stop.

Every runner is a real process in its own session; `Runner.stop` sends SIGTERM and, if the
runner does not exit in time, SIGKILL to its process group, so nothing outlives a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelserver.netinfo import free_port_range

RUNNER = "modelserver.launcher.backends.xllamacpp_runner"
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Runner:
    """A runner process and how to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def request(
        self, path: str, body: dict[str, Any] | None = None, *, key: str | None = "default"
    ) -> tuple[int, bytes]:
        """(status, body) of a GET (no body) or a JSON POST; sends the API key unless key=None."""
        headers = {"Content-Type": "application/json"}
        token = self.api_key if key == "default" else key
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        status, raw = self.request(path, body)
        assert status == 200, f"{path}: HTTP {status}: {raw[:500]!r}"
        return json.loads(raw)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the runner and wait for it; SIGKILL its group if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return int(self.process.returncode)


def launch(args: list[str], log: Path, api_key: str | None = None) -> Runner:
    """Start the runner with llama-server-style `args` plus --host/--port; do not wait."""
    port = free_port_range()
    argv = [sys.executable, "-m", RUNNER, *args, "--host", "127.0.0.1", "--port", str(port)]
    if api_key:
        argv += ["--api-key", api_key]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Runner(process, port, log, api_key)


def wait_ready(runner: Runner) -> None:
    """Poll /health until 200, failing fast (with the log) if the process exits."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if runner.process.poll() is not None:
            pytest.fail(f"runner exited {runner.process.returncode}:\n{runner.log_text()[-3000:]}")
        try:
            if runner.request("/health", key=None)[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    runner.stop()
    pytest.fail(f"runner not ready after {READY_DEADLINE_S} s:\n{runner.log_text()[-3000:]}")


def start_runner(args: list[str], log: Path, api_key: str | None = None) -> Runner:
    runner = launch(args, log, api_key)
    try:
        wait_ready(runner)
    except BaseException:
        runner.stop()
        raise
    return runner
