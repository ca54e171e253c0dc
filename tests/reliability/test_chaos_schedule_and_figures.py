"""The chaos run's pure parts: what it chooses to break, and how its figures are counted."""

from __future__ import annotations

import pytest

from modelserver.chaos import Chaos, ChaosSettings, Timeline, compute_figures
from modelserver.chaos.figures import dead_intervals
from modelserver.chaos.timeline import (
    ActionRecord,
    AttemptRecord,
    RequestRecord,
    ResultRecord,
    StateEvent,
)

W0, W1 = "http://127.0.0.1:9000", "http://127.0.0.1:9001"


def test_the_same_seed_and_answers_give_the_same_actions() -> None:
    healthy = {"m": ["m-0@h", "m-1@h", "m-2@h"]}
    first, second = Chaos(ChaosSettings(), 3), Chaos(ChaosSettings(), 3)
    runs = [[(c.next_gap(), c.choose(healthy)) for _ in range(20)] for c in (first, second)]
    assert runs[0] == runs[1]
    kinds = {action.kind for _, action in runs[0] if action is not None}
    assert kinds == {"kill", "hang", "slow", "error"}
    assert all(a.hold_s == 0 for _, a in runs[0] if a is not None and a.kind == "kill")


def test_a_model_keeps_its_last_healthy_workers() -> None:
    chaos = Chaos(ChaosSettings(keep_healthy=2), 1)
    assert chaos.choose({"m": ["a", "b"]}) is None  # only two left: both kept
    picks = {chaos.choose({"m": ["a", "b", "c"], "n": ["x"]}) for _ in range(30)}
    assert {p.target for p in picks if p is not None} <= {"a", "b", "c"}
    with pytest.raises(ValueError, match="keep_healthy"):
        Chaos(ChaosSettings(keep_healthy=0), 1)


def timeline() -> Timeline:
    """W0 killed at t=10: the state file says backoff at 10.01, ready again (new pid) at 13."""
    t = Timeline(started=0.0, ended=20.0)
    t.states += [
        StateEvent(0.0, W0, "m-0", "ready", 100), StateEvent(0.0, W1, "m-1", "ready", 101),
        StateEvent(10.01, W0, "m-0", "backoff", None), StateEvent(10.3, W0, "m-0", "starting", 200),
        StateEvent(13.0, W0, "m-0", "ready", 200),
    ]
    t.actions.append(ActionRecord(10.0, "kill", W0, "m-0", 100))
    return t


def test_known_dead_runs_from_the_first_sign_to_ready_again() -> None:
    t = timeline()
    t.results.append(ResultRecord(10.005, "client", W0, False, "cannot connect: refused"))
    assert dead_intervals(t)[W0] == [(10.005, 13.0)]  # the refusal came first
    assert W1 not in dead_intervals(t)


def test_attempts_to_a_worker_known_dead_for_more_than_a_second_are_counted() -> None:
    t = timeline()
    t.attempts += [
        AttemptRecord(10.02, "client", W0, 1),   # just after the kill: allowed (grace 1 s)
        AttemptRecord(10.9, "gateway", W0, 1),   # still within the grace
        AttemptRecord(11.5, "client", W0, 2),    # known dead for 1.49 s: counted
        AttemptRecord(13.4, "client", W0, 1),    # ready again: fine
        AttemptRecord(11.5, "client", W1, 1),    # another worker: fine
    ]
    figures = compute_figures(t)
    assert figures.routed_to_known_dead == 1
    assert "11.50s" in figures.routed_to_known_dead_examples[0]
    # From the kill to the last attempt before it was ready again; from ready to the next.
    assert figures.kill_to_last_request_s == pytest.approx([1.5])
    assert figures.ready_to_first_request_s == pytest.approx([0.4])
    assert figures.kills == 1 and figures.restarts_ready == 1


def test_requests_are_counted_per_path() -> None:
    t = timeline()
    t.requests += [
        RequestRecord(1.0, "client", W0, True, None, 0.01),
        RequestRecord(1.0, "gateway", W1, True, None, 0.02),
        RequestRecord(2.0, "gateway", None, False, "HTTP 503: no healthy worker", 0.001),
    ]
    figures = compute_figures(t)
    assert (figures.paths["client"].sent, figures.paths["client"].failed) == (1, 0)
    gateway = figures.paths["gateway"]
    assert (gateway.sent, gateway.succeeded, gateway.failed) == (2, 1, 1)
    assert gateway.errors == ["HTTP 503: no healthy worker"]
    assert figures.sent == 3 and figures.failed == 1
    assert figures.kills_without_later_request == 1  # no attempt went to W0 after its kill
