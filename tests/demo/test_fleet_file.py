"""The fleet file the demo leaves behind reproduces what the demo ran and routed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from modelserver.config import load_fleet, parse_fleet
from modelserver.demo.fleet import HOST, DemoFleet
from modelserver.errors import FleetFileError
from modelserver.launcher.backends import backend_for
from modelserver.launcher.placement import GpuView, plan
from modelserver.models import PreparedModels
from modelserver.routing import Router


@pytest.fixture
def demo_fleet(tmp_path: Path) -> DemoFleet:
    models = PreparedModels(tmp_path / "tiny-chat.gguf", tmp_path / "minilm.gguf")
    return DemoFleet.create(tmp_path, models)


def test_the_written_file_routes_what_the_demo_routed(demo_fleet: DemoFleet) -> None:
    again = load_fleet(demo_fleet.path)  # what `modelserver up` / `gateway` would read
    workers = again.workers(HOST)
    assert Counter(w.model for w in workers) == {"tiny-chat": 2, "minilm": 1, "llama-8b": 3}
    demo_routes = {(e.model, e.url, e.name) for e in demo_fleet.router_entries()}
    file_routes = {(w.model, w.url, w.name) for w in workers}
    assert demo_routes == file_routes
    router = Router.from_fleet(again)  # the gateway's router over the file
    assert {(s.model, s.url) for s in router.workers()} == {(m, u) for m, u, _ in demo_routes}


def test_the_half_speed_engine_is_the_third_replica_of_llama_8b(demo_fleet: DemoFleet) -> None:
    fleet = load_fleet(demo_fleet.path)
    placed = {p.worker.name: p for p in plan(fleet, HOST, GpuView()).placed}
    speeds = {}
    for replica in range(3):
        argv = list(backend_for("sim").command(placed[f"llama-8b-{replica}@{HOST}"], fleet).argv)
        speeds[replica] = float(argv[argv.index("--speed") + 1])
    assert speeds == {0: 1.0, 1: 1.0, 2: 0.5}
    shown = demo_fleet.engines["llama-8b"]
    assert [shown.engine_of(r) for r in range(3)] == ["sim SGLang H100"] * 2 + [
        "sim SGLang ½ H100"]


@pytest.mark.parametrize(
    ("options", "says"),
    [({"speeds": [1.0, 0.5]}, "2 speeds for 3 replicas"),
     ({"speeds": [1.0, 1.0, 0.0]}, "speeds[2]: speed must be a number > 0"),
     ({"speeds": [1.0, 1.0, 1.0], "speed": 2.0}, "not both")],
)
def test_per_replica_speeds_that_do_not_fit_are_refused(
    options: dict[str, object], says: str
) -> None:
    with pytest.raises(FleetFileError, match=r"models\[0\]\.options\.speeds") as caught:
        parse_fleet({"hosts": [{"name": "h"}],
                     "models": [{"name": "m", "backend": "sim", "port": 1, "replicas": 3,
                                 "options": options}]})
    assert says in str(caught.value)
