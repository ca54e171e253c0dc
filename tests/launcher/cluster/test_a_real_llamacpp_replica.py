"""A real engine on the cluster: one llama.cpp replica (the tiny GGUF `modelserver models
prepare` writes), placed by Ray, supervised by its actor, answering through the gateway."""

from __future__ import annotations

import pytest
import requests

from modelserver.models import prepare_models
from tests.launcher.cluster.conftest import (
    RayCluster,
    cli,
    gateway,
    group_alive,
    leftovers,
    rows,
)
from tests.launcher.cluster.test_replicas_on_the_cluster import AUTH, routed
from tests.waiting import wait_until_sync

# Real Ray on a shared 2-core machine: the session's cluster starts in the first test that
# needs it, and a node's death or a private Ray takes a while. Generous; no timing assertion.
pytestmark = pytest.mark.timeout(480)


def test_a_llamacpp_replica_serves_through_the_gateway(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    models = prepare_models(tmp_path_factory.mktemp("models"))
    fleet = ray_cluster.fleet("llama", (
        '[[models]]\nname = "tiny-chat"\nbackend = "llamacpp"\n'
        f'path = "{models.chat_path}"\ngpus_per_replica = 0\n'
        "options = { ctx_size = 1024, parallel = 1, threads = 1 }\n"))
    try:
        cli("up", str(fleet))
        (row,) = rows(fleet)
        assert row["status"] == "ready" and row["node"], row
        with gateway(fleet) as base:
            wait_until_sync(lambda: row["url"] in routed(base), "the gateway to find it", 60)
            answer = requests.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=120,
                                   json={"model": "tiny-chat", "max_tokens": 4,
                                         "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] is not None
    finally:
        cli("down", str(fleet))
    assert leftovers("llama") == {}
    assert not group_alive(row["pid"])
