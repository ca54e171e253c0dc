"""Bad cluster addresses, versions and fleets the cluster cannot run: one clear error naming
the key and what was found, and nothing started. Ray stays optional."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ray.experimental import internal_kv

from tests.launcher.cluster.conftest import RayCluster, cli, free_port, leftovers
from tests.launcher.cluster.test_replicas_on_the_cluster import sims

# Real Ray on a shared 2-core machine: the session's cluster starts in the first test that
# needs it, and a node's death or a private Ray takes a while. Generous; no timing assertion.
pytestmark = pytest.mark.timeout(480)


def _refused(fleet: Path) -> str:
    done = cli("up", str(fleet), check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)  # the CLI's code for our errors
    assert "Traceback" not in done.stderr, done.stderr
    return " ".join(done.stderr.split())


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_address_where_nothing_answers_is_named(tmp_path: Path, form: str) -> None:
    address = form.format(port=free_port())
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[cluster]\naddress = "{address}"\n' + sims(replicas=1))
    message = _refused(fleet)
    assert f"cluster.address = '{address}': nothing answers at" in message, message
    assert "Connection refused" in message, message


def test_a_cluster_of_another_ray_version_is_refused(ray_cluster: RayCluster) -> None:
    key, space = b"CLUSTER_METADATA", b"cluster"
    real = internal_kv._internal_kv_get(key, namespace=space)
    assert real is not None
    other = {**json.loads(real), "ray_version": "2.59.0"}
    internal_kv._internal_kv_put(key, json.dumps(other).encode(), overwrite=True,
                                 namespace=space)
    try:
        message = _refused(ray_cluster.fleet("versions", sims(replicas=1)))
    finally:
        internal_kv._internal_kv_put(key, real, overwrite=True, namespace=space)
    assert f"cluster.address = '{ray_cluster.address}'" in message, message
    assert "another Ray or Python version" in message and "2.59.0" in message, message
    assert leftovers("versions") == {}


@pytest.mark.parametrize(
    ("models", "words"),
    [
        (sims(replicas=3, gpus=2), ["models: the fleet asks for 6 GPUs (m: 3 × 2)",
                                    "the whole cluster has 4"]),
        (sims(replicas=1, gpus=3), ["models[0].gpus_per_replica: 3 GPUs cannot be split evenly",
                                    "(GPUs per node: 2, 2)", "gpus_per_replica / N"]),
        (sims(replicas=1, more='node_labels = {zone = "mars"}\n'),
         ["models[0].node_labels.zone: no node of the cluster carries zone=mars"]),
        (sims(replicas=1, more="resources = {tpu = 1}\n"),
         ["models[0].resources.tpu: no node of the cluster has 1 of resource 'tpu'"]),
    ],
    ids=["more GPUs than the cluster", "an uneven split over nodes", "a label no node carries",
         "a resource no node has"],
)
def test_a_fleet_the_cluster_cannot_run_is_refused_before_anything_starts(
    ray_cluster: RayCluster, models: str, words: list[str]
) -> None:
    fleet = ray_cluster.fleet("refused", models)
    message = _refused(fleet)
    for word in words:
        assert word in message, message
    assert leftovers("refused") == {}


BLOCK_RAY = "import sys; sys.modules['ray'] = None; from modelserver.cli import main; main()"


def _without_ray(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_RAY, *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_without_ray_a_cluster_fleet_says_which_extra_and_the_rest_works(
    tmp_path: Path,
) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[cluster]\naddress = "auto"\n' + sims(replicas=1))
    for command in ("up", "status", "down"):
        done = _without_ray(command, str(cluster))
        assert done.returncode == 2, done
        assert "cluster mode needs the `cluster` extra" in done.stderr, done.stderr
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[fleet]\nstate_dir = "state"\n[[hosts]]\nname = "h"\n'
                     '[[models]]\nname = "m"\nbackend = "sim"\nport = 1\n')
    done = _without_ray("status", str(hosts), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["status"] == "stopped"
