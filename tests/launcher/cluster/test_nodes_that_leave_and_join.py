"""Nodes come and go under a running fleet, on a real multi-node Ray cluster: a node taken
away under steady gateway traffic has its replicas ready elsewhere with no request lost and
the router on their new addresses; a replica with no room waits with its reason and starts
when a node joins. Ray does the re-placing; nobody runs a command."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import ray
import requests
from ray.util.placement_group import placement_group, remove_placement_group

from tests.launcher.cluster.conftest import RayCluster, all_ready, cli, gateway, rows, wait_rows
from tests.launcher.cluster.test_replicas_on_the_cluster import (
    AUTH,
    ROUND_ROBIN,
    routed,
    sims,
)
from tests.waiting import wait_until_sync

# Real Ray on a shared 2-core machine: the session's cluster starts in the first test that
# needs it, and a node's death or a private Ray takes a while. Generous; no timing assertion.
pytestmark = pytest.mark.timeout(480)


class Traffic(threading.Thread):
    """Non-streamed chat requests through the gateway, one after another, until stopped."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop = threading.Event()
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = requests.post(f"{self.base}/v1/chat/completions", headers=AUTH,
                                       timeout=120, json={
                                           "model": "m", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "hi"}]})
                if answer.status_code == 200:
                    self.results["ok"] += 1
                else:
                    self.failures.append(f"{answer.status_code} {answer.text[:300]}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))


def _node(ray_cluster: RayCluster, node_id: str) -> Any:
    return next(n for n in ray_cluster.cluster.list_all_nodes() if n.node_id == node_id)


def test_a_node_removed_under_traffic_has_its_replicas_ready_elsewhere_and_routed_to(
    ray_cluster: RayCluster,
) -> None:
    ray_cluster.add_node()  # room for what the removed node held
    fleet = ray_cluster.fleet("moving", sims(replicas=4) + ROUND_ROBIN)
    try:
        cli("up", str(fleet))
        before = rows(fleet)
        assert all_ready(4)(before), before
        on_node = Counter(r["node"] for r in before)
        doomed, _ = on_node.most_common(1)[0]
        with gateway(fleet) as base:
            wait_until_sync(lambda: len(routed(base)) == 4, "the gateway to find 4 workers", 60)
            traffic = Traffic(base)
            traffic.start()
            try:
                wait_until_sync(lambda: traffic.results["ok"] >= 5, "traffic to flow", 60)
                ray_cluster.cluster.remove_node(_node(ray_cluster, doomed))
                after = wait_rows(fleet, lambda rs: all_ready(4)(rs)
                                  and doomed not in {r["node"] for r in rs},
                                  "every replica ready again off the removed node", 180)
                urls = {r["url"] for r in after}
                wait_until_sync(lambda: set(routed(base)) == urls,
                                "the router to use the new addresses", 60)
                moved = [r["url"] for r in after
                         if r["name"] in {b["name"] for b in before if b["node"] == doomed}]
                wait_until_sync(lambda: all(routed(base)[u]["requests"] > 0 for u in moved),
                                "requests to reach the moved replicas", 60)
            finally:
                traffic.stop.set()
                traffic.join(150)
        assert traffic.failures == [], traffic.failures
        assert traffic.results["ok"] > 5
    finally:
        cli("down", str(fleet))


def test_a_replica_without_room_waits_with_its_reason_and_starts_when_a_node_joins(
    ray_cluster: RayCluster,
) -> None:
    # Someone else's work holds one GPU of each node: no node has two free.
    foreign = placement_group([{"GPU": 1}, {"GPU": 1}], strategy="STRICT_SPREAD")
    ray.get(foreign.ready(), timeout=60)
    fleet = ray_cluster.fleet("roomless", sims(replicas=1, gpus=2))
    joined = None
    try:
        out = cli("up", str(fleet)).stdout
        waiting = rows(fleet)[0]
        assert waiting["status"] == "waiting", waiting
        assert "no node has 2 free GPUs" in waiting["waiting_for"], waiting
        assert "m-0@cluster waits: no node has 2 free GPUs" in " ".join(out.split()), out
        joined = ray_cluster.add_node()
        ready = wait_rows(fleet, all_ready(1), "the replica to start on the new node")
        assert ready[0]["node"] == joined.node_id
        assert ready[0]["gpus"] and len(ready[0]["gpus"]) == 2
    finally:
        cli("down", str(fleet))
        remove_placement_group(foreign)
        if joined is not None:
            ray_cluster.cluster.remove_node(joined)
