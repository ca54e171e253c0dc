from __future__ import annotations

import os
import socket

import pytest

from modelserver.config import WorkerSpec, parse_fleet
from modelserver.errors import LaunchError
from modelserver.launch import detect_host, ports_held_by_others
from modelserver.launch_commands import resolve_worker


def _spec(port: int) -> WorkerSpec:
    return WorkerSpec(name="w", model="m", kind="chat", backend="sim", host="h",
                      address="127.0.0.1", port=port, replica=0)


def test_a_port_someone_listens_on_is_reported_with_its_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        held = ports_held_by_others([_spec(port)], frozenset())
        assert held[port].startswith(f"pid {os.getpid()} (")
        assert ports_held_by_others([_spec(port)], frozenset({os.getpid()})) == {}
    assert ports_held_by_others([_spec(port)], frozenset()) == {}


def test_host_is_found_by_this_machines_address() -> None:
    fleet = parse_fleet({"hosts": [{"name": "far", "address": "203.0.113.9"},
                                   {"name": "here", "address": "127.0.0.1"}]})
    assert detect_host(fleet) == "here"
    assert detect_host(fleet, "far") == "far"
    with pytest.raises(LaunchError, match="--host 'nowhere' is not in the fleet file"):
        detect_host(fleet, "nowhere")


def test_no_or_several_matching_hosts_ask_for_host() -> None:
    none = parse_fleet({"hosts": [{"name": "far", "address": "203.0.113.9"}]})
    with pytest.raises(LaunchError, match="pass --host"):
        detect_host(none)
    two = parse_fleet({"hosts": [{"name": "a", "address": "127.0.0.1"},
                                 {"name": "b", "address": "localhost"}]})
    with pytest.raises(LaunchError, match="several hosts"):
        detect_host(two)


def test_workers_are_found_by_name_prefix_or_url() -> None:
    fleet = parse_fleet({"hosts": [{"name": "local"}], "models": [
        {"name": "llama-8b", "backend": "sim", "port": 31000, "replicas": 2},
        {"name": "llama-70b", "backend": "sim", "port": 32000},
    ]})
    assert resolve_worker(fleet, "llama-8b-1@local").name == "llama-8b-1@local"
    assert resolve_worker(fleet, "llama-8b-0").name == "llama-8b-0@local"
    assert resolve_worker(fleet, "http://127.0.0.1:32000").name == "llama-70b-0@local"
    with pytest.raises(LaunchError, match="matches several workers"):
        resolve_worker(fleet, "llama-8b")
    with pytest.raises(LaunchError, match="no worker 'qwen'"):
        resolve_worker(fleet, "qwen")
