"""Cluster-mode figures for docs/BENCHMARKS.md, on a Ray cluster simulated on this machine.

    PYTHONPATH=src python scripts/cluster_figures.py [--replicas 16] [--nodes 4]

1. `modelserver up` wall time for REPLICAS simulated replicas (1 logical GPU each) over NODES
   Ray nodes, against `modelserver up --detach` of the same replicas on one host (local mode);
2. the time from a node's removal to every replica ready again (a spare node gives room);
3. the router's discovery lag: from a moved replica's record turning ready (its actor's
   clock) to the router routing to its new URL.

Every process it starts, it stops. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from modelserver.config import load_fleet  # noqa: E402
from modelserver.launcher.cluster.executor import read_records, status_rows  # noqa: E402
from modelserver.routing.router import Router  # noqa: E402


def cli(*args: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "modelserver", *args], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def sim_model(replicas: int, port: str = "") -> str:
    return (f'[[models]]\nname = "m"\nbackend = "sim"\nreplicas = {replicas}\n'
            f"gpus_per_replica = 1\n{port}")


def local_up(tmp: Path, replicas: int) -> float:
    gpus = ", ".join(f"{{index = {i}, total_gib = 80}}" for i in range(replicas))
    fleet = tmp / "local.toml"
    fleet.write_text(f'[fleet]\nname = "local"\nstate_dir = "{tmp / "local"}"\n'
                     f'[[hosts]]\nname = "h"\ninventory = [{gpus}]\n'
                     + sim_model(replicas, "port = 42000\n"))
    try:
        return cli("up", str(fleet), "--detach")
    finally:
        cli("down", str(fleet))


async def _moved(fleet_path: Path, cluster: Cluster, doomed: str, count: int) -> dict[str, float]:
    fleet = load_fleet(fleet_path)
    router = Router.from_fleet(fleet)
    await router.start()
    try:
        before = {r["name"]: r["url"] for r in status_rows(fleet)}
        node = next(n for n in cluster.list_all_nodes() if n.node_id == doomed)
        removed_at = time.time()
        cluster.remove_node(node)
        seen: dict[str, float] = {}
        while True:
            now = time.time()
            urls = {w.url for w in router.workers()}
            records = read_records(fleet.fleet.name)
            for name, record in records.items():
                if record.get("url") in urls and record.get("url") != before.get(name) \
                        and name not in seen:
                    seen[name] = now - record["updated_at"]
            rows = status_rows(fleet)
            if len(rows) == count and all(r["status"] == "ready" and r["node"] != doomed
                                          for r in rows) and len(seen) == sum(
                    1 for r in rows if r["url"] != before[r["name"]]):
                ready_again = max(records[r["name"]]["updated_at"] for r in rows) - removed_at
                return {"node_death_to_all_ready_s": round(ready_again, 2),
                        "moved": len(seen),
                        "discovery_lag_max_s": round(max(seen.values()), 3),
                        "discovery_lag_mean_s": round(sum(seen.values()) / len(seen), 3)}
            await asyncio.sleep(0.05)
    finally:
        await router.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    per_node = args.replicas // args.nodes
    node = {"num_cpus": per_node, "num_gpus": per_node, "node_ip_address": "127.0.0.1"}
    tmp = Path(tempfile.mkdtemp(prefix="cluster-figures-"))
    result: dict[str, Any] = {"replicas": args.replicas, "nodes": args.nodes}
    result["local_up_detach_s"] = round(local_up(tmp, args.replicas), 2)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "node_ip_address": "127.0.0.1",
        "include_dashboard": False})
    fleet = tmp / "cluster.toml"
    try:
        for _ in range(args.nodes):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="modelserver", log_to_driver=False)
        fleet.write_text(f'[fleet]\nname = "figures"\nstate_dir = "{tmp / "cluster"}"\n'
                         f'[cluster]\naddress = "{cluster.address}"\n'
                         + sim_model(args.replicas))
        result["cluster_up_s"] = round(cli("up", str(fleet)), 2)
        rows = status_rows(load_fleet(fleet))
        assert all(r["status"] == "ready" for r in rows), rows
        cluster.add_node(**node)  # the spare the removed node's replicas move to
        cluster.wait_for_nodes()
        doomed = rows[0]["node"]
        result |= asyncio.run(_moved(fleet, cluster, doomed, args.replicas))
    finally:
        cli("down", str(fleet))
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
