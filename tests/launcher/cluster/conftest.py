"""A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster), one per test
session: a head without resources and two nodes of two logical GPUs each, every node on
127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray's own address look-ups agree). The
test process is a driver of it, in namespace `modelserver`. Tests that add or remove nodes
put the cluster back as they found it; the session ends with every Ray process gone."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from tests.processes import group_alive as group_alive  # re-exported: the cluster tests use it
from tests.waiting import wait_until_sync

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray
from ray.cluster_utils import Cluster
from ray.experimental import internal_kv
from ray.util.placement_group import placement_group_table

ADMIN_KEY = "sk-cluster-admin-key-0042"
API_KEY = "sk-cluster-api-key-0043"
NODE = {"num_cpus": 4, "num_gpus": 2, "node_ip_address": "127.0.0.1"}


@dataclass
class RayCluster:
    cluster: Cluster
    address: str
    tmp: Path
    fleets: list[Path] = field(default_factory=list)

    def add_node(self, **args: Any) -> Any:
        node = self.cluster.add_node(**{**NODE, **args})
        self.cluster.wait_for_nodes()
        return node

    def fleet(self, name: str, models: str, extra: str = "", launcher: str = "") -> Path:
        """A fleet file on this cluster; `down` is run for it at the end of the session."""
        path = self.tmp / f"{name}.toml"
        path.write_text(
            f'[fleet]\nname = "{name}"\nstate_dir = "{self.tmp / name}"\n'
            f'[cluster]\naddress = "{self.address}"\n{extra}\n'
            f'[gateway]\nadmin_keys = ["{ADMIN_KEY}"]\napi_keys = ["{API_KEY}"]\n'
            f"[launcher]\nstop_grace_s = 5\nhealth_interval_s = 1\n{launcher}\n" + models
        )
        self.fleets.append(path)
        return path


def cli(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`modelserver ARGS` in a process of its own: another driver of the cluster."""
    done = subprocess.run([sys.executable, "-m", "modelserver", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def rows(fleet: Path) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = orjson.loads(cli("status", str(fleet), "--json").stdout)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gateway(fleet: Path) -> Iterator[str]:
    """`modelserver gateway FLEET` in its own process (a driver that discovers the workers)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modelserver", "gateway", str(fleet),
                             "--port", str(port)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_until_sync(answers, "the gateway to listen", 60)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "node_ip_address": "127.0.0.1",
        "include_dashboard": False,
    })
    started: set[int] = set()
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="modelserver", log_to_driver=False)
        here = RayCluster(cluster, cluster.address, tmp_path_factory.mktemp("cluster"))
        started = {p.pid for p in psutil.Process().children(recursive=True)}
        yield here
        for fleet in here.fleets:
            cli("down", str(fleet), check=False)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()
    left = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.info["pid"] in started
            and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes of the test cluster still run: {left}"


def leftovers(fleet_name: str) -> dict[str, Any]:
    """What the cluster still holds of a fleet: actors, placement groups, records."""
    actors = [n for n in ray.util.list_named_actors() if n.startswith(f"{fleet_name}/")]
    groups = [e["name"] for e in placement_group_table().values()
              if str(e.get("name", "")).startswith(f"{fleet_name}/") and e["state"] != "REMOVED"]
    keys = internal_kv._internal_kv_list(f"{fleet_name}/", namespace="modelserver")
    return {k: v for k, v in (("actors", actors), ("groups", groups), ("keys", keys)) if v}


def wait_rows(fleet: Path, done: Any, what: str, timeout_s: float = 120) -> list[dict[str, Any]]:
    """`status --json` rows once `done(rows)` holds."""
    seen: list[list[dict[str, Any]]] = []

    def check() -> bool:
        seen.append(rows(fleet))
        return bool(done(seen[-1]))

    wait_until_sync(check, what, timeout_s)
    return seen[-1]


def all_ready(count: int) -> Any:
    return lambda rs: len(rs) == count and all(r["status"] == "ready" for r in rs)
