"""A valid fleet file becomes typed objects; the examples shipped with the project load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field, Strict

from modelserver import load_fleet
from modelserver._fleet_values import Section
from modelserver.config import parse_fleet

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_issue_example_keys_load_with_their_names(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        """
[fleet]
name = "lab"
state_dir = ".modelserver"

[[hosts]]
name = "gpu-a"
address = "10.0.0.11"
gpus = "all"

[[models]]
name = "llama-8b"
kind = "chat"
backend = "sglang"
path = "/models/Meta-Llama-3.1-8B-Instruct"
hosts = ["gpu-a"]
replicas = 8
gpus_per_replica = 1
port = 30000
args = ["--enable-torch-compile"]
options = { mem_fraction = 0.5 }   # the issue wrote the simulator's speed; sglang refuses it

[router]
policy = "cache_aware"

[gateway]
host = "127.0.0.1"
port = 8000
"""
    )
    fleet = load_fleet(path)
    assert fleet.fleet.name == "lab"
    assert fleet.state_dir() == tmp_path / ".modelserver"
    model = fleet.model("llama-8b")
    assert (model.kind, model.backend, model.replicas, model.gpus_each) == ("chat", "sglang", 8, 1)
    assert model.args == ["--enable-torch-compile"]
    assert model.options == {"mem_fraction": 0.5}
    urls = [w.url for w in fleet.workers()]
    assert urls == [f"http://10.0.0.11:{30000 + i}" for i in range(8)]
    assert fleet.workers()[3].name == "llama-8b-3@gpu-a"


def test_defaults_depend_on_backend() -> None:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "h"}],
            "models": [
                {"name": "a", "backend": "vllm", "path": "/w", "port": 1000},
                {"name": "b", "backend": "sim", "port": 2000},
                {"name": "c", "backend": "llamacpp", "path": "x.gguf", "port": 3000},
            ],
        }
    )
    assert [m.gpus_each for m in fleet.models] == [1, 0, 0]
    assert fleet.router.policy == "cache_aware"
    assert (fleet.gateway.host, fleet.gateway.port) == ("127.0.0.1", 8000)
    assert fleet.hosts[0].address == "127.0.0.1"


def test_replicas_count_per_host_and_ports_count_up() -> None:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "a", "address": "10.0.0.1"}, {"name": "b", "address": "10.0.0.2"}],
            "models": [{"name": "m", "backend": "sim", "port": 5000, "replicas": 2}],
        }
    )
    assert [w.url for w in fleet.workers()] == [
        "http://10.0.0.1:5000",
        "http://10.0.0.1:5001",
        "http://10.0.0.2:5000",
        "http://10.0.0.2:5001",
    ]
    assert [w.name for w in fleet.workers(host="b")] == ["m-0@b", "m-1@b"]


def test_auto_address_is_an_address_of_this_machine() -> None:
    from modelserver.netinfo import local_addresses

    fleet = parse_fleet(
        {
            "hosts": [{"name": "h", "address": "auto"}],
            "models": [{"name": "m", "backend": "sim", "port": 1}],
        }
    )
    assert fleet.workers()[0].address in local_addresses()


def test_relative_weights_path_is_resolved_against_the_fleet_file(tmp_path: Path) -> None:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "h"}],
            "models": [
                {"name": "a", "backend": "llamacpp", "path": "./w/a.gguf", "port": 1},
                {"name": "b", "backend": "sglang", "path": "meta-llama/Llama-3.1-8B", "port": 2},
            ],
        },
        base_dir=str(tmp_path),
    )
    assert fleet.model_path(fleet.models[0]) == str(tmp_path / "w" / "a.gguf")
    assert fleet.model_path(fleet.models[1]) == "meta-llama/Llama-3.1-8B"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_shipped_examples_load(name: str) -> None:
    fleet = load_fleet(EXAMPLES / name)
    assert fleet.workers()


def test_seed_example_has_eight_8b_replicas_on_gpus_0_to_7() -> None:
    fleet = load_fleet(EXAMPLES / "seed-8x8b.toml")
    chat = fleet.model("llama-8b")
    assert chat.replicas == 8 and chat.gpus == list(range(8))
    assert [m.name for m in fleet.models if m.kind == "embedding"] == ["gte-large", "e5-mistral"]
    assert "llama-70b" in (EXAMPLES / "seed-8x8b.toml").read_text()


def test_an_integer_is_taken_where_a_number_is_wanted() -> None:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "h"}],
            "models": [{"name": "m", "backend": "sim", "port": 1, "options": {"speed": 20}}],
            "launcher": {"ready_timeout_s": 5},
        }
    )
    assert fleet.launcher.ready_timeout_s == 5.0
    assert isinstance(fleet.launcher.ready_timeout_s, float)


def test_a_field_toml_cannot_write_is_refused_when_its_section_is_defined() -> None:
    with pytest.raises(TypeError, match=r"Bad\.folder: .*Strict\(False\)"):

        class Bad(Section):
            folder: Path = Path(".")

    class Good(Section):
        folder: Annotated[Path, Strict(False)] = Path(".")
        more: list[Annotated[Path, Strict(False)]] = Field(default_factory=list)

    good = Good.model_validate({"folder": "/data", "more": ["a"]})
    assert (good.folder, good.more) == (Path("/data"), [Path("a")])


def test_hosts_of_one_machine_may_share_it_when_no_port_or_gpu_is_given_twice() -> None:
    fleet = parse_fleet(
        {
            "hosts": [{"name": "a", "address": "127.0.0.1"}, {"name": "b", "address": "localhost"}],
            "models": [
                {"name": "m", "backend": "sim", "port": 5000, "hosts": ["a"]},
                {"name": "n", "backend": "sim", "port": 5001, "hosts": ["b"]},
            ],
            "gateway": {"host": "0.0.0.0", "port": 5002},
        }
    )
    assert [w.url for w in fleet.workers()] == ["http://127.0.0.1:5000", "http://localhost:5001"]


def test_a_cluster_fleet_needs_no_hosts_and_no_ports(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[cluster]\naddress = "ray://head:10001"\n'
        '[[models]]\nname = "big"\nbackend = "sim"\nreplicas = 2\ngpus_per_replica = 2\n'
        'node_labels = {zone = "a"}\nresources = {a100 = 1}\n'
        '[[models]]\nname = "fixed"\nbackend = "sim"\nport = 31000\n'
    )
    fleet = load_fleet(path)
    assert fleet.cluster is not None and fleet.cluster.address == "ray://head:10001"
    assert [(w.name, w.host, w.port) for w in fleet.workers()] == [
        ("big-0@cluster", "cluster", 0), ("big-1@cluster", "cluster", 0),
        ("fixed-0@cluster", "cluster", 31000),
    ]
    assert fleet.model("big").node_labels == {"zone": "a"}
    assert fleet.model("big").resources == {"a100": 1.0}


def test_the_same_fleet_without_cluster_has_no_cluster_table(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[[hosts]]\nname = "h"\n[[models]]\nname = "m"\nbackend = "sim"\nport = 1\n')
    assert load_fleet(path).cluster is None
