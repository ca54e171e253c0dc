"""The seed's client, re-implemented: probe in turn, stick to the fastest, re-probe on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from modelserver.bench.contenders.base import Target
from modelserver.bench.contenders.seed import SeedContender
from modelserver.sim import SimConfig, SimServer


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [SimServer(SimConfig(model="m", speed=speed)) for speed in (2.0, 200.0, 20.0)]
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def test_seed_sticks_to_the_fastest_probe_and_reprobes_when_it_dies(
    sims: list[SimServer],
) -> None:
    seed = SeedContender(time_scale=2.0)
    await seed.start(Target(model="m", kind="chat", urls=tuple(s.url for s in sims)))
    try:
        assert seed.probes == 3  # every server probed once, in turn
        for _ in range(3):
            out = await seed.chat([{"role": "user", "content": "hi"}], 8, stream=False)
            assert out.ok and out.worker == sims[1].url
        assert seed.probes == 3  # no re-probe while the chosen server answers

        await sims[1].stop()
        out = await seed.chat([{"role": "user", "content": "hi"}], 8, stream=True)
        assert out.ok and out.worker == sims[2].url  # the next fastest
        assert out.ttft_s is not None and out.ttft_s <= out.e2e_s
        assert seed.probes > 3
    finally:
        await seed.stop()
