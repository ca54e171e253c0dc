"""Prometheus metrics under SGLang's names, one registry per simulated engine.

Names, help texts and histogram buckets follow python/sglang/srt/metrics/collector.py
(SchedulerMetricsCollector for the gauges and the retraction counters,
TokenizerMetricsCollector for the token counters and latency histograms,
RadixCacheMetricsCollector for `sglang:evicted_tokens_total`), each labelled with
`model_name` as SGLang labels them. Gauges and counters are read from the engine at scrape
time; the histograms are observed as requests finish. A registry per server lets several
simulated engines share one process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelserver.sim.engine import Engine, Request

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (
    *(0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400),
    *(600, 1200, 1800, 2400),
)
ITL_BUCKETS = (
    *(0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040),
    *(0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0),
)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._labels = [model_name]

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["model_name"])
        family.add_metric(self._labels, value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["model_name"])
        family.add_metric(self._labels, value)
        return family

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        cache = engine.cache
        yield self._gauge(
            "sglang:num_running_reqs", "The number of running requests.", len(engine.running)
        )
        yield self._gauge(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            len(engine.queue),
        )
        yield self._gauge(
            "sglang:num_used_tokens",
            "The number of used tokens.",
            engine.used_tokens(),
        )
        yield self._gauge("sglang:token_usage", "The token usage.", engine.token_usage())
        yield self._gauge(
            "sglang:cache_hit_rate", "The prefix cache hit rate.", engine.last_hit_rate
        )
        yield self._gauge(
            "sglang:gen_throughput",
            "The generation throughput (token/s).",
            engine.last_gen_throughput,
        )
        yield self._gauge(
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens in the KV cache pool.",
            cache.budget,
        )
        yield self._gauge("sglang:new_token_ratio", "The new token ratio.",
                          engine.new_token_ratio)
        yield self._gauge("sglang:num_retracted_reqs", "The number of retracted requests.",
                          engine.last_retracted)
        totals = engine.totals
        yield self._counter("sglang:num_retracted_requests_total",
                            "Total number of retracted requests.", totals.retracted_requests)
        yield self._counter("sglang:num_retracted_input_tokens_total",
                            "Total number of retracted input tokens.",
                            totals.retracted_input_tokens)
        yield self._counter("sglang:num_retracted_output_tokens_total",
                            "Total number of retracted output tokens.",
                            totals.retracted_output_tokens)
        # RadixCacheMetricsCollector's name; SGLang counts tokens its radix cache evicts.
        yield self._counter("sglang:evicted_tokens_total",
                            "The number of tokens evicted from GPU to CPU.",
                            cache.evicted_total)
        yield self._counter(
            "sglang:prompt_tokens_total",
            "Number of prefill tokens processed.",
            totals.prompt_tokens,
        )
        yield self._counter(
            "sglang:generation_tokens_total",
            "Number of generation tokens processed.",
            totals.generation_tokens,
        )
        yield self._counter(
            "sglang:cached_tokens_total", "Number of cached prompt tokens.", totals.cached_tokens
        )
        yield self._counter(
            "sglang:num_requests_total", "Number of requests processed.", totals.requests
        )


class SimMetrics:
    """The metrics of one simulated engine."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine, model_name))
        self._model = model_name
        self.ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self.e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            ["model_name"],
            buckets=E2E_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self.itl = Histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ["model_name"],
            buckets=ITL_BUCKETS,
            registry=self.registry,
        ).labels(model_name)

    def observe_finished(self, request: Request) -> None:
        """Record a finished request's latencies (times are on the engine's clock)."""
        if not request.log_metrics or request.finished_at is None:
            return
        self.e2e.observe(request.finished_at - request.arrival)
        if request.first_token_at is not None:
            self.ttft.observe(request.first_token_at - request.arrival)
            if request.generated > 1:
                per_token = (request.finished_at - request.first_token_at) / (request.generated - 1)
                self.itl.observe(per_token)

    def render(self) -> bytes:
        return generate_latest(self.registry)
