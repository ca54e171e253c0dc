"""SimThread: a simulated engine on its own loop thread, for synchronous callers."""

from __future__ import annotations

import httpx
import pytest

from modelserver.sim import SimConfig, SimThread


def test_sim_thread_serves_and_takes_faults_from_sync_code() -> None:
    with SimThread(SimConfig(model="llama", speed=50)) as sim:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        reply = httpx.post(sim.url + "/v1/chat/completions", json=body)
        assert reply.status_code == 200
        assert sim.engine.totals.requests == 1
        sim.set_faults("error-rate=1:503")
        assert httpx.post(sim.url + "/v1/chat/completions", json=body).status_code == 503
        url = sim.url
    with pytest.raises(httpx.ConnectError):  # stopped with the with block
        httpx.get(url + "/health")


def test_a_taken_port_fails_cleanly() -> None:
    with SimThread(SimConfig(model="llama")) as first:
        taken = SimThread(SimConfig(model="llama"), port=first.port)
        with pytest.raises(OSError):
            taken.start()
        assert not taken._thread.is_alive()
