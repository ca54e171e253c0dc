"""The router's workers in cluster mode, read from the cluster: each replica's actor publishes
its record (model, kind, URL, status) in Ray's key-value store, and the router reads them
every `cluster.discovery_interval_s`. No URL is written in the fleet file.

A replica's URL is routed to from the first read that finds it ready; a URL no record names
any more (the replica moved to another node, or was removed) is dropped, and so is one whose
record says it is draining or stopped (`up` takes it out of service: see `rollout`). A
replica that only crashed keeps its URL, and the router's own health probes and circuit
judge it, as in local mode. The process becomes a Ray driver (`connect`), in a thread, so
the event loop never blocks on Ray.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from modelserver.config import Fleet

if TYPE_CHECKING:
    from modelserver.routing.router import Router

log = logging.getLogger(__name__)

OUT_OF_SERVICE = ("draining", "stopping", "stopped")
"""Record statuses of a replica taken out of service on purpose: routed to no more."""


class ClusterDiscovery:
    def __init__(self, fleet: Fleet) -> None:
        assert fleet.cluster is not None
        self.fleet = fleet
        self.interval_s = fleet.cluster.discovery_interval_s
        self._routed: dict[str, str] = {}
        """URL -> worker name, for the workers this discovery added to the router."""

    def _read(self) -> dict[str, dict[str, Any]]:
        from modelserver.launcher.cluster.connect import connect

        connect(self.fleet)
        from modelserver.launcher.cluster.executor import read_records

        return read_records(self.fleet.fleet.name)

    async def refresh(self, router: Router) -> None:
        """Bring the router's workers to the records read now."""
        records = await asyncio.to_thread(self._read)
        named = {r["url"] for r in records.values()
                 if r.get("url") and r.get("status") not in OUT_OF_SERVICE}
        for url in [u for u in self._routed if u not in named]:
            log.info("%s left %s", self._routed.pop(url), url)
            router.remove_worker(url)
        wanted = {m.name for m in self.fleet.models}
        for record in records.values():
            url = str(record.get("url") or "")
            if record.get("status") != "ready" or not url or url in self._routed \
                    or record.get("model") not in wanted:
                continue
            model = self.fleet.model(record["model"])
            router.add_worker(model.name, url, model.kind, name=record["name"],
                              api_key=model.api_key)
            self._routed[url] = record["name"]
            log.info("%s is ready at %s", record["name"], url)

    async def run(self, router: Router) -> None:
        """`refresh` every interval until cancelled; a failed read is logged and retried."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh(router)
            except Exception:  # the router keeps the workers it has
                log.exception("reading the replicas from the cluster failed")
