"""A shared fleet as processes: two `modelserver sim` engines (4 running slots each, SGLang's
priority scheduling on) and a `modelserver gateway` process in front of them, with tenants.
The processes are started and stopped by `modelserver.bench.sim_gateway_fleet`, which
the mixed-tenants benchmark shares."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from modelserver.bench.sim_gateway_fleet import HOST, sims_behind_router
from modelserver.netinfo import free_port_range

MODEL = "chat"
SLOTS = 4
ADMIN = "admin-key-0001"
KEYS = {"lab": "k-lab-0001", "eval": "k-eval-0001", "eval2": "k-eval2-0001",
        "rated": "k-rated-0001", "metered": "k-metered-0001", "single": "k-single-0001"}

FLEET = """
[fleet]
name = "shared"
state_dir = "{state}"

[[hosts]]
name = "local"

[[models]]
name = "{model}"
backend = "sim"
port = {port}
replicas = 2

[router]
policy = "least_load"

[router.admission]
reserved_where = "{reserved_where}"

[gateway]
port = {gateway_port}
admin_keys = ["{admin}"]

[[gateway.tenants]]
name = "lab"
keys = ["{lab}"]
priority = "interactive"

[[gateway.tenants]]
name = "eval"
keys = ["{eval}"]
priority = "batch"

[[gateway.tenants]]
name = "eval2"
keys = ["{eval2}"]
priority = "batch"

[[gateway.tenants]]
name = "rated"
keys = ["{rated}"]
requests_per_second = 0.2

[[gateway.tenants]]
name = "metered"
keys = ["{metered}"]
tokens_per_minute = 10

[[gateway.tenants]]
name = "single"
keys = ["{single}"]
max_in_flight = 1
"""


@dataclass
class SharedFleet:
    gateway_url: str
    engine_urls: list[str]
    http: aiohttp.ClientSession

    async def chat(self, tenant: str, max_tokens: int, *, stream: bool = False,
                   text: str = "hello") -> aiohttp.ClientResponse:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens, "stream": stream}
        return await self.http.post(
            self.gateway_url + "/v1/chat/completions", data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {KEYS[tenant]}"},
        )

    async def tenants(self) -> dict[str, dict[str, Any]]:
        async with self.http.get(
            self.gateway_url + "/admin/tenants", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as r:
            assert r.status == 200
            rows = (await r.json())["tenants"]
        return {row["name"]: row for row in rows}

    async def running_at_engines(self) -> int:
        return await self._engines_sum("sglang:num_running_reqs")

    async def requests_at_engines(self) -> int:
        """Requests the engines finished (generation requests only; probes are GETs)."""
        return await self._engines_sum("sglang:num_requests_total")

    async def _engines_sum(self, name: str) -> int:
        return sum([int(await self._engine_gauge(url, name)) for url in self.engine_urls])

    async def _engine_gauge(self, url: str, name: str) -> float:
        async with self.http.get(url + "/metrics") as r:
            text = await r.text()
        total = 0.0
        for match in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M):
            total += float(match.group(1))
        return total


@contextlib.asynccontextmanager
async def shared_fleet(
    tmp: Path, speed: float = 0.5, reserved_where: str = "below_cap"
) -> AsyncIterator[SharedFleet]:
    port = free_port_range(2)
    gateway_port = free_port_range(1, avoid=range(port, port + 2))
    fleet = tmp / "fleet.toml"
    fleet.write_text(FLEET.format(
        state=tmp / "state", model=MODEL, port=port, gateway_port=gateway_port, admin=ADMIN,
        reserved_where=reserved_where, **KEYS,
    ))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as http, sims_behind_router(
        http, tmp, [sys.executable, "-m", "modelserver", "gateway", str(fleet)],
        model=MODEL, port=port, router_port=gateway_port, slots=SLOTS, speed=speed,
        engine_priority=True,
    ) as engines:
        yield SharedFleet(f"http://{HOST}:{gateway_port}", engines, http)
