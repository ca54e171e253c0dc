"""SGLang's gateway today (`smg`) as a contender: a real `smg launch` process that starts in
front of real simulated engines, routes requests to them, and is gone after `stop`."""

from __future__ import annotations

import sys

import pytest

from modelserver.bench.contenders import ContenderOptions, Target, make_contender, unavailable
from modelserver.bench.contenders.smg_gateway import smg_command
from modelserver.bench.fleet import EngineSpec, SimFleet
from tests.processes import pid_exists


def test_smg_is_launched_as_users_launch_it_with_the_policy_named() -> None:
    cmd = smg_command("prefix_hash", 4000, 4001, ["http://127.0.0.1:1", "http://127.0.0.1:2"],
                      attempt_timeout_s=20.0)
    # smg's own CLI, not the `smg` console script sglang-router 0.3.2 also installs.
    assert cmd[:4] == [sys.executable, "-m", "smg", "launch"]
    urls = cmd.index("--worker-urls")
    assert cmd[urls + 1: urls + 3] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert cmd[cmd.index("--policy") + 1] == "prefix_hash"
    assert cmd[cmd.index("--request-timeout-secs") + 1] == "20"


@pytest.mark.skipif(unavailable("smg:cache_aware") is not None,
                    reason=unavailable("smg:cache_aware") or "")
async def test_smg_cache_aware_starts_routes_to_both_engines_and_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet = SimFleet(model="m", specs=[EngineSpec(speed=50.0), EngineSpec(speed=50.0)],
                     log_dir=tmp_path)
    contender = make_contender("smg:cache_aware", ContenderOptions(log_dir=tmp_path))
    try:
        await fleet.start()
        await contender.start(Target(model="m", kind="chat", urls=tuple(fleet.urls),
                                     attempt_timeout_s=30.0))
        [pid] = contender.external_pids()
        assert pid_exists(pid)
        prompt = [{"role": "user", "content": "the same long question " * 40}]
        first = await contender.chat(prompt, 4, stream=False)
        again = await contender.chat(prompt, 4, stream=True)
        assert first.ok and again.ok, (first.error, again.error)
        assert first.completion_tokens == 4
        assert again.cached_tokens > 0  # the gateway sent the repeat where its prefix is
    finally:
        await contender.stop()
        await fleet.stop()
    assert not pid_exists(pid)
