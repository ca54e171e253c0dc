"""`plan_changes`: every kind of change between what runs and what the fleet file wants."""

from __future__ import annotations

from modelserver.launcher.plan import (
    ANY_GPU,
    Action,
    Fingerprint,
    RolloutPlan,
    Running,
    Wanted,
    keys_digest,
    plan_changes,
)

ENGINE = ("python", "-m", "modelserver", "sim", "--port")


def fp(port: int = 30000, *extra: str, gpus: tuple[str, ...] = (),
       env: dict[str, str] | None = None, keys: str = "") -> Fingerprint:
    return Fingerprint((*ENGINE, str(port), *extra), gpus,
                       tuple(sorted((env or {}).items())), keys)


def run(name: str, port: int = 30000, started_with: Fingerprint | None = None,
        status: str = "ready", model: str = "m") -> Running:
    return Running(name, model, status, port,
                   started_with if started_with is not None else fp(port))


def want(name: str, port: int = 30000, started_with: Fingerprint | None = None,
         replicas: int = 2, model: str = "m") -> Wanted:
    return Wanted(name, model, port, replicas,
                  started_with if started_with is not None else fp(port))


def actions(plan: RolloutPlan) -> dict[str, str]:
    return {c.worker: c.action.value for c in plan.changes}


def test_the_same_workers_as_running_are_kept_and_nothing_changes() -> None:
    plan = plan_changes("h", [want("m-0", 30000), want("m-1", 30001)],
                        [run("m-0", 30000), run("m-1", 30001)])
    assert plan.empty and plan.kept == ("m-0", "m-1")
    assert plan.describe() == ["h: nothing to change (2 workers as the file says)"]


def test_a_worker_new_in_the_file_is_added() -> None:
    plan = plan_changes("h", [want("m-0"), want("m-1", 30001)], [run("m-0")])
    assert actions(plan) == {"m-1": "add"}
    assert plan.of(Action.ADD)[0].reasons == ("new in the fleet file",)


def test_a_running_worker_gone_from_the_file_is_removed_after_a_drain() -> None:
    plan = plan_changes("h", [want("m-0")], [run("m-0"), run("m-1", 30001)])
    (change,) = plan.changes
    assert (change.action, change.worker, change.serving) == (Action.REMOVE, "m-1", True)
    assert "drained, then stopped" in change.reasons[0]


def test_a_stopped_record_gone_from_the_file_needs_no_change() -> None:
    plan = plan_changes("h", [want("m-0")], [run("m-0"), run("m-1", 30001, status="stopped")])
    assert plan.empty


def test_changed_engine_args_replace_the_worker_and_say_which() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(30000, "--speed", "2"))],
                        [run("m-0", started_with=fp(30000, "--speed", "1"))])
    (change,) = plan.changes
    assert change.action is Action.REPLACE
    assert change.reasons == ("command changed: -'--speed 1' +'--speed 2'",)


def test_added_args_are_shown_whole() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(30000, "--max-running", "8"))],
                        [run("m-0")])
    assert plan.changes[0].reasons == ("command changed: +'--max-running 8'",)


def test_other_gpus_replace_the_worker() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(gpus=("GPU-b",)))],
                        [run("m-0", started_with=fp(gpus=("GPU-a",)))])
    assert plan.changes[0].reasons == ("GPUs changed: GPU-a -> GPU-b",)


def test_more_gpus_per_replica_replace_it_but_any_gpus_of_the_same_count_keep_it() -> None:
    running = [run("m-0", started_with=fp(gpus=("GPU-a",)))]
    grown = plan_changes("h", [want("m-0", started_with=fp(gpus=(ANY_GPU, ANY_GPU)))], running)
    assert grown.changes[0].reasons == ("GPUs changed: GPU-a -> any 2",)
    same = plan_changes("h", [want("m-0", started_with=fp(gpus=(ANY_GPU,)))], running)
    assert same.empty


def test_a_changed_environment_replaces_the_worker_naming_the_variables() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(env={"HF_HOME": "/b"}))],
                        [run("m-0", started_with=fp(env={"HF_HOME": "/a"}))])
    assert plan.changes[0].reasons == ("environment changed: HF_HOME",)


def test_a_changed_key_replaces_the_worker_without_showing_either_key() -> None:
    old, new = keys_digest(["sk-old-key"]), keys_digest(["sk-new-key"])
    assert old != new and "sk-" not in old + new
    plan = plan_changes("h", [want("m-0", started_with=fp(keys=new))],
                        [run("m-0", started_with=fp(keys=old))])
    assert plan.changes[0].reasons == ("API key changed",)
    assert "sk-" not in "\n".join(plan.describe())


def test_several_differences_are_all_given() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(30000, "-x", gpus=("1",)))],
                        [run("m-0", started_with=fp(30000, gpus=("0",)))])
    assert plan.changes[0].reasons == ("command changed: +'-x'", "GPUs changed: 0 -> 1")


