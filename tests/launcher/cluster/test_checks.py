"""Why a replica waits and what `up` refuses, from the nodes as Ray reports them (no Ray)."""

from __future__ import annotations

from modelserver.config import parse_fleet
from modelserver.launcher.backends.vllm import VllmBackend
from modelserver.launcher.cluster.checks import (
    NodeView,
    nodes_per_replica,
    refusals,
    why_waiting,
)


def _fleet(**model: object) -> object:
    return parse_fleet({"cluster": {}, "models": [{"name": "m", "backend": "sim", **model}]})


A = NodeView("a" * 56, {"zone": "a"}, {"GPU": 2, "CPU": 8}, {"GPU": 1, "CPU": 8})
B = NodeView("b" * 56, {"zone": "b"}, {"GPU": 2, "CPU": 8, "a100": 1}, {"GPU": 1, "CPU": 8})


def test_a_replica_needing_more_free_gpus_than_any_node_has_says_so_with_each_node() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "gpus_per_replica": 2}]})
    assert why_waiting(fleet.models[0], 1.0, [A, B]) == (
        "no node has 2 free GPUs (free: aaaaaaaaaaaa: 1, bbbbbbbbbbbb: 1)")


def test_a_pinned_replica_names_its_pins_and_counts_only_the_nodes_it_may_use() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "gpus_per_replica": 2, "node_labels": {"zone": "b"}}]})
    assert why_waiting(fleet.models[0], 1.0, [A, B]) == (
        "no node with zone=b has 2 free GPUs (free: bbbbbbbbbbbb: 1)")
    gone = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "resources": {"h100": 1}}]})
    assert why_waiting(gone.models[0], 1.0, [A, B]) == "no node with h100 1 is in the cluster"


def test_cpus_short_everywhere_name_the_setting() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [{"name": "m", "backend": "sim"}]})
    busy = NodeView("c" * 56, {}, {"CPU": 2}, {"CPU": 0.5})
    assert "cluster.cpus_per_replica" in why_waiting(fleet.models[0], 1.0, [busy])


def test_a_fleet_that_fits_is_not_refused() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "replicas": 2, "gpus_per_replica": 2,
         "node_labels": {"zone": "b"}, "resources": {"a100": 1}}]})
    assert refusals(fleet, [A, B]) == []


def test_every_refusal_is_listed_with_its_key() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "replicas": 3, "gpus_per_replica": 3,
         "node_labels": {"zone": "c"}},
        {"name": "n", "backend": "sim", "resources": {"a100": 2}}]})
    problems = refusals(fleet, [A, B])
    assert [p.split(":", 1)[0] for p in problems] == [
        "models", "models[0].node_labels.zone", "models[1].resources.a100"]
    assert "found: zone=a, zone=b" in problems[1]
    assert "the most any node has: 1" in problems[2]


C = NodeView("c" * 56, {"zone": "a"}, {"GPU": 4, "CPU": 8}, {"GPU": 4, "CPU": 8})


def test_a_replica_larger_than_a_node_spans_the_fewest_nodes_that_split_it_evenly() -> None:
    def span(gpus: int, nodes: list[NodeView], **more: object) -> int | str:
        fleet = parse_fleet({"cluster": {}, "models": [
            {"name": "m", "backend": "sglang", "path": "/w", "gpus_per_replica": gpus,
             **more}]})
        return nodes_per_replica(fleet.models[0], nodes)

    assert span(4, [A, B, C]) == 1  # C has 4
    assert span(4, [A, B]) == 2  # 2 on each
    assert span(6, [A, B, C]) == 3  # 2 on each of A, B, C
    assert span(4, [A, B, C], node_labels={"zone": "b"}) == (
        "4 GPUs cannot be split evenly over distinct nodes it may use (GPUs per node: 2);"
        " a replica larger than a node takes gpus_per_replica / N GPUs on each of N nodes")
    assert "over distinct nodes (GPUs per node: 4, 2, 2)" in str(span(5, [A, B, C]))
    assert "(GPUs per node: 4, 2, 2)" in str(span(8, [A, B, C]))  # only one node has 4


def test_a_backend_that_cannot_span_nodes_is_refused_with_why() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "vllm", "path": "/w", "gpus_per_replica": 6}]})
    problems = refusals(fleet, [A, B, C])
    assert problems == [
        "models[0].gpus_per_replica: 6 GPUs, more than the largest node has (4), and backend"
        f" 'vllm' cannot span nodes: {VllmBackend.spans_nodes}"]


def test_a_spanning_replica_waits_for_enough_nodes_with_its_share_free() -> None:
    fleet = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "gpus_per_replica": 4}]})
    assert why_waiting(fleet.models[0], 1.0, [A, B, C], nnodes=2) == (
        "fewer than 2 nodes have 2 free GPUs each (free: aaaaaaaaaaaa: 1, bbbbbbbbbbbb: 1,"
        " cccccccccccc: 4)")
