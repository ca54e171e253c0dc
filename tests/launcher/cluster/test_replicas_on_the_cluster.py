"""A fleet on a real multi-node Ray cluster: spread over the nodes and served through the
gateway, adopted by a second `up`, its logs read from its node, stopped from another driver
with nothing left; reconciled when the file changes; no engine outliving its actor."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

import pytest
import ray
import requests
from ray.experimental import internal_kv
from ray.util.placement_group import placement_group_table

from tests.launcher.cluster.conftest import (
    ADMIN_KEY,
    API_KEY,
    RayCluster,
    all_ready,
    cli,
    gateway,
    group_alive,
    leftovers,
    rows,
    wait_rows,
)
from tests.waiting import wait_until_sync

# Real Ray on a shared 2-core machine: the session's cluster starts in the first test that
# needs it, and a node's death or a private Ray takes a while. Generous; no timing assertion.
pytestmark = pytest.mark.timeout(480)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROUND_ROBIN = '[router]\npolicy = "round_robin"\n'


def sims(name: str = "m", replicas: int = 4, gpus: int = 1, more: str = "") -> str:
    return (f'[[models]]\nname = "{name}"\nbackend = "sim"\nreplicas = {replicas}\n'
            f"gpus_per_replica = {gpus}\noptions = {{speed = 50.0}}\n{more}")


def chat(base: str, model: str = "m") -> dict[str, Any]:
    answer = requests.post(f"{base}/v1/chat/completions", timeout=60, headers=AUTH, json={
        "model": model, "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
    })
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def routed(base: str) -> dict[str, dict[str, Any]]:
    """The gateway router's workers by URL (its admin list)."""
    answer = requests.get(f"{base}/admin/workers", timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200, answer.text
    return {w["url"]: w for w in answer.json()["workers"]}


def test_four_replicas_spread_reach_the_gateway_are_adopted_and_down_elsewhere_ends_all(
    ray_cluster: RayCluster,
) -> None:
    fleet = ray_cluster.fleet("spread", sims(replicas=4) + ROUND_ROBIN)
    try:
        cli("up", str(fleet))
        first = rows(fleet)
        assert all_ready(4)(first), first
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        # Two GPUs a node, one a replica: Ray had to use both nodes.
        assert len({r["node"] for r in first}) == 2 and {r["node"] for r in first} <= alive
        with gateway(fleet) as base:
            wait_until_sync(lambda: len(routed(base)) == 4, "the gateway to find 4 workers", 30)
            for _ in range(16):
                chat(base)
            served = routed(base)
        assert set(served) == {r["url"] for r in first}
        assert all(w["requests"] > 0 for w in served.values()), served

        again = cli("up", str(fleet)).stdout
        assert "4 kept" in again, again
        assert [r["pid"] for r in rows(fleet)] == [r["pid"] for r in first]  # adopted
        log = cli("logs", str(fleet), "m-0").stdout  # read on the replica's node
        assert f"sim: m (chat, speed 50) on {first[0]['url']}" in log, log
    finally:
        # `down` is one more driver process: neither the one that ran `up` nor this test.
        out = cli("down", str(fleet)).stdout
    assert "stopped 4 replicas" in out, out
    assert leftovers("spread") == {}
    assert not any(group_alive(r["pid"]) for r in first)
    assert "nothing runs" in cli("down", str(fleet)).stdout


def _actor_ids(fleet: str) -> dict[str, str]:
    return {n: ray.get_actor(n)._actor_id.hex() for n in ray.util.list_named_actors()
            if n.startswith(f"{fleet}/")}


def test_up_with_a_changed_file_plans_dry_then_drains_adds_removes_and_replaces(
    ray_cluster: RayCluster,
) -> None:
    fleet = ray_cluster.fleet("change", sims(replicas=2) + sims("n", replicas=1, gpus=0),
                              launcher="drain_notice_s = 1\ndrain_timeout_s = 30")
    try:
        cli("up", str(fleet))
        before = {r["name"]: r for r in rows(fleet)}
        actors = _actor_ids("change")
        fleet.write_text(fleet.read_text().replace("replicas = 2", "replicas = 3")
                         .replace('name = "n"\nbackend = "sim"',
                                  'name = "n"\nbackend = "sim"\nargs = ["--seed", "7"]'))
        dry = cli("up", "--dry-run", str(fleet)).stdout
        assert "cluster: 1 to add, 1 to replace, 0 to remove, 2 kept" in dry, dry
        assert "m-2@cluster  new in the fleet file" in dry, dry
        assert 'n-0@cluster  args: [] -> ["--seed", "7"]' in dry, dry
        assert "dry run: nothing was changed" in dry
        now = {r["name"]: r for r in rows(fleet)}
        assert {n: now[n] for n in before} == before  # nothing changed
        assert now["m-2@cluster"]["status"] == "stopped"  # nothing added
        assert _actor_ids("change") == actors

        out = cli("up", str(fleet)).stdout
        assert "1 added" in out and "2 kept" in out and "1 replaced" in out, out
        assert "n-0@cluster: drained" in out, out  # the engine reported nothing in flight
        after = {r["name"]: r for r in rows(fleet)}
        assert all(r["status"] == "ready" for r in after.values()), after
        assert after["m-0@cluster"]["pid"] == before["m-0@cluster"]["pid"]
        assert after["n-0@cluster"]["pid"] != before["n-0@cluster"]["pid"]
        assert not group_alive(before["n-0@cluster"]["pid"])

        fleet.write_text(fleet.read_text().replace("replicas = 3", "replicas = 1"))
        out = cli("up", str(fleet)).stdout
        assert "2 removed" in out and "m-2@cluster: drained" in out, out
        assert not group_alive(after["m-2@cluster"]["pid"])
        assert not [n for n in ray.util.list_named_actors() if n.startswith("change/m-2")]
    finally:
        cli("down", str(fleet))
    assert leftovers("change") == {}


def _record(fleet: str, worker: str) -> dict[str, Any]:
    raw = internal_kv._internal_kv_get(f"{fleet}/workers/{worker}", namespace="modelserver")
    assert raw is not None
    result: dict[str, Any] = json.loads(raw)
    return result


def test_killing_the_supervising_actor_kills_its_engine_group(ray_cluster: RayCluster) -> None:
    fleet = ray_cluster.fleet("kill", sims(replicas=2))
    try:
        cli("up", str(fleet))
        first = {r["name"]: r for r in rows(fleet)}
        # Killed for good (ray.kill): its engine goes with it, nothing restarts it.
        ray.kill(ray.get_actor("kill/m-0@cluster"), no_restart=True)
        wait_until_sync(lambda: not group_alive(first["m-0@cluster"]["pid"]),
                        "the killed actor's engine group to be gone", 60)
        gone = {r["name"]: r for r in rows(fleet)}["m-0@cluster"]
        assert gone["status"] == "stopped" and "actor is gone" in gone["last_error"]

        # Its process killed (SIGKILL, as a crash or the OOM killer would): Ray restarts the
        # actor, the old engine is gone and a new one serves.
        actor_pid = _record("kill", "m-1@cluster")["actor_pid"]
        os.kill(actor_pid, signal.SIGKILL)
        wait_until_sync(lambda: not group_alive(first["m-1@cluster"]["pid"]),
                        "the crashed actor's engine group to be gone", 60)
        back = wait_rows(fleet, lambda rs: rs[1]["status"] == "ready"
                         and rs[1]["pid"] != first["m-1@cluster"]["pid"],
                         "m-1 to be ready under its restarted actor")
        assert group_alive(back[1]["pid"])
        assert "1 added, 1 kept" in cli("up", str(fleet)).stdout  # `up` brings m-0 back
        wait_rows(fleet, all_ready(2), "m-0 to be back")
    finally:
        cli("down", str(fleet))
    assert leftovers("kill") == {}


RANK_1_STARTED = r"ranks started: 1 on node \w+ \(pid (\d+)\)"


def _pid_in(log: str, pattern: str) -> int:
    found = re.findall(pattern, log)
    assert found, log
    return int(found[-1])


def test_a_replica_larger_than_a_node_spans_two_nodes_and_restarts_whole(
    ray_cluster: RayCluster,
) -> None:
    # 4 GPUs a replica, 2 a node: one process on each node, rank 0's URL the replica's.
    fleet = ray_cluster.fleet("span", sims(replicas=1, gpus=4))
    logs = ray_cluster.tmp / "span" / "logs"
    try:
        cli("up", str(fleet))
        # The previous test's GPUs may still be on their way back to Ray: then `up` left it
        # waiting for two nodes with room, and Ray places it once they are free.
        [first] = wait_rows(fleet, all_ready(1), "the spanning replica to be ready")
        assert first["url"], first
        [group] = [e for e in placement_group_table().values()
                   if e["name"] == "span/m-0@cluster/pg"]
        assert group["strategy"] == "STRICT_SPREAD"
        assert len(set(group["bundles_to_node_id"].values())) == 2
        assert first["node"] == group["bundles_to_node_id"][0]
        rank1 = _pid_in((logs / "m-0@cluster.log").read_text(), RANK_1_STARTED)
        assert group_alive(rank1)
        waiting = (logs / "m-0@cluster.rank1.log").read_text()
        assert re.search(r"sim rank 1 of 2 \(tp 4\) joined 127\.0\.0\.1:\d+; waiting", waiting)

        # Rank 1's process dies: the whole replica starts again, rank 0 too.
        os.killpg(rank1, signal.SIGKILL)
        back = wait_rows(fleet, lambda rs: rs[0]["status"] == "ready"
                         and rs[0]["pid"] != first["pid"],
                         "the replica to be ready again with a new rank 0")
        assert not group_alive(first["pid"])
        again = _pid_in((logs / "m-0@cluster.log").read_text(), RANK_1_STARTED)
        assert again != rank1 and group_alive(again) and group_alive(back[0]["pid"])
    finally:
        cli("down", str(fleet))
    assert leftovers("span") == {}
    # Gone once the kernel has reaped them (a killed engine's children are reaped by init).
    wait_until_sync(lambda: not group_alive(again) and not group_alive(back[0]["pid"]),
                    "every rank's process group to be gone", 30)
