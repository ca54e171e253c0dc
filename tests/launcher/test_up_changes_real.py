"""`modelserver up` on a running fleet whose file changed, with real processes.

Three simulated replicas (`chat` × 2, `old` × 1) run under a detached supervisor; a gateway
in this process sends steady traffic to `chat`. The file then changes: `chat` gets another
engine flag (both its replicas are replaced) and a third replica, `old` goes. `up --dry-run`
prints that plan and touches nothing; `up` applies it while the traffic goes on: no request
fails, the new layout runs, `status --json` shows it, the old processes are gone.
Every wait is on a condition with a deadline; the fixture stops every process it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil
import pytest

from modelserver.config import GatewayConfig, load_fleet
from modelserver.gateway import GatewayServer
from modelserver.netinfo import free_port_range
from modelserver.routing import Router
from tests.processes import still_running
from tests.reliability.launched import QUICK_LAUNCHER, LaunchedFleet
from tests.waiting import wait_until, wait_until_sync

KEY = "sk-up-changes-test-key"
DEADLINE_S = 120.0
CLIENTS = 4

LAUNCHER = {**QUICK_LAUNCHER, "drain_notice_s": 2.0, "drain_timeout_s": 30}
"""The routers below read the state files every 0.2 s; two seconds of notice cover that
ten times over (a bound for production, not a figure the test checks)."""


@dataclass
class Layout:
    chat_port: int
    old_port: int
    folder: Path

    def text(self, *, chat_replicas: int, chat_args: list[str], with_old: bool) -> str:
        state_dir = self.folder / "state"
        old = (f'[[models]]\nname = "old"\nbackend = "sim"\nport = {self.old_port}\n'
               'options = { speed = 50.0 }\n\n') if with_old else ""
        return (
            f'[fleet]\nname = "changing"\nstate_dir = "{state_dir}"\n\n'
            '[[hosts]]\nname = "local"\naddress = "127.0.0.1"\ngpus = "none"\n\n'
            f'[[models]]\nname = "chat"\nbackend = "sim"\nport = {self.chat_port}\n'
            f"replicas = {chat_replicas}\noptions = {{ speed = 50.0 }}\n"
            f"args = {orjson.dumps(chat_args).decode()}\n\n"
            + old
            + "[launcher]\n" + "".join(f"{k} = {v}\n" for k, v in LAUNCHER.items())
            + '\n[router]\npolicy = "round_robin"\nattempt_timeout_s = 10.0\n'
            "\n[router.health]\ninterval_s = 0.2\n"
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LaunchedFleet, Layout]]:
    chat, old = free_port_range(3), free_port_range(1)
    layout = Layout(chat, old, tmp_path)
    path = tmp_path / "fleet.toml"
    path.write_text(layout.text(chat_replicas=2, chat_args=[], with_old=True))
    ports = {chat + i: f"chat-{i}@local" for i in range(3)} | {old: "old-0@local"}
    launched = LaunchedFleet(path, tmp_path / "state" / "state-local.json", ports)
    try:
        yield launched, layout
    finally:
        left = launched.stop_everything()
        assert not left, f"`down` left {left} running"


@dataclass
class Traffic:
    """Clients sending chat requests through a gateway until told to stop."""

    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, http: aiohttp.ClientSession, index: int) -> None:
        body = {"model": "chat", "max_tokens": 8,
                "messages": [{"role": "user", "content": f"client {index} says hello"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        while not self.stop.is_set():
            try:
                async with http.post(self.url + "/v1/chat/completions", json=body,
                                     headers=headers) as answer:
                    text = await answer.text()
                    if answer.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"HTTP {answer.status}: {text[:300]}")
            except aiohttp.ClientError as exc:
                self.failures.append(repr(exc))


async def run_cli(launched: LaunchedFleet, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelserver", *args, str(launched.path), "--host", "local",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=launched.path.parent,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def status_json(launched: LaunchedFleet) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "modelserver", "status", str(launched.path), "--host", "local",
         "--json"], capture_output=True, text=True, timeout=DEADLINE_S,
        cwd=launched.path.parent, check=True,
    )
    return {row["name"]: row for row in orjson.loads(done.stdout)}


@pytest.mark.timeout(400)
async def test_up_on_a_changed_fleet_replaces_adds_and_removes_without_failing_a_request(
    fleet: tuple[LaunchedFleet, Layout],
) -> None:
    launched, layout = fleet
    code, out = await run_cli(launched, "up", "--detach")
    assert code == 0, out
    before = launched.recorded_pids()
    assert set(before) == {"chat-0@local", "chat-1@local", "old-0@local"}, before

    router = Router.from_fleet(load_fleet(launched.path))
    async with (
        GatewayServer(router, GatewayConfig(api_keys=[KEY]), port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        traffic = Traffic(gateway.url)
        clients = [asyncio.create_task(traffic.client(http, i)) for i in range(CLIENTS)]
        try:
            await wait_until(lambda: traffic.ok >= 20, "traffic through the gateway",
                             DEADLINE_S)
            launched.path.write_text(
                layout.text(chat_replicas=3, chat_args=["--max-running", "8"],
                            with_old=False))

            code, out = await run_cli(launched, "up", "--dry-run")
            assert code == 0, out
            assert "replace  chat-0@local" in out and "replace  chat-1@local" in out, out
            assert "+'--max-running 8'" in out, out
            assert "add      chat-2@local" in out and "remove   old-0@local" in out, out
            assert "nothing was changed" in out, out
            assert launched.recorded_pids() == before
            assert sorted(launched.engine_processes()) == sorted(before.values())

            served_before = traffic.ok
            code, out = await run_cli(launched, "up")
            assert code == 0, out
            served_during = traffic.ok - served_before
            # The gateway, started before the change, sends to the added replica too.
            await wait_until(
                lambda: any(w.name == "chat-2@local" and w.requests > 0
                            for w in router.workers()),
                "the running gateway sending to the added replica", DEADLINE_S)
        finally:
            traffic.stop.set()
            await asyncio.gather(*clients)
        attempts_failed = {w.name: w.errors for w in router.workers() if w.errors}

    assert traffic.failures == [], traffic.failures[:5]
    # Not even an attempt failed and was retried: no request reached a worker as it stopped.
    assert attempts_failed == {}
    assert served_during > 0
    rows = status_json(launched)
    assert {n: r["status"] for n, r in rows.items()} == {
        "chat-0@local": "ready", "chat-1@local": "ready", "chat-2@local": "ready"}
    after = launched.recorded_pids()
    assert set(after) == set(rows)
    assert {n: rows[n]["pid"] for n in rows} == after
    for name in ("chat-0@local", "chat-1@local", "old-0@local"):
        assert not still_running(before[name]), f"{name}'s old process {before[name]} still runs"
    running = launched.engine_processes()
    assert sorted(running) == sorted(after.values())
    for pid in running:
        assert "--max-running" in psutil.Process(pid).cmdline()
    state = launched.read_state() or {}
    assert state["applying"]["status"] == "done", state["applying"]
    assert all(w["started_with"]["command"][-2:] == ["--max-running", "8"]
               for w in state["workers"])


async def test_dry_run_on_a_fleet_that_does_not_run_lists_every_start_and_creates_nothing(
    fleet: tuple[LaunchedFleet, Layout],
) -> None:
    launched, _ = fleet
    code, out = await run_cli(launched, "up", "--dry-run")
    assert code == 0, out
    for name in ("chat-0@local", "chat-1@local", "old-0@local"):
        assert f"add      {name}" in out, out
    assert not launched.state.parent.exists()  # no state, no lock, no log: nothing started
    assert launched.engine_processes() == {}


def test_a_supervisor_restarted_on_a_changed_file_replaces_the_adopted_workers_it_changed(
    fleet: tuple[LaunchedFleet, Layout],
) -> None:
    """No supervisor runs (it was killed), its workers do, and the file changed: the new
    supervisor adopts them, then replaces those the file changed, and keeps the others."""
    launched, layout = fleet
    first = launched.start_supervisor()
    try:
        wait_until_sync(lambda: _all_ready(launched, 3), "the first supervisor's workers",
                        DEADLINE_S)
    finally:
        first.kill()
        first.wait()
    before = launched.recorded_pids()
    launched.path.write_text(layout.text(chat_replicas=2, chat_args=["--max-running", "8"],
                                         with_old=True))
    second = launched.start_supervisor()
    try:
        def replaced() -> bool:
            pids = launched.recorded_pids()
            return _all_ready(launched, 3) and all(
                pids.get(n) not in (None, before[n]) for n in ("chat-0@local", "chat-1@local"))

        wait_until_sync(replaced, "the changed workers replaced", DEADLINE_S)
        after = launched.recorded_pids()
        assert after["old-0@local"] == before["old-0@local"]  # unchanged: adopted, kept
        assert not still_running(before["chat-0@local"])
        assert not still_running(before["chat-1@local"])
        for pid in (after["chat-0@local"], after["chat-1@local"]):
            assert psutil.Process(pid).cmdline()[-2:] == ["--max-running", "8"]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(DEADLINE_S)


def _all_ready(launched: LaunchedFleet, count: int) -> bool:
    with contextlib.suppress(FileNotFoundError, ValueError):
        workers = (launched.read_state() or {}).get("workers", [])
        return len(workers) == count and all(w["status"] == "ready" for w in workers)
    return False
