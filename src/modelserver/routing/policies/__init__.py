"""Routing policies, registered by name (`[router] policy` in the fleet file).

`make_policy(name, config)` builds one; an unknown name raises `UnknownPolicy` listing the
valid ones. A new policy is a `Policy` subclass in its own module, added to `POLICIES`.
"""

from __future__ import annotations

import random

from modelserver.config import RouterConfig
from modelserver.errors import UnknownPolicy
from modelserver.routing.policies.base import Policy, least_loaded, usable_workers
from modelserver.routing.policies.cache_aware import CacheAwarePolicy
from modelserver.routing.policies.expected_completion import ExpectedCompletionPolicy
from modelserver.routing.policies.fastest import FastestPolicy
from modelserver.routing.policies.least_load import LeastLoadPolicy
from modelserver.routing.policies.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        FastestPolicy,
        RoundRobinPolicy,
        LeastLoadPolicy,
        CacheAwarePolicy,
        ExpectedCompletionPolicy,
    )
}


def make_policy(name: str, config: RouterConfig, rng: random.Random | None = None) -> Policy:
    """A fresh policy by name; `UnknownPolicy` (with the valid names) if there is none."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise UnknownPolicy(name, list(POLICIES)) from None
    return cls(config, rng or random.Random())


__all__ = [
    "POLICIES",
    "CacheAwarePolicy",
    "ExpectedCompletionPolicy",
    "FastestPolicy",
    "LeastLoadPolicy",
    "Policy",
    "RoundRobinPolicy",
    "least_loaded",
    "make_policy",
    "usable_workers",
]
