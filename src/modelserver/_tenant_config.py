"""The fleet file's tables for sharing a fleet: `[router.admission]` and
`[[gateway.tenants]]` (kept beside `config.py` so that file only names them).

A priority is a class name or a number; larger numbers are served first, as in SGLang with
its default `--schedule-low-priority-values-first` off (python/sglang/srt/server_args.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from modelserver._fleet_messages import KeyProblem
from modelserver._fleet_values import Section

PRIORITY_CLASSES: dict[str, int] = {"interactive": 100, "batch": 0}
"""The two named classes. 100 apart, far past SGLang's default
`--priority-scheduling-preemption-threshold` of 10, so an engine with priority scheduling
preempts a batch request for an interactive one."""

PriorityValue = int | Literal["interactive", "batch"]


def priority_number(value: PriorityValue) -> int:
    """A priority as the number the queue and the engines compare (larger first)."""
    if isinstance(value, str) and value in PRIORITY_CLASSES:
        return PRIORITY_CLASSES[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(
        f"unknown priority {value!r}; allowed: {', '.join(PRIORITY_CLASSES)} or a whole number"
    )


class AdmissionConfig(Section):
    """The router's queue (routing/admission.py). When every worker of a model is at its
    running cap, requests wait here, higher priority first and tenants fairly within a
    priority, instead of piling onto the engines' own queues."""

    enabled: bool | None = None
    """None: on when the fleet file has `[[gateway.tenants]]`."""
    max_running: int | None = Field(default=None, ge=1)
    """Running cap of every worker; None: learned from each engine's /server_info
    (`max_running_requests`, SGLang and the simulated engine). A worker with neither is never
    held back."""
    reserved_slots: int = Field(default=1, ge=0)
    """Slots of each worker that only requests above the batch class may take, so a batch
    flood never holds every running slot an interactive request needs."""
    reserved_where: Literal["auto", "below_cap", "above_cap"] = "auto"
    """`below_cap`: batch stops `reserved_slots` short of each worker's cap (any engine).
    `above_cap`: batch fills the cap and higher classes may go `reserved_slots` past it, for
    engines that preempt by priority (SGLang with `--enable-priority-scheduling`, the
    simulated engine too): the batch keeps every slot until an interactive request comes.
    `auto`: `above_cap` for a worker whose /server_info says it preempts by priority
    (`enable_priority_scheduling` on, `disable_priority_preemption` off), else `below_cap`."""
    default_priority: PriorityValue = "interactive"
    """Priority of requests that name none (keys outside any tenant, the client library)."""
    recheck_s: float = Field(default=1.0, gt=0)
    """A waiting request looks again this often even if no wake-up came (a worker that came
    back, a worker added)."""


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TenantConfig(Section):
    """One tenant: a group of API keys with a priority class, a weight and limits."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    keys: list[str] = Field(default_factory=list, repr=False)
    keys_env: str | None = Field(default=None, pattern=_ENV_NAME.pattern)
    """An environment variable holding more keys, comma-separated (read when the gateway
    starts)."""
    priority: PriorityValue = "batch"
    weight: float = Field(default=1.0, gt=0)
    """Share of tokens within its priority class, against the other tenants' weights."""
    requests_per_second: float | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Prompt + completion tokens, as the engines count them in `usage`."""
    max_in_flight: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _has_keys(self) -> TenantConfig:
        if not self.keys and self.keys_env is None:
            raise ValueError("a tenant needs `keys` or `keys_env` (the keys its members use)")
        for key in self.keys:
            if not key or not all("!" <= c <= "~" for c in key):
                raise ValueError(
                    "each key must be a non-empty string of visible ASCII characters"
                    " (it arrives as Authorization: Bearer KEY)"
                )
        return self


def _distinct(tenants: list[TenantConfig]) -> list[TenantConfig]:
    names: set[str] = set()
    owner: dict[str, str] = {}
    for index, tenant in enumerate(tenants):
        if tenant.name in names:
            raise KeyProblem(f"gateway.tenants[{index}].name", f"duplicate name {tenant.name!r}")
        names.add(tenant.name)
        for key in tenant.keys:
            if key in owner:  # never print the key itself
                raise KeyProblem(
                    f"gateway.tenants[{index}].keys",
                    f"a key of {tenant.name!r} is also a key of {owner[key]!r}; a key names"
                    " one tenant",
                )
            owner[key] = tenant.name
    return tenants


Tenants = Annotated[list[TenantConfig], AfterValidator(_distinct)]
