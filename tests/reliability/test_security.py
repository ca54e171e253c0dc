"""Security: keys never leak, engines listen on loopback unless told otherwise, nothing we write
is world-writable, and every `/v1` and `/admin` route refuses without the right key.

The leak and file checks run a real fleet: `modelserver up --detach` of simulated engines
(one with an engine `api_key` that serves, one with a key that crashes at start so its
failure and log tail are recorded), started under umask 000, then `status` (table and JSON)
and a `modelserver gateway` process with API and admin keys in front of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
import requests

from modelserver.config import GatewayConfig, parse_fleet
from modelserver.gateway import GatewayServer
from modelserver.launcher.backends import BACKENDS
from modelserver.launcher.placement import Placement
from modelserver.netinfo import free_port_range
from modelserver.routing import MockResponse, MockTransport, Router
from tests.reliability.launched import is_ours
from tests.waiting import wait_until_sync

ENGINE_KEY = "sk-engine-key-do-not-leak-1"
BROKEN_KEY = "sk-engine-key-do-not-leak-2"
API_KEY = "sk-gateway-api-key-do-not-leak"
ADMIN_KEY = "sk-gateway-admin-key-do-not-leak"
SECRETS = (ENGINE_KEY, BROKEN_KEY, API_KEY, ADMIN_KEY)



@dataclass
class Launched:
    folder: Path
    fleet: Path
    state_dir: Path
    up: subprocess.CompletedProcess[str]
    gateway_url: str
    gateway_log: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelserver", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.folder,
            env={**os.environ, "COLUMNS": "300"},
        )

    def state(self) -> dict[str, Any]:
        return dict(orjson.loads((self.state_dir / "state-local.json").read_bytes()))

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.state()["workers"] if w["pid"]]


def _permissive_umask() -> None:
    os.umask(0)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    folder = tmp_path_factory.mktemp("security")
    state_dir = folder / "state"
    fleet = folder / "fleet.toml"
    gateway_port = free_port_range()
    fleet.write_text(f"""
[fleet]
name = "security"
state_dir = "{state_dir}"

[[hosts]]
name = "local"
address = "127.0.0.1"
gpus = "none"

[[models]]
name = "tiny"
backend = "sim"
port = {free_port_range()}
api_key = "{ENGINE_KEY}"

[[models]]
name = "broken"
backend = "sim"
port = {free_port_range()}
api_key = "{BROKEN_KEY}"
options = {{ fault = "crash-at=0" }}

[launcher]
backoff_initial_s = 0.05
backoff_max_s = 0.1
max_restarts = 1
health_interval_s = 0.5
ready_poll_s = 0.1
ready_timeout_s = 30
stop_grace_s = 5