def test_a_worker_recorded_without_what_it_started_with_is_kept_not_guessed() -> None:
    running = [Running("m-0", "m", "ready", 30000, None)]
    plan = plan_changes("h", [want("m-0", started_with=fp(30000, "--new"))], running)
    assert plan.empty and plan.kept == ("m-0",)


def test_replacing_a_worker_that_serves_nothing_costs_no_capacity() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(30000, "--fixed"))],
                        [run("m-0", status="failed")])
    assert plan.changes[0].action is Action.REPLACE and not plan.changes[0].serving
    assert plan.notes == ()


def test_replacements_go_per_model_in_replica_order_and_the_plan_says_what_serves() -> None:
    new = "--max-running"
    wanted = [want(f"a-{i}", 30000 + i, fp(30000 + i, new), replicas=3, model="a")
              for i in range(3)] + [want("b-0", 31000, fp(31000, new), replicas=1, model="b")]
    running = [run(f"a-{i}", 30000 + i, model="a") for i in range(3)] + [
        run("b-0", 31000, model="b")]
    plan = plan_changes("h", wanted, running)
    rounds = plan.replacement_rounds()
    assert [c.worker for c in rounds["a"]] == ["a-0", "a-1", "a-2"]
    assert [c.worker for c in rounds["b"]] == ["b-0"]
    assert "a: one replica at a time, 2 of 3 keep serving" in plan.notes
    assert "b has one replica here: it serves nothing while it is replaced" in plan.notes


def test_a_start_on_gpus_a_removed_worker_holds_stops_that_worker_first() -> None:
    wanted = [want("new-0", 32000, fp(32000, gpus=("GPU-1",)), model="new")]
    running = [run("old-0", 31000, fp(31000, gpus=("GPU-1",)), model="old")]
    plan = plan_changes("h", wanted, running)
    add = plan.of(Action.ADD)[0]
    assert add.stop_first == ("old-0",)
    assert plan.early_stops == ["old-0"]
    assert any("stop-then-start: old-0 stops before new-0 starts (GPU GPU-1 held by old-0)"
               in note for note in plan.notes), plan.notes


def test_a_model_moved_onto_another_models_gpus_waits_for_that_one() -> None:
    wanted = [want("a-0", 30000, fp(30000, gpus=("1",)), model="a"),
              want("b-0", 31000, fp(31000, gpus=("0",)), model="b")]
    running = [run("a-0", 30000, fp(30000, gpus=("0",)), model="a"),
               run("b-0", 31000, fp(31000, gpus=("1",)), model="b")]
    plan = plan_changes("h", wanted, running)
    by_name = {c.worker: c for c in plan.changes}
    assert by_name["a-0"].stop_first == ("b-0",) and by_name["b-0"].stop_first == ("a-0",)
    assert plan.early_stops == ["a-0", "b-0"]  # both go first: stop-then-start, said so


def test_a_start_on_the_port_a_going_worker_holds_stops_that_worker_first() -> None:
    wanted = [want("new-0", 30000, model="new")]
    running = [run("old-0", 30000, model="old")]
    plan = plan_changes("h", wanted, running)
    assert actions(plan) == {"new-0": "add", "old-0": "remove"}
    assert plan.of(Action.ADD)[0].stop_first == ("old-0",)
    assert "port 30000 held by old-0" in plan.notes[0]


def test_a_replacement_keeps_its_own_gpus_and_port_without_a_forced_stop() -> None:
    plan = plan_changes("h", [want("m-0", started_with=fp(30000, "-x", gpus=("0",)))],
                        [run("m-0", started_with=fp(30000, gpus=("0",)))])
    assert plan.changes[0].stop_first == () and plan.early_stops == []


def test_a_kept_workers_gpus_force_nothing() -> None:
    wanted = [want("a-0", 30000, fp(30000, gpus=("0",))),
              want("b-0", 31000, fp(31000, gpus=("1",)))]
    running = [run("a-0", 30000, fp(30000, gpus=("0",)))]
    plan = plan_changes("h", wanted, running)
    assert plan.of(Action.ADD)[0].stop_first == ()


def test_the_printed_plan_lists_every_change_with_its_reason() -> None:
    plan = plan_changes(
        "h",
        [want("m-0", started_with=fp(30000, "-x")), want("m-2", 30002)],
        [run("m-0"), run("m-1", 30001)],
    )
    lines = plan.describe()
    assert lines[0] == "h: 1 to add, 1 to replace, 1 to remove, 0 kept"
    assert lines[1:4] == [
        "  add      m-2  new in the fleet file",
        "  replace  m-0  command changed: +'-x'",
        "  remove   m-1  not in the fleet file: drained, then stopped",
    ]


def test_a_fingerprint_survives_the_state_file_and_a_foreign_one_is_none() -> None:
    original = Fingerprint(("a", "b"), ("GPU-0",), (("X", "1"),), "sha256:ab", 0.8)
    assert Fingerprint.from_json(original.to_json()) == original
    assert Fingerprint.from_json(None) is None
    assert Fingerprint.from_json({"command": "not a list"}) is None
