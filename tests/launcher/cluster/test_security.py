"""What a Ray cluster shows anyone connected must hold no key, and the private Ray of
`address = "local"` authenticates with a token and listens on loopback only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import psutil
import pytest
import ray
from ray.experimental import internal_kv

from tests.launcher.cluster.conftest import ADMIN_KEY, API_KEY, RayCluster, cli, rows
from tests.launcher.cluster.test_replicas_on_the_cluster import sims
from tests.processes import group_alive
from tests.waiting import wait_until_sync

# Real Ray on a shared 2-core machine: the session's cluster starts in the first test that
# needs it, and a node's death or a private Ray takes a while. Generous; no timing assertion.
pytestmark = pytest.mark.timeout(480)

ENGINE_KEY = "sk-engine-secret-0099"


def test_no_key_shows_in_actor_or_job_listings_or_the_fleet_document(
    ray_cluster: RayCluster,
) -> None:
    fleet = ray_cluster.fleet("keys", sims(replicas=1, gpus=0, more=f'api_key = "{ENGINE_KEY}"\n'))
    try:
        cli("up", str(fleet))
        assert rows(fleet)[0]["status"] == "ready"  # it serves, with its key
        listings = json.dumps([ray._private.state.actors(), ray._private.state.jobs()],
                              default=str)
        for key in (ENGINE_KEY, API_KEY, ADMIN_KEY):
            assert key not in listings
        document = internal_kv._internal_kv_get(b"keys/fleet", namespace="modelserver")
        assert document is not None
        assert API_KEY.encode() not in document and ADMIN_KEY.encode() not in document
        record = internal_kv._internal_kv_get(b"keys/workers/m-0@cluster",
                                              namespace="modelserver")
        assert record is not None and ENGINE_KEY.encode() not in record
    finally:
        cli("down", str(fleet))


def _listeners(root: psutil.Process) -> list[tuple[str, str]]:
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.name(), conn.laddr.ip))
        except psutil.Error:
            continue
    return found


def test_a_private_ray_uses_a_token_and_loopback_and_down_stops_it(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[fleet]\nname = "private"\nstate_dir = "{tmp_path / "state"}"\n'
                     '[cluster]\naddress = "local"\nlocal_gpus = 0\n' + sims(replicas=2, gpus=0))
    record = tmp_path / "state" / "ray-local.json"
    try:
        cli("up", str(fleet))
        assert [r["status"] for r in rows(fleet)] == ["ready", "ready"]
        private = json.loads(record.read_text())
        head = psutil.Process(private["pid"])
        assert head.environ()["RAY_AUTH_MODE"] == "token"
        token = tmp_path / "state" / "ray-auth-token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        listening = _listeners(head)
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip in listening), \
            listening
    finally:
        cli("down", str(fleet))
    assert not record.exists()
    wait_until_sync(lambda: not group_alive(private["pid"]), "the private Ray to be gone", 60)
    assert not os.path.exists(private["temp_dir"])