[gateway]
port = {gateway_port}
api_keys = ["{API_KEY}"]
admin_keys = ["{ADMIN_KEY}"]
""")
    gateway_log = folder / "gateway.log"
    gateway: subprocess.Popen[bytes] | None = None
    up = subprocess.run(
        [sys.executable, "-m", "modelserver", "up", str(fleet), "--detach"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env={**os.environ, "COLUMNS": "300"},
        preexec_fn=_permissive_umask,
    )
    result = Launched(folder, fleet, state_dir, up, f"http://127.0.0.1:{gateway_port}", gateway_log)
    try:
        with open(gateway_log, "wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "modelserver", "gateway", str(fleet)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                preexec_fn=_permissive_umask,
            )
        wait_until_sync(lambda: _answers(result.gateway_url, gateway), "the gateway", 60)
        yield result
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=30)
        result.run("down", str(fleet))
        with contextlib.suppress(Exception):
            for pid in result.worker_pids():
                if is_ours(pid, result.state_dir / "state-local.json", fleet):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)


def _answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the gateway exited"
    with contextlib.suppress(requests.RequestException):
        requests.get(url + "/health", timeout=5)
        return True
    return False


def _assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked into {where}"


# -- keys never appear ---------------------------------------------------------------------------


def test_the_fleet_came_up_with_one_worker_serving_and_one_failed(launched: Launched) -> None:
    assert launched.up.returncode == 1  # the broken one failed; the other serves
    workers = {w["name"]: w for w in launched.state()["workers"]}
    assert workers["tiny-0@local"]["status"] == "ready"
    assert workers["broken-0@local"]["status"] == "failed"
    assert "--- log tail ---" in workers["broken-0@local"]["last_error"]
    _assert_no_secret("the output of up", launched.up.stdout + launched.up.stderr)


def test_keys_never_appear_in_status_the_state_file_or_any_log(launched: Launched) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    # Traffic that exercises the keys: served (the router sends the engine key), refused
    # (a wrong key, an API key on /admin), a failing model, admin views and metrics.
    served = requests.post(
        launched.gateway_url + "/v1/chat/completions", json=chat, headers=auth, timeout=60
    )
    assert served.status_code == 200, served.text
    wrong = {"Authorization": f"Bearer {API_KEY}x"}
    assert (
        requests.get(launched.gateway_url + "/v1/models", headers=wrong, timeout=30).status_code
        == 401
    )
    assert (
        requests.get(launched.gateway_url + "/admin/workers", headers=auth, timeout=30).status_code
        == 401
    )
    failing = requests.post(
        launched.gateway_url + "/v1/chat/completions",
        json={**chat, "model": "broken"},
        headers=auth,
        timeout=60,
    )
    assert failing.status_code >= 500
    admin = requests.get(
        launched.gateway_url + "/admin/workers",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert admin.status_code == 200
    metrics = requests.get(launched.gateway_url + "/metrics", timeout=30)

    table = launched.run("status", str(launched.fleet))
    as_json = launched.run("status", str(launched.fleet), "--json")
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    assert "broken-0@local" in table.stdout and "failed" in table.stdout
    assert {r["name"] for r in orjson.loads(as_json.stdout)} == {"tiny-0@local", "broken-0@local"}
    for where, text in [
        ("status", table.stdout + table.stderr),
        ("status --json", as_json.stdout + as_json.stderr),
        ("answers of the gateway", served.text + failing.text + admin.text + metrics.text),
    ]:
        _assert_no_secret(where, text)
    files = [p for p in launched.state_dir.rglob("*") if p.is_file()] + [launched.gateway_log]
    names = {p.name for p in files}
    assert {
        "state-local.json",
        "supervisor-local.log",
        "tiny-0@local.log",
        "broken-0@local.log",
        "gateway.log",
    } <= names
    for path in files:
        _assert_no_secret(str(path), path.read_text(errors="replace"))
    # Nor is it on an engine's command line, which every user of the host can read.
    for record in orjson.loads((launched.state_dir / "state-local.json").read_bytes())["workers"]:
        if record["pid"] is not None and psutil.pid_exists(record["pid"]):
            _assert_no_secret("command line", " ".join(psutil.Process(record["pid"]).cmdline()))


# -- where engines listen ------------------------------------------------------------------------


def test_engines_of_a_real_up_listen_only_on_loopback(launched: Launched) -> None:
    listening: list[tuple[int, str]] = []
    for pid in launched.worker_pids():
        group = psutil.Process(pid)
        for proc in [group, *group.children(recursive=True)]:
            listening += [
                (proc.pid, c.laddr.ip)
                for c in proc.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
    assert listening, "no engine process listens at all"
    assert {ip for _, ip in listening} == {"127.0.0.1"}, listening


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize(("address", "expected"), [(None, "127.0.0.1"), ("10.9.8.7", "10.9.8.7")])
def test_each_backend_binds_to_loopback_unless_the_host_says_otherwise(
    backend: str, address: str | None, expected: str
) -> None:
    host: dict[str, object] = {"name": "h", "gpus": "none"}
    if address is not None:
        host["address"] = address
    fleet = parse_fleet(
        {
            "hosts": [host],
            "models": [
                {
                    "name": "m",
                    "backend": backend,
                    "path": "/w/m.gguf",
                    "port": 30000,
                    "gpus_per_replica": 0,
                    "api_key": ENGINE_KEY,
                }
            ],
        }
    )
    [worker] = fleet.workers()
    spec = BACKENDS[backend].command(Placement(worker, (), None), fleet)
    argv = list(spec.argv)
    assert argv[argv.index("--host") + 1] == expected
    assert argv.count("--host") == 1
    assert ENGINE_KEY not in spec.shown()  # what logs and messages print


# -- nothing we write is world-writable ------------------------------------------------------


def test_state_and_log_files_and_folders_are_not_world_writable_even_under_umask_0(
    launched: Launched,
) -> None:
    # The gateway writes no file of its own (it logs to stderr, wherever its caller sends
    # it), and this test created gateway.log itself, so that file proves nothing here.
    written = [launched.state_dir, *launched.state_dir.rglob("*")]
    assert len(written) >= 5
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & stat.S_IWOTH, f"{path} is world-writable ({mode:o})"
    for path in [
        launched.state_dir / "logs" / "tiny-0@local.log",
        launched.state_dir / "logs" / "supervisor-local.log",
    ]:
        assert not stat.S_IMODE(path.stat().st_mode) & stat.S_IRWXO  # logs: not even readable


# -- every route asks for the key ----------------------------------------------------------------

ODD_PATHS = [
    "/v1/models/",
    "/v1//models",
    "/%761/models",
    "/v1/%6dodels",
    "/v1/./models",
    "/x/../v1/models",
    "/admin/workers/",
    "/%61dmin/workers",
    "/admin/./workers",
    "/v1/../admin/workers",
    "/admin/workers?url=x",
]


async def test_every_route_and_method_refuses_without_the_key_head_options_and_odd_paths_too() -> (
    None
):
    router = Router.from_mapping(
        {"m": ["http://127.0.0.1:9"]}, transport=MockTransport(lambda r: MockResponse(json={}))
    )
    config = GatewayConfig(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])
    async with (
        GatewayServer(router, config, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        asked: list[tuple[str, str]] = []
        routed: list[tuple[str, str]] = []
        for route in gateway.app.router.routes():  # HEAD routes included this time
            path = route.resource.canonical if route.resource else ""
            if path.startswith(("/v1", "/admin")):
                routed.append((route.method, path))
                asked += [(route.method, path), ("OPTIONS", path)]
        assert len(routed) >= 10
        asked += [("GET", p) for p in ODD_PATHS] + [("POST", p) for p in ODD_PATHS]
        assert any(method == "HEAD" for method, _ in asked)
        # Exactly 401, never 404: a refusal comes before routing, so a caller without the key
        # learns nothing of which routes exist, and a walked route that answered 404 would be
        # one the walk did not reach.
        for method, path in asked:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
                async with http.request(method, gateway.url + path, headers=headers) as r:
                    assert r.status == 401, (method, path, headers, r.status)
            if "admin" in path:  # an API key is not an admin key
                auth = {"Authorization": f"Bearer {API_KEY}"}
                async with http.request(method, gateway.url + path, headers=auth) as r:
                    assert r.status == 401, (method, path, r.status)
                    if method != "HEAD":
                        error = (await r.json())["error"]
                        assert error["type"] == "authentication_error", (method, path, error)
        # And the walk reached real routes: with the admin key each one is there (it may
        # still refuse an empty body), so the 401s above were the key's doing.
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for method, path in routed:
            async with http.request(method, gateway.url + path, headers=admin) as r:
                assert r.status not in (401, 403, 404, 405), (method, path, r.status)


# -- an engine that prints its keys and crashes -------------------------------------------------

LEAKY_KEY = "sk-engine-key-do-not-leak-3"
LEAKY_ARG_KEY = "sk-engine-arg-key-do-not-leak-4"
LEAKY_ADMIN_KEY = "sk-engine-admin-key-do-not-leak-5"
GATEWAY_ENV_KEY = "sk-gateway-env-key-do-not-leak-6"
LEAKY_SECRETS = (LEAKY_KEY, LEAKY_ARG_KEY, LEAKY_ADMIN_KEY, GATEWAY_ENV_KEY, API_KEY, ADMIN_KEY)

# Prints its keys as SGLang and vLLM print their server arguments, then dies.
FAKE_LLAMA_SERVER = """#!/bin/sh
echo "server_args=ServerArgs(api_key='$LLAMA_API_KEY', gateway='$MODELSERVER_API_KEYS')"
echo "non-default args: $*"
echo "fatal: cannot load the model" >&2
exit 1
"""


def test_keys_an_engine_prints_before_it_crashes_never_leave_its_own_log(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text(FAKE_LLAMA_SERVER)
    (bin_dir / "llama-server").chmod(0o755)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    state_dir = tmp_path / "state"
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"""
[fleet]
state_dir = "{state_dir}"

