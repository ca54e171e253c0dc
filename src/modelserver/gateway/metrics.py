"""Prometheus metrics of the gateway, fed by the router's observer hooks.

Per-attempt figures (requests, errors, latency) come from `RouterObserver` events, so the
router stays the one place that knows what happened. Per-worker state (healthy, breaker,
in flight) is read from the router when Prometheus scrapes, so it is never stale.
The names are what `examples/grafana-dashboard.json` reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelserver.routing.events import AttemptResult, ResumeRecord, RouterObserver
from modelserver.routing.router import Router

# Seconds; spans an engine answering at once (embeddings) to a long generation.
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
_BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class GatewayMetrics(RouterObserver):
    def __init__(self, router: Router) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelserver_requests",
            "Attempts sent to workers, by the engine's HTTP status ('none': no answer).",
            ["model", "worker", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "modelserver_request_errors",
            "Attempts that did not succeed, by outcome: worker_failure (refused, reset,"
            " timeout, 5xx, 408/429, the engine refusing its key), engine_rejected (the"
            " engine refused the request itself: other 4xx), caller_cancelled.",
            ["model", "worker", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "modelserver_retries",
            "Failed attempts that were retried.",
            ["model"],
            registry=self.registry,
        )
        self.resumes = Counter(
            "modelserver_stream_resumes",
            "Streams that broke after content reached the caller and went on on another"
            " worker.",
            ["model"],
            registry=self.registry,
        )
        self.no_worker = Counter(
            "modelserver_no_healthy_worker",
            "Requests refused because every worker of the model was out.",
            ["model"],
            registry=self.registry,
        )
        self.responses = Counter(
            "modelserver_gateway_responses",
            "Answers the gateway gave its callers, by HTTP status.",
            ["route", "code"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "modelserver_time_to_first_token_seconds",
            "Time to the first streamed chunk, per successful streamed attempt.",
            ["model", "worker"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "modelserver_request_duration_seconds",
            "Time from sending to the last byte, per successful attempt.",
            ["model", "worker"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_WorkerCollector(router))

    # -- RouterObserver ----------------------------------------------------------------------

    def on_result(self, result: AttemptResult) -> None:
        code = str(result.status) if result.status is not None else "none"
        self.requests.labels(result.model, result.worker, code).inc()
        if not result.ok:
            self.errors.labels(result.model, result.worker, attempt_outcome(result)).inc()
            return
        self.e2e.labels(result.model, result.worker).observe(result.e2e_s)
        if result.ttft_s is not None:
            self.ttft.labels(result.model, result.worker).observe(result.ttft_s)

    def on_retry(
        self, model: str, failed_worker: str, error: str, next_attempt: int, backoff_s: float
    ) -> None:
        self.retries.labels(model).inc()

    def on_resume(self, record: ResumeRecord) -> None:
        self.resumes.labels(record.model).inc()

    def on_no_healthy_worker(self, model: str, reasons: dict[str, str]) -> None:
        self.no_worker.labels(model).inc()

    # -- the gateway's own answers --------------------------------------------------------

    def answered(self, route: str, status: int) -> None:
        self.responses.labels(route, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


WORKER_FAILURE = "worker_failure"
ENGINE_REJECTED = "engine_rejected"
CALLER_CANCELLED = "caller_cancelled"

# How the router words an attempt its caller stopped (a whole answer; a stream).
_CANCELLED_ERRORS = frozenset({"cancelled", "stream closed by the caller"})


def attempt_outcome(result: AttemptResult) -> str:
    """Why an attempt that did not succeed ended: only worker_failure is held against the
    worker (its circuit breaker counts the same ones)."""
    if result.error in _CANCELLED_ERRORS:
        return CALLER_CANCELLED
    status = result.status
    if status is not None and 400 <= status < 500 and status not in _WORKER_4XX:
        return ENGINE_REJECTED
    return WORKER_FAILURE


# 4xx that say the worker is at fault, not the request: it refused the router's own key
# (401, 403), timed out (408) or is overloaded (429).
_WORKER_4XX = frozenset({401, 403, 408, 429})


class _WorkerCollector(Collector):
    """Worker state read from the router at scrape time."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[GaugeMetricFamily]:
        workers = GaugeMetricFamily("modelserver_workers", "Workers per model.", labels=["model"])
        healthy = GaugeMetricFamily(
            "modelserver_workers_healthy", "Workers in rotation per model.", labels=["model"]
        )
        breaker = GaugeMetricFamily(
            "modelserver_breaker_state",
            "Circuit breaker per worker: 0 closed, 1 half-open, 2 open.",
            labels=["model", "worker"],
        )
        in_flight = GaugeMetricFamily(
            "modelserver_in_flight", "Requests in flight per worker.", labels=["model", "worker"]
        )
        totals: dict[str, list[int]] = {model: [0, 0] for model in self._router.models()}
        for stats in self._router.workers():
            counts = totals.setdefault(stats.model, [0, 0])
            counts[0] += 1
            counts[1] += stats.status == "up"
            breaker.add_metric([stats.model, stats.url], _BREAKER_VALUE.get(stats.breaker, 2.0))
            in_flight.add_metric([stats.model, stats.url], float(stats.in_flight))
        for model, (total, up) in totals.items():
            workers.add_metric([model], float(total))
            healthy.add_metric([model], float(up))
        yield from (workers, healthy, breaker, in_flight)
