"""Where a router's workers come from besides the fleet file's URLs: a `Discovery` adds and
removes them while the router runs (cluster mode: `launcher.cluster.discovery`, which reads
them from the Ray cluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from modelserver.routing.router import Router


class Discovery(Protocol):
    async def refresh(self, router: Router) -> None:
        """Add and remove the router's workers to match the source now (`Router.start`
        awaits the first one, so requests find the workers from the start)."""
        ...

    async def run(self, router: Router) -> None:
        """`refresh` on the source's own beat until cancelled (by `Router.close`)."""
        ...