[[hosts]]
name = "local"
address = "127.0.0.1"
gpus = "none"

[[models]]
name = "leaky"
backend = "llamacpp"
path = "./m.gguf"
port = {free_port_range()}
api_key = "{LEAKY_KEY}"
args = ["--api-key={LEAKY_ARG_KEY}", "--admin-api-key", "{LEAKY_ADMIN_KEY}"]

[launcher]
backoff_initial_s = 0.05
backoff_max_s = 0.1
max_restarts = 1
ready_poll_s = 0.1
stop_grace_s = 5

[gateway]
api_keys = ["{API_KEY}"]
admin_keys = ["{ADMIN_KEY}"]
""")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "300",
           "MODELSERVER_API_KEYS": GATEWAY_ENV_KEY}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelserver", *args, str(fleet)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)

    try:
        up = run("up", "--detach")
        assert up.returncode == 1, up.stdout + up.stderr
        assert "leaky-0@local failed:" in up.stderr
        log = (state_dir / "logs" / "leaky-0@local.log").read_text()
        assert LEAKY_KEY in log  # the engine did print it (into its own log, mode 0640)...
        assert GATEWAY_ENV_KEY not in log  # ...but never got the gateway's keys to print
        state = state_dir / "state-local.json"
        [record] = orjson.loads(state.read_bytes())["workers"]
        assert "server_args=ServerArgs(api_key='***'" in record["last_error"]  # the tail
        status, as_json = run("status"), run("status", "--json")
        logs = subprocess.run(
            [sys.executable, "-m", "modelserver", "logs", str(fleet), "leaky-0"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
        )
        assert "non-default args:" in logs.stdout
        for where, text in [
            ("the output of up", up.stdout + up.stderr),
            ("status", status.stdout + status.stderr),
            ("status --json", as_json.stdout + as_json.stderr),
            ("modelserver logs", logs.stdout + logs.stderr),
            ("the state file", state.read_text()),
            ("the supervisor's log", (state_dir / "logs" / "supervisor-local.log").read_text()),
        ]:
            for secret in LEAKY_SECRETS:
                assert secret not in text, f"{secret} leaked into {where}"
        assert not stat.S_IMODE(state.stat().st_mode) & stat.S_IRWXO  # 0640
    finally:
        run("down")
