"""What `up` changes on a fleet in the cluster and in which order, from plain records and a
recorder of the operations (no Ray); and routers leaving a draining replica alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from modelserver.config import Fleet, parse_fleet
from modelserver.launcher.cluster.discovery import ClusterDiscovery
from modelserver.launcher.cluster.rollout import carry_out, fingerprint, plan, settings_of
from modelserver.launcher.plan import Action


def _fleet(m_replicas: int = 2, **n: object) -> Fleet:
    return parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "replicas": m_replicas},
        {"name": "n", "backend": "sim", **n}]})


def _records(fleet: Fleet, status: str = "ready") -> dict[str, dict[str, Any]]:
    return {s.name: {"name": s.name, "model": s.model, "status": status,
                     "url": f"http://127.0.0.1:{9000 + i}",
                     "fingerprint": fingerprint(fleet, s), "settings": settings_of(fleet, s)}
            for i, s in enumerate(fleet.workers())}


def test_a_running_fleet_as_the_file_says_is_all_kept() -> None:
    fleet = _fleet()
    live = {s.name for s in fleet.workers()}
    rollout = plan(fleet, live, live, _records(fleet))
    assert rollout.empty and sorted(rollout.kept) == sorted(live)
    assert rollout.describe() == ["cluster: nothing to change (3 workers as the file says)"]


def test_a_changed_file_is_planned_with_the_reasons_and_keys_never_shown() -> None:
    before = _fleet(m_replicas=3, api_key="sk-old-key-1")
    live = {s.name for s in before.workers()}
    after = _fleet(m_replicas=2, api_key="sk-new-key-2", args=["--seed", "7"])
    rollout = plan(after, live, live, _records(before))
    assert [(c.action, c.worker) for c in rollout.changes] == [
        (Action.REPLACE, "n-0@cluster"), (Action.REMOVE, "m-2@cluster")]
    replace = rollout.changes[0]
    assert replace.reasons == ('api_key changed', 'args: [] -> ["--seed", "7"]')
    text = "\n".join(rollout.describe())
    assert "sk-old-key-1" not in text and "sk-new-key-2" not in text
    assert "not in the fleet file" in text and "n has one replica" in text


def test_a_replica_whose_actor_is_gone_is_added_again_and_a_new_one_is_new() -> None:
    fleet = _fleet(m_replicas=2)
    records = _records(fleet)
    rollout = plan(fleet, {"n-0@cluster"}, {"n-0@cluster", "m-0@cluster"}, records)
    assert [(c.action, c.worker, c.reasons) for c in rollout.changes] == [
        (Action.ADD, "m-0@cluster", ("its supervising actor is gone",)),
        (Action.ADD, "m-1@cluster", ("its supervising actor is gone",)),
    ]
    del records["m-1@cluster"]
    assert plan(fleet, {"n-0@cluster"}, set(), records).changes[1].reasons == (
        "new in the fleet file",)


class Recorder:
    """The cluster operations as a log; `wait_settled` answers from `statuses`."""

    def __init__(self, statuses: dict[str, str] | None = None) -> None:
        self.log: list[tuple[str, tuple[str, ...]]] = []
        self.statuses = statuses or {}

    def create(self, worker: str) -> None:
        self.log.append(("create", (worker,)))

    def drain(self, workers: Sequence[str]) -> dict[str, str]:
        self.log.append(("drain", tuple(workers)))
        return {w: "drained" for w in workers}

    def remove(self, workers: Sequence[str]) -> None:
        self.log.append(("remove", tuple(workers)))

    def wait_settled(self, workers: Sequence[str]) -> dict[str, str]:
        self.log.append(("settled", tuple(workers)))
        return {w: self.statuses.get(w, "ready") for w in workers}

    def sleep(self, seconds: float) -> None:
        self.log.append(("sleep", (str(seconds),)))


def test_adds_are_ready_before_anything_goes_replacements_one_at_a_time_drained() -> None:
    before = _fleet(m_replicas=3, replicas=1)
    live = {s.name for s in before.workers()}
    after = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "replicas": 3, "args": ["--seed", "1"]},
        {"name": "o", "backend": "sim"}]})
    ops = Recorder()
    done = carry_out(plan(after, live, live, _records(before)), ops, notice_s=4.0)
    assert ops.log == [
        ("create", ("o-0@cluster",)), ("settled", ("o-0@cluster",)),
        ("drain", ("m-0@cluster",)), ("remove", ("m-0@cluster",)),
        ("create", ("m-0@cluster",)), ("settled", ("m-0@cluster",)),
        ("sleep", ("4.0",)),
        ("drain", ("m-1@cluster",)), ("remove", ("m-1@cluster",)),
        ("create", ("m-1@cluster",)), ("settled", ("m-1@cluster",)),
        ("sleep", ("4.0",)),
        ("drain", ("m-2@cluster",)), ("remove", ("m-2@cluster",)),
        ("create", ("m-2@cluster",)), ("settled", ("m-2@cluster",)),
        ("drain", ("n-0@cluster",)), ("remove", ("n-0@cluster",)),
    ]
    assert done.problems == [] and set(done.drained) == {
        "m-0@cluster", "m-1@cluster", "m-2@cluster", "n-0@cluster"}


def test_a_replacement_that_does_not_come_back_stops_its_models_round() -> None:
    before = _fleet(m_replicas=3)
    live = {s.name for s in before.workers()}
    after = parse_fleet({"cluster": {}, "models": [
        {"name": "m", "backend": "sim", "replicas": 3, "args": ["--seed", "1"]},
        {"name": "n", "backend": "sim"}]})
    ops = Recorder({"m-0@cluster": "failed"})
    done = carry_out(plan(after, live, live, _records(before)), ops, notice_s=0)
    assert ("drain", ("m-1@cluster",)) not in ops.log
    assert done.problems == [
        "m-0@cluster did not start again: failed",
        "m: not replaced, as m-0@cluster did not start: m-1@cluster, m-2@cluster"
        " (they run as before)"]


def test_a_replica_not_serving_is_replaced_or_removed_without_a_drain() -> None:
    before = _fleet(m_replicas=2)
    live = {s.name for s in before.workers()}
    after = _fleet(m_replicas=1, args=["--seed", "1"])
    ops = Recorder()
    carry_out(plan(after, live, live, _records(before, status="waiting")), ops, notice_s=1)
    assert [e for e in ops.log if e[0] == "drain"] == [("drain", ())]
    assert ("remove", ("n-0@cluster",)) in ops.log and ("remove", ("m-1@cluster",)) in ops.log


class FakeRouter:
    def __init__(self) -> None:
        self.urls: set[str] = set()

    def add_worker(self, model: str, url: str, kind: str, **_: Any) -> None:
        self.urls.add(url)

    def remove_worker(self, url: str) -> None:
        self.urls.discard(url)


def test_discovery_drops_a_draining_replica_but_keeps_one_that_crashed() -> None:
    fleet = _fleet(m_replicas=2)
    records = _records(fleet)
    discovery = ClusterDiscovery(fleet)
    discovery._read = lambda: records  # type: ignore[method-assign]
    router = FakeRouter()
    asyncio.run(discovery.refresh(router))  # type: ignore[arg-type]
    assert len(router.urls) == 3
    records["m-0@cluster"]["status"] = "draining"
    records["m-1@cluster"]["status"] = "backoff"
    asyncio.run(discovery.refresh(router))  # type: ignore[arg-type]
    assert router.urls == {records["m-1@cluster"]["url"], records["n-0@cluster"]["url"]}
