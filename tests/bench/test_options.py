"""Flags that shape a run: arrivals, faults, engines, contender names."""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import pytest

from modelserver.bench import parse_engines
from modelserver.bench.arrivals import ClosedLoop, Poisson, parse_arrivals
from modelserver.bench.contenders import CONTENDERS, resolve_names, unavailable
from modelserver.bench.faults import parse_fault
from modelserver.errors import BenchError


def test_closed_loop_and_poisson_specs() -> None:
    assert parse_arrivals("closed:8", capacity_rps=10) == ClosedLoop(8)
    assert parse_arrivals("poisson:0.5x", capacity_rps=10) == Poisson(rate=5.0, fraction=0.5)
    assert parse_arrivals("poisson:3/s", capacity_rps=10) == Poisson(rate=3.0)


@pytest.mark.parametrize("spec", ["closed:0", "poisson:0x", "poisson", "open:3", "poisson:2"])
def test_bad_arrivals_say_what_is_allowed(spec: str) -> None:
    with pytest.raises(BenchError, match="--arrivals"):
        parse_arrivals(spec, capacity_rps=10)


def test_poisson_start_times_are_seeded_and_average_the_rate() -> None:
    arrivals = Poisson(rate=4.0)
    a = arrivals.start_times(2000, turns_per_session=1, seed=1)
    assert a == arrivals.start_times(2000, turns_per_session=1, seed=1)
    assert a != arrivals.start_times(2000, turns_per_session=1, seed=2)
    assert a[0] == 0 and all(x < y for x, y in itertools.pairwise(a))
    assert 3.6 < len(a) / a[-1] < 4.4
    # Sessions of four turns start four times less often, so requests keep the rate.
    b = arrivals.start_times(2000, turns_per_session=4, seed=1)
    assert 0.9 < len(b) / b[-1] < 1.1


def test_fault_specs() -> None:
    kill = parse_fault("kill@40%", workers=4)
    assert (kill.action, kill.worker, kill.unit, kill.at) == ("kill", 1, "share", 0.4)
    assert not kill.due(elapsed_s=99, sent_share=0.39) and kill.due(0, 0.4)
    slow = parse_fault("slow:3@12s", workers=4)
    assert (slow.worker, slow.unit) == (3, "seconds")
    assert slow.due(elapsed_s=12, sent_share=0) and not slow.due(11.9, 1.0)


@pytest.mark.parametrize("spec", ["explode@1s", "kill", "kill:9@1s", "hang@150%"])
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(BenchError, match="--fault"):
        parse_fault(spec, workers=4)


def test_engines_are_relative_speeds_times_the_fleet_speed() -> None:
    engines = parse_engines("1,1,0.5", speed=4, max_running=8)
    assert [e.speed for e in engines] == [4, 4, 2]
    assert all(e.max_running == 8 for e in engines)
    with pytest.raises(BenchError, match="--engines"):
        parse_engines("1,fast")
    with pytest.raises(BenchError, match="--engines"):
        parse_engines("1,0")


def test_contender_groups_expand_in_canonical_order() -> None:
    assert resolve_names("oracle,ours") == [
        "ours:fastest", "ours:round_robin", "ours:least_load", "ours:cache_aware",
        "ours:expected_completion", "oracle"]
    assert "sglang:round_robin" not in resolve_names("all")
    assert "smg:round_robin" not in resolve_names("all")
    assert resolve_names("sglang:round_robin") == ["sglang:round_robin"]
    hedged = "ours:expected_completion+hedge"  # named only: it is the hedging experiment
    assert set(resolve_names("all")) | {"sglang:round_robin", "smg:round_robin", hedged} == set(
        CONTENDERS)
    assert resolve_names("smg") == [
        "smg:cache_aware", "smg:prefix_hash", "smg:least_load", "smg:power_of_two"]
    assert set(resolve_names("smg")) < set(resolve_names("all"))


def test_unknown_contender_lists_the_valid_ones() -> None:
    with pytest.raises(BenchError, match="valid: ours:fastest"):
        resolve_names("ours,nginx")


def test_a_peer_without_its_package_is_reported_unavailable(monkeypatch: Any) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "litellm" else real(name, *a))
    assert "litellm" in (unavailable("litellm:latency") or "")
    assert unavailable("ours:cache_aware") is None
