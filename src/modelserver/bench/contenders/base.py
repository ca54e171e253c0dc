"""What every contender does: start in front of a fleet's URLs, serve requests, stop.

A contender is one way a user could route requests across the same engines: one of our
policies through `AsyncModelServer`, the seed's client, SGLang's router process, LiteLLM's
Router, or the oracle. The runner drives each one the same way and times every request on
its own clock, so the figures compare routing, not measuring code.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from modelserver.bench.outcome import Outcome

ATTEMPTS_PER_REQUEST = 3
"""Our router's default attempt budget; every contender gets that much time per request."""


@dataclass(frozen=True)
class Target:
    """The engines a contender routes across."""

    model: str
    kind: str
    urls: tuple[str, ...]
    attempt_timeout_s: float = 60.0
    """One attempt on one engine, given to each contender's own per-attempt timeout."""

    @property
    def request_timeout_s(self) -> float:
        """All attempts of one request: after this the request counts as failed."""
        return ATTEMPTS_PER_REQUEST * self.attempt_timeout_s


class Contender(abc.ABC):
    name: str
    """As the report names it, e.g. `ours:cache_aware` or `sglang:power_of_two`."""
    family: str
    """`ours`, `seed`, `sglang`, `litellm` or `oracle` (for the headline ratios)."""

    @abc.abstractmethod
    async def start(self, target: Target) -> None:
        """Be ready to route to `target` (start a router process, build a client)."""

    @abc.abstractmethod
    async def chat(self, messages: list[dict[str, str]], max_tokens: int, stream: bool) -> Outcome:
        """Send one chat request; never raise for a failed request (the Outcome says)."""

    async def embed(self, text: str) -> Outcome:
        return Outcome(ok=False, e2e_s=0.0, error=f"{self.name} does not route embeddings")

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop whatever `start` started."""

    def external_pids(self) -> list[int]:
        """Processes outside the driver that do this contender's routing (their CPU time
        counts as the contender's client-side CPU too)."""
        return []
