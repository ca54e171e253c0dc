"""`modelserver sim` as a real process, and SGLang's own router in front of two of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelserver.netinfo import free_port_range

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}



def wait_until(condition: object, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.05)


class Processes:
    """Processes a test starts, each in its own session; all stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def start_sim(processes: Processes, name: str, *extra: str) -> str:
    port = free_port_range()
    args = [sys.executable, "-m", "modelserver", "sim", "--port", str(port), "--model", "llama"]
    processes.start(name, [*args, "--speed", "20", *extra])
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/health").status_code == 200)
    return url


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sim_process_answers_and_stops_on_a_signal(processes: Processes, signum: int) -> None:
    url = start_sim(processes, "sim")
    reply = httpx.post(url + "/v1/chat/completions", json=CHAT)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    (process,) = processes.started
    os.killpg(process.pid, signum)
    assert process.wait(timeout=10) == 0


def test_sim_process_exits_on_a_crash_fault(processes: Processes) -> None:
    url = start_sim(processes, "sim", "--fault", "crash-after=1")
    assert httpx.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.post(url + "/v1/chat/completions", json=CHAT)
    (process,) = processes.started
    assert process.wait(timeout=10) == 1
    assert "crash fault" in processes.log("sim")


def test_sim_process_rejects_a_bad_fault_spec(processes: Processes) -> None:
    args = [sys.executable, "-m", "modelserver", "sim", "--port", "1", "--model", "m"]
    process = processes.start("bad", [*args, "--fault", "melt"])
    assert process.wait(timeout=30) == 2
    assert "unknown fault 'melt'" in processes.log("bad")


def test_sim_process_usage_error_prints_usage_not_a_traceback(processes: Processes) -> None:
    process = processes.start("usage", [sys.executable, "-m", "modelserver", "sim", "--model", "m"])
    assert process.wait(timeout=30) == 2
    log = processes.log("usage")
    assert "Missing option '--port'" in log and "Traceback" not in log


def test_sglang_router_routes_to_simulated_engines(processes: Processes, tmp_path: Path) -> None:
    """SGLang's own router (the sglang-router wheel) accepts two sims as workers."""
    pytest.importorskip("sglang_router", reason="the sglang-router wheel is not installed")
    model_dir = tmp_path / "model"  # a local path, so the router fetches no tokenizer
    model_dir.mkdir()
    urls = [start_sim(processes, f"sim{i}", "--model-path", str(model_dir)) for i in range(2)]
    port = free_port_range()
    router = f"http://127.0.0.1:{port}"
    processes.start(
        "router",
        [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--worker-urls",
            *urls,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            "cache_aware",
        ],
    )
    wait_until(lambda: httpx.get(router + "/health").status_code == 200, deadline=60)

    def answered() -> bool:
        reply = httpx.post(router + "/v1/chat/completions", json=CHAT, timeout=10)
        return reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3

    wait_until(answered, deadline=60)
    served = sum(httpx.get(u + "/sim/state").json()["requests_served"] for u in urls)
    assert served >= 1
