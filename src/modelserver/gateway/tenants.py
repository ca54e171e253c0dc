"""Tenants of the gateway: who a key belongs to, their limits, their usage.

A tenant (`[[gateway.tenants]]`) is a group of keys with a priority class, a weight (its
share of tokens in the router's queue, routing/admission.py) and optional limits:

- `requests_per_second` and `tokens_per_minute` are token buckets (full at start, refilled
  continuously; a burst of one second of requests, or one minute of tokens). Tokens are
  prompt + completion as the engine's `usage` reports them, charged when the answer ends, so
  a request may take the bucket below zero: the tenant then waits until it has paid it back;
- `max_in_flight` counts requests from arrival to the last byte of the answer.

Over a limit: 429 with `Retry-After` (seconds until the limit lets a request through) in
OpenAI's error shape; the request never reaches the router.

Limits hold across restarts: both buckets of every tenant are written to
`{state_dir}/tenant-usage.json` (atomically, `modelserver._files`) with the wall-clock time
of their level, at most once a second and when the gateway stops; a new gateway starts from
them and refills only for the time that really passed. A crash can lose the last second of
charges, never a whole minute. Requests in flight are not kept: a restart ends them all.

Keys never leave this module: metrics, logs and `/admin/tenants` name tenants only.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modelserver import _files
from modelserver._tenant_config import TenantConfig, priority_number
from modelserver.config import GatewayConfig
from modelserver.gateway.credentials import bearer_token, split_keys
from modelserver.routing.admission import DEFAULT_TENANT, Admission

log = logging.getLogger(__name__)

USAGE_FILE = "tenant-usage.json"
FLUSH_EVERY_S = 1.0
RATE = "requests_per_second"
TOKENS = "tokens_per_minute"
IN_FLIGHT = "max_in_flight"


class Bucket:
    """A token bucket on the wall clock (so its level means the same after a restart)."""

    __slots__ = ("capacity", "level", "per_second", "stamp")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.per_second)
            self.stamp = now
        return self.level

    def seconds_until(self, level: float, now: float) -> float:
        """Seconds until the bucket holds `level`."""
        return max(0.0, (level - self.refill(now)) / self.per_second)


@dataclass
class Tenant:
    config: TenantConfig
    keys: tuple[bytes, ...]
    priority: int
    rate: Bucket | None
    tokens: Bucket | None
    in_flight: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str
    retry_after_s: int


class Lease:
    """One admitted request: counts its tokens as the answer passes, ends exactly once."""

    __slots__ = ("_book", "_events", "_prompt_estimate", "_tail", "_usage", "tenant")

    def __init__(self, book: TenantBook, tenant: Tenant, body_bytes: int) -> None:
        self._book = book
        self.tenant = tenant
        self._prompt_estimate = max(1, body_bytes // 4)
        self._usage: tuple[int, int] | None = None
        self._events = 0
        self._tail = b""

    def routing(self) -> dict[str, Any]:
        """What the router's queue needs to know of the request's tenant."""
        tenant = self.tenant
        if tenant is self._book.default:
            return {}  # no tenant: the router's defaults
        return {"priority": tenant.priority, "tenant": tenant.name, "weight": tenant.config.weight}

    def answered(self, parsed: Any) -> None:
        """A whole answer: its `usage`."""
        self._usage = _usage_of(parsed)

    def chunk(self, data: bytes) -> None:
        """A streamed chunk: counted as the router counts tokens (one event each), and the
        last events kept for a `usage` object (`stream_options.include_usage`)."""
        self._events += data.count(b"data:")
        self._tail = (self._tail + data)[-4096:]

    def close(self) -> None:
        if self._usage is None and self._events:
            self._usage = _stream_usage(self._tail) or (
                self._prompt_estimate,
                max(self._events - 1, 0),
            )
        self._book.ended(self.tenant, self._usage)


class TenantBook:
    """Every tenant of the gateway, found by key; limits, usage, persistence."""

    def __init__(
        self,
        config: GatewayConfig,
        state_dir: Path | None,
        default_priority: int,
        environ: Mapping[str, str] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        env = os.environ if environ is None else environ
        self._wall = wall_clock
        now = wall_clock()
        self.tenants: dict[str, Tenant] = {}
        for cfg in config.tenants:
            keys = tenant_keys(cfg, env)
            if not keys:
                log.warning("tenant %r has no key (is %s set?)", cfg.name, cfg.keys_env)
            self.tenants[cfg.name] = Tenant(
                cfg,
                tuple(k.encode() for k in keys),
                priority_number(cfg.priority),
                Bucket(max(1.0, cfg.requests_per_second), cfg.requests_per_second, now)
                if cfg.requests_per_second
                else None,
                Bucket(cfg.tokens_per_minute, cfg.tokens_per_minute / 60, now)
                if cfg.tokens_per_minute
                else None,
            )
        # The keys outside every tenant: no limits, the default priority.
        default = TenantConfig.model_construct(name=DEFAULT_TENANT)
        self.default = Tenant(default, (), default_priority, None, None)
        self._path = state_dir / USAGE_FILE if state_dir is not None and self.tenants else None
        self._flushed_at = 0.0
        self._load()

    def all_keys(self) -> list[str]:
        """Every tenant key (the gateway's auth accepts them as API keys)."""
        return [k.decode() for t in self.tenants.values() for k in t.keys]

    def of(self, authorization: str | None) -> Tenant:
        """The tenant whose key this is; keys outside every tenant are the default one."""
        token = bearer_token(authorization)
        found = self.default
        if token is None:
            return found
        for tenant in self.tenants.values():
            for key in tenant.keys:  # constant time: no early exit
                if hmac.compare_digest(token, key):
                    found = tenant
        return found

    def admit(self, tenant: Tenant, body_bytes: int) -> Lease | Refusal:
        """A lease for one request, or why it is refused (nothing is charged then)."""
        now = self._wall()
        cfg = tenant.config
        refusal: Refusal | None = None
        if cfg.max_in_flight is not None and tenant.in_flight >= cfg.max_in_flight:
            refusal = Refusal(
                IN_FLIGHT,
                f"tenant {tenant.name!r} has {tenant.in_flight} requests in flight, its limit"
                " (max_in_flight); retry when one has ended",
                1,
            )
        elif tenant.rate is not None and tenant.rate.refill(now) < 1:
            wait = tenant.rate.seconds_until(1, now)
            refusal = Refusal(
                RATE,
                f"tenant {tenant.name!r} is over its limit of {cfg.requests_per_second:g}"
                " requests per second",
                _whole_seconds(wait),
            )
        elif tenant.tokens is not None and tenant.tokens.refill(now) <= 0:
            wait = tenant.tokens.seconds_until(1, now)
            refusal = Refusal(
                TOKENS,
                f"tenant {tenant.name!r} has used its {cfg.tokens_per_minute} tokens per"
                " minute (prompt + completion)",
                _whole_seconds(wait),
            )
        if refusal is not None:
            tenant.rejections[refusal.reason] = tenant.rejections.get(refusal.reason, 0) + 1
            return refusal
        if tenant.rate is not None:
            tenant.rate.level -= 1
        tenant.in_flight += 1
        tenant.requests += 1
        return Lease(self, tenant, body_bytes)

    def ended(self, tenant: Tenant, usage: tuple[int, int] | None) -> None:
        tenant.in_flight -= 1
        if usage is not None:
            prompt, completion = usage
            tenant.prompt_tokens += prompt
            tenant.completion_tokens += completion
            if tenant.tokens is not None:
                tenant.tokens.refill(self._wall())
                tenant.tokens.level -= prompt + completion
        self.flush()

    # -- persistence ------------------------------------------------------------------------

    def flush(self, force: bool = False) -> None:
        """Write the buckets, at most once a second unless `force` (the gateway stopping)."""
        if self._path is None:
            return
        now = self._wall()
        if not force and now - self._flushed_at < FLUSH_EVERY_S:
            return
        self._flushed_at = now
        state = {
            name: {
                kind: [bucket.level, bucket.stamp]
                for kind, bucket in ((RATE, t.rate), (TOKENS, t.tokens))
                if bucket is not None
            }
            for name, t in self.tenants.items()
        }
        try:
            _files.atomic_write_bytes(self._path, orjson.dumps({"tenants": state}))
        except OSError as exc:
            log.warning("cannot keep tenant usage in %s: %s", self._path, exc)

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            data = _files.read_json(self._path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("tenant usage in %s unreadable (%s); starting full", self._path, exc)
            return
        saved = data.get("tenants") if isinstance(data, dict) else None
        if not isinstance(saved, dict):
            return
        now = self._wall()
        for name, tenant in self.tenants.items():
            entry = saved.get(name)
            if not isinstance(entry, dict):
                continue
            for kind, bucket in ((RATE, tenant.rate), (TOKENS, tenant.tokens)):
                pair = entry.get(kind)
                if bucket is None or not isinstance(pair, list) or not _is_pair(pair):
                    continue
                level, stamp = float(pair[0]), float(pair[1])
                bucket.level = min(bucket.capacity, level)
                bucket.stamp = min(stamp, now)
                bucket.refill(now)

    # -- views --------------------------------------------------------------------------------

    def snapshot(self, admission: Admission) -> list[dict[str, Any]]:
        """`/admin/tenants`: every tenant, its settings and live usage (no keys)."""
        now = self._wall()
        rows = []
        for tenant in [*self.tenants.values(), self.default]:
            cfg = tenant.config
            queue = admission.tenants.get(tenant.name)
            rows.append(
                {
                    "name": tenant.name,
                    "priority": tenant.priority,
                    "weight": cfg.weight,
                    "limits": {
                        RATE: cfg.requests_per_second,
                        TOKENS: cfg.tokens_per_minute,
                        IN_FLIGHT: cfg.max_in_flight,
                    },
                    "in_flight": tenant.in_flight,
                    "requests": tenant.requests,
                    "prompt_tokens": tenant.prompt_tokens,
                    "completion_tokens": tenant.completion_tokens,
                    "rejections": dict(tenant.rejections),
                    "requests_left": None if tenant.rate is None
                    else math.floor(max(0.0, tenant.rate.refill(now))),
                    "tokens_left": None if tenant.tokens is None
                    else math.floor(max(0.0, tenant.tokens.refill(now))),
                    "waiting": queue.waiting if queue else 0,
                    "queued": queue.queued_total if queue else 0,
                    "queue_seconds": queue.queue_seconds if queue else 0.0,
                    "left_queue": dict(queue.left_queue) if queue else {},
                }
            )
        return rows


class TenantCollector(Collector):
    """Per-tenant metrics, read from the book and the router's queue at scrape time."""

    def __init__(self, book: TenantBook, admission: Admission) -> None:
        self._book = book
        self._admission = admission

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "modelserver_tenant_requests", "Requests admitted, per tenant.", labels=["tenant"]
        )
        tokens = CounterMetricFamily(
            "modelserver_tenant_tokens",
            "Tokens served per tenant (engine usage; kind prompt or completion).",
            labels=["tenant", "kind"],
        )
        rejected = CounterMetricFamily(
            "modelserver_tenant_rejections",
            "Requests refused with 429 per tenant, by the limit they hit.",
            labels=["tenant", "reason"],
        )
        queue_seconds = CounterMetricFamily(
            "modelserver_tenant_queue_seconds",
            "Seconds requests of the tenant spent in the router's queue.",
            labels=["tenant"],
        )
        waiting = GaugeMetricFamily(
            "modelserver_tenant_waiting", "Requests of the tenant in the queue now.",
            labels=["tenant"],
        )
        in_flight = GaugeMetricFamily(
            "modelserver_tenant_in_flight", "Requests of the tenant in flight now.",
            labels=["tenant"],
        )
        for row in self._book.snapshot(self._admission):
            name = row["name"]
            requests.add_metric([name], row["requests"])
            tokens.add_metric([name, "prompt"], row["prompt_tokens"])
            tokens.add_metric([name, "completion"], row["completion_tokens"])
            for reason in (RATE, TOKENS, IN_FLIGHT):
                rejected.add_metric([name, reason], row["rejections"].get(reason, 0))
            queue_seconds.add_metric([name], row["queue_seconds"])
            waiting.add_metric([name], row["waiting"])
            in_flight.add_metric([name], row["in_flight"])
        yield from (requests, tokens, rejected, queue_seconds, waiting, in_flight)


def tenant_keys(config: TenantConfig, environ: Mapping[str, str]) -> list[str]:
    """A tenant's keys: those in the file and those in its `keys_env` variable."""
    from_env = split_keys(environ.get(config.keys_env)) if config.keys_env else []
    return [*config.keys, *from_env]


def _usage_of(parsed: Any) -> tuple[int, int] | None:
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


def _stream_usage(tail: bytes) -> tuple[int, int] | None:
    """The `usage` of the last event that carries one, if the stream has it."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                found = _usage_of(orjson.loads(line[5:]))
            except orjson.JSONDecodeError:
                continue
            if found is not None:
                return found
    return None


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    )
