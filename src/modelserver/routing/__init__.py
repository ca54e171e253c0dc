"""Routing: workers as the router sees them, policies, retries, the router itself.

Public names for the client library and the gateway: `Router`, `RoutedResponse`,
`WorkerEntry`, `WorkerStats`, `RouterObserver`, `AttemptResult`, `Transport`,
`AiohttpTransport`, `MockTransport` (tests), `make_policy`, `POLICIES`.
"""

from modelserver.routing.breaker import BreakerState, CircuitBreaker
from modelserver.routing.events import AttemptResult, RouterObserver
from modelserver.routing.policies import POLICIES, Policy, make_policy
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.router import RoutedResponse, Router, WorkerEntry, entries_from_mapping
from modelserver.routing.transport import (
    AiohttpTransport,
    MockRequest,
    MockResponse,
    MockTransport,
    Transport,
    TransportResponse,
)
from modelserver.routing.worker import Worker, WorkerStats

__all__ = [
    "POLICIES",
    "AiohttpTransport",
    "AttemptResult",
    "BreakerState",
    "CircuitBreaker",
    "MockRequest",
    "MockResponse",
    "MockTransport",
    "Policy",
    "RequestInfo",
    "RoutedResponse",
    "Router",
    "RouterObserver",
    "Transport",
    "TransportResponse",
    "Worker",
    "WorkerEntry",
    "WorkerStats",
    "entries_from_mapping",
    "make_policy",
]
