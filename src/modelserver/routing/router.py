"""The router: pick -> send -> observe -> retry elsewhere, plus health probing.

One implementation serves both the client library (`AsyncModelServer`) and the
OpenAI-compatible gateway. The gateway's contract is `Router.forward` (pass-through of
raw bodies and SSE streams), the admin calls (`workers`, `drain`, `undrain`, `add_worker`,
`remove_worker`) and observers (`events.RouterObserver`).

Everything here runs on one asyncio event loop; there is no lock around requests. The
clock, the sleep, the random source and the HTTP transport are injected, so the routing
logic is tested with `MockTransport` and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelserver import _files
from modelserver.config import Fleet, RouterConfig
from modelserver.errors import (
    DeadlineExceeded,
    EngineRejected,
    NoHealthyWorker,
    RetryableWorkerError,
    UnknownModel,
    WorkerError,
    WorkerUnreachable,
    WrongModelKind,
)
from modelserver.routing.events import AttemptResult, RouterObserver
from modelserver.routing.policies import Policy, make_policy
from modelserver.routing.request_key import RequestInfo, kind_of_path, render_text
from modelserver.routing.retry import AttemptBudget, backoff_delay, error_for_status
from modelserver.routing.transport import AiohttpTransport, Transport, TransportResponse
from modelserver.routing.worker import Worker, WorkerStats

log = logging.getLogger(__name__)

AVAILABILITY_FILE = "availability.json"
_JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class WorkerEntry:
    """A worker to route to: what the fleet file, a dict or the gateway's admin API gives."""

    model: str
    url: str
    kind: str = "chat"
    name: str | None = None
    api_key: str | None = None


class RoutedResponse:
    """The answer of the worker that served a request.

    `status` and `headers` are the engine's. `worker` is its URL and `attempts` how many
    attempts the request took. A non-streamed answer has `body` (bytes, exactly as the engine
    sent it) and `chunks` None; a streamed one has `chunks`, an async iterator of the raw SSE
    bytes as they arrive (nothing buffered), and `body` None. A stream must be consumed to
    the end or closed with `aclose()` (or `async with response:`), which frees the worker's
    in-flight slot. After the first chunk has been handed out there is no failover: a worker
    dying mid-stream raises `WorkerUnreachable` / `WorkerTimeout` from the iterator.
    """

    __slots__ = (
        "_json",
        "attempts",
        "body",
        "chunks",
        "headers",
        "latency_s",
        "status",
        "ttft_s",
        "worker",
    )

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        worker: str,
        attempts: int,
        latency_s: float,
        body: bytes | None = None,
        chunks: AsyncIterator[bytes] | None = None,
        ttft_s: float | None = None,
        parsed: Any = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.worker = worker
        self.attempts = attempts
        self.latency_s = latency_s
        """Non-streamed: seconds from the winning attempt's send to the full body.
        Streamed: seconds to the first chunk (same as `ttft_s`)."""
        self.body = body
        self.chunks = chunks
        self.ttft_s = ttft_s
        self._json = parsed

    def json(self) -> Any:
        """The body parsed as JSON (parsed once; the router may have done it already)."""
        if self._json is None:
            if self.body is None:
                raise TypeError("a streamed response has no body; iterate `chunks`")
            self._json = orjson.loads(self.body)
        return self._json

    async def aclose(self) -> None:
        """Stop a stream early and free the worker (no-op for a non-streamed answer)."""
        closer = getattr(self.chunks, "aclose", None)
        if closer is not None:
            await closer()

    async def __aenter__(self) -> RoutedResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Router:
    """Routes requests for the models of a fleet to their workers.

    Build it with `Router.from_fleet(fleet)`, `Router.from_mapping({model: [url, ...]})`
    or `Router(entries)`. Call `start()` to begin health probing (and reading the
    launcher's state files), `close()` at the end; or use `async with`.
    """

    def __init__(
        self,
        entries: Iterable[WorkerEntry] = (),
        *,
        config: RouterConfig | None = None,
        policy: Policy | str | None = None,
        transport: Transport | None = None,
        observers: Iterable[RouterObserver] = (),
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self._rng = rng or random.Random()
        if isinstance(policy, Policy):
            self.policy = policy
        else:
            self.policy = make_policy(policy or self.config.policy, self.config, self._rng)
        self._transport = transport
        self._owns_transport = transport is None
        self._observers: list[RouterObserver] = list(observers)
        self.state_dir = state_dir
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._models: dict[str, list[Worker]] = {}
        self._kinds: dict[str, str] = {}
        self._by_url: dict[str, Worker] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self._down: dict[str, dict[str, Any]] = {}
        """model -> availability record, for models that had no usable worker."""
        self._probe_task: asyncio.Task[None] | None = None
        for entry in entries:
            self.add_worker(entry.model, entry.url, entry.kind, name=entry.name,
                            api_key=entry.api_key)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_fleet(cls, fleet: Fleet, **kwargs: Any) -> Router:
        """Workers from the fleet file; `[router]` settings; state dir for the launcher's
        state files and `availability.json`."""
        entries = [
            WorkerEntry(w.model, w.url, w.kind, name=w.name, api_key=w.api_key)
            for w in fleet.workers()
        ]
        kwargs.setdefault("config", fleet.router)
        kwargs.setdefault("state_dir", fleet.state_dir())
        return cls(entries, **kwargs)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **kwargs: Any) -> Router:
        """Workers from `{model: [url, ...]}` or `{model: {"kind": ..., "urls": [...]}}`."""
        return cls(entries_from_mapping(mapping), **kwargs)

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            # Created lazily: aiohttp binds its session to the running event loop.
            self._transport = AiohttpTransport(self.config.connect_timeout_s)
        return self._transport

    # -- the request path ------------------------------------------------------------------

    async def forward(
        self,
        model: str,
        path: str,
        body: bytes | dict[str, Any],
        *,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> RoutedResponse:
        """Send one POST request for `model` to the best usable worker, failing over.

        `path` is the engine route (`/v1/chat/completions`, `/v1/completions`,
        `/v1/embeddings`, `/generate`, ...); `body` goes to the engine unchanged (a dict is
        serialised with orjson). `stream=True` returns as soon as the first chunk of the
        answer has arrived; set it when the body asks the engine to stream. `headers` are
        added to the engine request (the worker's API key, if any, is set by the router).

        Failover: connection refused or reset, timeouts, HTTP 408, 429 and 5xx are retried
        on a different worker within `[router] max_attempts` and `request_timeout_s`;
        backoff with jitter only when the worker that just failed is the only one left.
        A stream fails over only before its first chunk.

        Raises:
            UnknownModel: no such model in the fleet.
            WrongModelKind: e.g. `/v1/embeddings` for a chat model, or the reverse.
            EngineRejected: the engine answered 4xx (not 408/429); `.status`, `.body` (the
                engine's JSON error, parsed) and the message are the engine's. Not retried.
            NoHealthyWorker: every worker of the model is out; `.reasons` says why each.
            DeadlineExceeded: the attempts or the deadline ran out; `.attempts` lists
                `url: error` per failed attempt.
        """
        workers = self._models.get(model)
        if workers is None:
            raise UnknownModel(model, list(self._models))
        wanted = kind_of_path(path)
        if wanted is not None and wanted != self._kinds[model]:
            raise WrongModelKind(model, self._kinds[model], wanted)
        if isinstance(body, dict):
            payload = orjson.dumps(body)
            parsed_body: Any = body
        else:
            payload = body
            parsed_body = None
        text = ""
        if self.policy.needs_text:
            if parsed_body is None:
                try:
                    parsed_body = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    parsed_body = {}
            if isinstance(parsed_body, dict):
                text = render_text(parsed_body)
        request = RequestInfo(model, path, text)
        config = self.config
        budget = AttemptBudget(
            config.max_attempts, self._clock() + config.request_timeout_s, self._clock
        )
        readmit = config.latency.readmit_after_s
        tried: set[str] = set()
        last_failed: Worker | None = None
        backoff_round = 0
        while True:
            now = self._clock()
            usable = [w for w in workers if w.out_reason(now, readmit) is None]
            if not usable:
                raise await self._no_healthy_worker(model, workers, now, budget)
            candidates = [w for w in usable if w.url not in tried] if tried else usable
            if not candidates:
                candidates = [w for w in usable if w is not last_failed]
            if not candidates:
                # Only the worker that just failed is left: wait, then let it try again.
                delay = min(
                    backoff_delay(config.backoff, backoff_round, self._rng),
                    budget.remaining_s(),
                )
                backoff_round += 1
                if delay <= 0:
                    raise _deadline_error(model, budget)
                self._notify_retry(model, last_failed, budget, delay)
                await self._sleep(delay)
                tried.clear()
                last_failed = None
                continue
            if budget.remaining_s() <= 0:
                raise _deadline_error(model, budget)
            worker = self.policy.select(candidates, request)
            try:
                response = await self._attempt(
                    worker, request, payload, stream, headers, len(budget.attempts) + 1, budget
                )
            except RetryableWorkerError as exc:
                budget.attempts.append(f"{worker.url}: {_short(exc)}")
                tried.add(worker.url)
                last_failed = worker
                if not budget.can_try_again():
                    raise _deadline_error(model, budget) from exc
                # Retrying at once on another worker; the backoff branch above reports
                # its own wait when this worker is the only one left.
                now = self._clock()
                if any(w is not worker and w.out_reason(now, readmit) is None for w in workers):
                    self._notify_retry(model, worker, budget, 0.0)
                continue
            if model in self._down:
                await self._mark_available(model)
            return response

    async def _attempt(
        self,
        worker: Worker,
        request: RequestInfo,
        payload: bytes,
        stream: bool,
        headers: Mapping[str, str] | None,
        attempt: int,
        budget: AttemptBudget,
    ) -> RoutedResponse:
        worker.in_flight += 1
        worker.requests += 1
        worker.breaker.on_request_start()
        if worker.ejected_at is not None:
            worker.trial_in_flight = True
        self.policy.on_request_start(worker, request)
        for observer in self._observers:
            _safely(observer.on_attempt, request.model, worker.url, attempt, request.path)
        timeout_s = min(self.config.attempt_timeout_s, budget.remaining_s())
        send_headers = self._headers[worker.url]
        if headers:
            send_headers = {**send_headers, **headers}
        start = self._clock()
        status: int | None = None
        try:
            answer = await self.transport.send(
                "POST",
                worker.url + request.path,
                body=payload,
                headers=send_headers,
                timeout_s=timeout_s,
                stream=stream,
            )
            status = answer.status
            if status >= 400:
                raise error_for_status(worker.url, status, await answer.read())
            if stream:
                return await self._start_stream(worker, request, answer, attempt, start)
            data = await answer.read()
        except RetryableWorkerError as exc:
            self._finish(worker, request, attempt, False, status, _short(exc), start, None, None,
                         stream)
            raise
        except EngineRejected as exc:
            # The request was wrong, not the worker: no mark against its circuit.
            self._finish(worker, request, attempt, None, status, _short(exc), start, None, None,
                         stream)
            raise
        except BaseException:
            # Cancelled by the caller: no verdict on the worker either.
            self._finish(worker, request, attempt, None, status, "cancelled", start, None, None,
                         stream)
            raise
        parsed: Any = None
        tokens: int | None = None
        if data[:1] == b"{":
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            tokens = _completion_tokens(parsed)
        e2e = self._clock() - start
        self._finish(worker, request, attempt, True, status, None, start, None, tokens, False)
        return RoutedResponse(
            status, answer.headers, worker.url, attempt, e2e, body=data, parsed=parsed
        )

    async def _start_stream(
        self,
        worker: Worker,
        request: RequestInfo,
        answer: TransportResponse,
        attempt: int,
        start: float,
    ) -> RoutedResponse:
        chunks = answer.chunks()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            raise WorkerUnreachable(worker.url, "stream ended before its first chunk") from None
        ttft = self._clock() - start
        relay = self._relay(worker, request, attempt, start, ttft, first, chunks, answer.status)
        return RoutedResponse(
            answer.status, answer.headers, worker.url, attempt, ttft, chunks=relay, ttft_s=ttft
        )

    async def _relay(
        self,
        worker: Worker,
        request: RequestInfo,
        attempt: int,
        start: float,
        ttft: float,
        first: bytes,
        chunks: AsyncIterator[bytes],
        status: int,
    ) -> AsyncIterator[bytes]:
        """Hand chunks on as they come; account for the attempt when the stream ends."""
        events = first.count(b"data:")
        verdict: bool | None = None
        error: str | None = "stream closed by the caller"
        try:
            yield first
            async for chunk in chunks:
                events += chunk.count(b"data:")
                yield chunk
            verdict, error = True, None
        except RetryableWorkerError as exc:
            verdict, error = False, _short(exc)
            raise
        finally:
            closer = getattr(chunks, "aclose", None)
            if closer is not None and verdict is None:
                await closer()
            # The last event of an OpenAI stream is `data: [DONE]`, not a token.
            tokens = max(events - 1, 1)
            self._finish(worker, request, attempt, verdict, status, error, start, ttft, tokens,
                         True)

    def _finish(
        self,
        worker: Worker,
        request: RequestInfo,
        attempt: int,
        ok: bool | None,
        status: int | None,
        error: str | None,
        start: float,
        ttft: float | None,
        tokens: int | None,
        stream: bool,
    ) -> None:
        """Account for the end of an attempt. ok=None: no verdict on the worker."""
        now = self._clock()
        e2e = now - start
        worker.in_flight -= 1
        breaker = worker.breaker
        if ok:
            breaker.record_success()
            alpha = self.config.latency.ewma_alpha
            per_token = e2e / tokens if tokens else e2e
            if worker.ejected_at is not None:
                # A trial after ejection: judge it on this sample alone, not the stale EWMA.
                worker.ewma_latency = None
                worker.latency_samples = 0
            worker.observe_latency(per_token, alpha)
            if ttft is not None:
                worker.observe_ttft(ttft, alpha)
            self._check_ejection(worker, now)
        elif ok is False:
            worker.errors += 1
            breaker.record_failure()
            if worker.ejected_at is not None:
                worker.trial_in_flight = False
                worker.ejected_at = now  # failed trial: another cool-down
        else:
            breaker.release_trial()
            worker.trial_in_flight = False
        self.policy.on_request_complete(worker, request, bool(ok))
        if self._observers:
            result = AttemptResult(
                model=request.model,
                worker=worker.url,
                path=request.path,
                attempt=attempt,
                stream=stream,
                ok=bool(ok),
                status=status,
                error=error,
                e2e_s=e2e,
                ttft_s=ttft,
                output_tokens=tokens,
            )
            for observer in self._observers:
                _safely(observer.on_result, result)

    def _check_ejection(self, worker: Worker, now: float) -> None:
        """Eject `worker` if its latency grew past `ejection_ratio` × the median of its
        model's other measured workers; judge an ejected worker's trial the same way."""
        settings = self.config.latency
        latency = worker.ewma_latency
        trial = worker.ejected_at is not None
        if latency is None or (not trial and worker.latency_samples < settings.min_samples):
            return
        others = [
            w.ewma_latency
            for w in self._models.get(worker.model, ())
            if w is not worker
            and w.ewma_latency is not None
            and w.ejected_at is None
            and w.latency_samples >= settings.min_samples
        ]
        if not others:
            if trial:
                _readmit(worker)
            return
        median = statistics.median(others)
        too_slow = latency > settings.ejection_ratio * median
        if trial:
            worker.trial_in_flight = False
            if too_slow:
                worker.ejected_at = now
            else:
                _readmit(worker)
            return
        if too_slow and any(
            w is not worker and w.out_reason(now, settings.readmit_after_s) is None
            for w in self._models[worker.model]
        ):
            worker.ejected_at = now
            worker.ejection_note = (
                f"{latency * 1000:.1f} ms/token vs median {median * 1000:.1f} ms/token of the"
                f" others; bound ×{settings.ejection_ratio:g}"
            )
            log.warning("ejected %s: %s", worker.url, worker.ejection_note)

    def _notify_retry(
        self, model: str, worker: Worker | None, budget: AttemptBudget, backoff_s: float
    ) -> None:
        if not self._observers:
            return
        error = budget.attempts[-1] if budget.attempts else ""
        url = worker.url if worker is not None else ""
        for observer in self._observers:
            _safely(observer.on_retry, model, url, error, len(budget.attempts) + 1, backoff_s)

    async def _no_healthy_worker(
        self, model: str, workers: Sequence[Worker], now: float, budget: AttemptBudget
    ) -> NoHealthyWorker:
        readmit = self.config.latency.readmit_after_s
        reasons = {w.url: w.out_reason(now, readmit) or "up" for w in workers}
        for attempt in budget.attempts:
            url, _, error = attempt.partition(": ")
            if url in reasons:
                reasons[url] = f"{reasons[url]}; last error: {error}"
        for observer in self._observers:
            _safely(observer.on_no_healthy_worker, model, reasons)
        await self._mark_unavailable(model, reasons)
        return NoHealthyWorker(model, reasons)

    # -- availability file (the seed's running flag, done properly) ---------------------------

    async def _mark_unavailable(self, model: str, reasons: dict[str, str]) -> None:
        if model in self._down:
            self._down[model]["reasons"] = reasons
            return
        self._down[model] = {"available": False, "since": self._wall_clock(), "reasons": reasons}
        await self._write_availability()

    async def _mark_available(self, model: str) -> None:
        del self._down[model]
        await self._write_availability(recovered=model)

    async def _write_availability(self, recovered: str | None = None) -> None:
        if self.state_dir is None:
            return
        path = self.state_dir / AVAILABILITY_FILE
        record: dict[str, Any] = {
            model: {"available": True, "since": self._wall_clock(), "reasons": {}}
            for model in self._models
            if model not in self._down
        }
        record.update(self._down)
        try:
            await asyncio.to_thread(_files.atomic_write_json, path, record)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    # -- health probing and the launcher's state file ---------------------------------------

    async def start(self) -> None:
        """Probe every worker now, then every `[router.health] interval_s` in the background."""
        if self._probe_task is None:
            await self.probe_once()
            self._probe_task = asyncio.create_task(self._probe_loop(), name="router-probes")

    async def _probe_loop(self) -> None:
        while True:
            await self._sleep(self.config.health.interval_s)
            try:
                await self.probe_once()
            except Exception:  # a probe round must never kill the loop
                log.exception("health probe round failed")

    async def probe_once(self) -> None:
        """One round: read the launcher's state files, GET the health endpoint of every
        worker concurrently (short timeout), update each worker's probe health."""
        self.apply_state_files()
        workers = list(self._by_url.values())
        results = await asyncio.gather(*(self._probe(w) for w in workers))
        health = self.config.health
        for worker, error in zip(workers, results, strict=True):
            if error is None:
                worker.probe_failures = 0
                worker.probe_successes += 1
                if not worker.probe_healthy and worker.probe_successes >= health.success_threshold:
                    worker.probe_healthy = True
                    log.info("%s answers its health probe again", worker.url)
            else:
                worker.probe_successes = 0
                worker.probe_failures += 1
                worker.last_probe_error = error
                if worker.probe_healthy and worker.probe_failures >= health.failure_threshold:
                    worker.probe_healthy = False
                    log.warning("%s is out: %s", worker.url, error)

    async def _probe(self, worker: Worker) -> str | None:
        health = self.config.health
        try:
            answer = await self.transport.send(
                "GET",
                worker.url + health.endpoint,
                headers=self._headers.get(worker.url),
                timeout_s=health.timeout_s,
            )
            await answer.read()
        except WorkerError as exc:
            return _short(exc)
        if answer.status >= 400:
            return f"HTTP {answer.status}"
        return None

    def apply_state_files(self) -> None:
        """Take workers the launcher reports not ready (failed, stopped, ...) out of rotation.

        Reads `{state_dir}/state-*.json` (one per host, written atomically by the launcher);
        absent or unreadable files mean "no news": probes and traffic decide alone.
        """
        if self.state_dir is None:
            return
        statuses: dict[str, str] = {}
        for path in sorted(self.state_dir.glob("state-*.json")):
            try:
                state = _files.read_json(path)
            except (OSError, ValueError):
                continue
            for record in state.get("workers", []) if isinstance(state, dict) else []:
                if isinstance(record, dict) and isinstance(record.get("url"), str):
                    statuses[record["url"].rstrip("/")] = str(record.get("status"))
        for url, worker in self._by_url.items():
            worker.launcher_status = statuses.get(url)

    # -- admin (the gateway exposes these) -------------------------------------------------

    def models(self) -> dict[str, str]:
        """Every model the router knows, with its kind ("chat" or "embedding")."""
        return dict(self._kinds)

    def workers(self, model: str | None = None) -> list[WorkerStats]:
        """A snapshot of every worker (or those of `model`): status ("up" or why it is out),
        requests in flight, EWMA latency per token and TTFT, breaker state, counts."""
        now = self._clock()
        readmit = self.config.latency.readmit_after_s
        return [
            w.stats(now, readmit)
            for w in self._by_url.values()
            if model is None or w.model == model
        ]

    def worker(self, url: str) -> Worker:
        """The live worker object at `url` (KeyError naming the known URLs if none)."""
        try:
            return self._by_url[url.rstrip("/")]
        except KeyError:
            raise KeyError(f"no worker at {url!r}; workers: {sorted(self._by_url)}") from None

    def drain(self, url: str) -> None:
        """Send no new request to `url`; requests in flight there finish normally."""
        self.worker(url).draining = True

    def undrain(self, url: str) -> None:
        """Put a drained worker back into rotation."""
        self.worker(url).draining = False

    async def wait_drained(self, url: str, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until a drained worker has nothing in flight; False if `timeout_s` passed."""
        worker = self.worker(url)
        deadline = self._clock() + timeout_s
        while worker.in_flight > 0:
            if self._clock() >= deadline:
                return False
            await self._sleep(poll_s)
        return True

    def add_worker(
        self,
        model: str,
        url: str,
        kind: str = "chat",
        *,
        name: str | None = None,
        api_key: str | None = None,
    ) -> Worker:
        """Start routing `model` requests to `url` as well.

        Raises ValueError if a worker already has that URL, and WrongModelKind if `model`
        is known with another kind.
        """
        if kind not in ("chat", "embedding"):
            raise ValueError(f"kind must be 'chat' or 'embedding' (got {kind!r})")
        known_kind = self._kinds.get(model)
        if known_kind is not None and known_kind != kind:
            raise WrongModelKind(model, known_kind, kind)
        worker = Worker(url, model, kind, self.config.breaker, self._clock, name, api_key)
        if worker.url in self._by_url:
            raise ValueError(f"a worker at {worker.url} is already routed to")
        self._kinds[model] = kind
        self._models.setdefault(model, []).append(worker)
        self._by_url[worker.url] = worker
        headers = dict(_JSON_HEADERS)
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._headers[worker.url] = headers
        return worker

    def remove_worker(self, url: str) -> None:
        """Stop routing to `url`. Requests in flight there finish normally."""
        worker = self.worker(url)
        del self._by_url[worker.url]
        del self._headers[worker.url]
        siblings = self._models[worker.model]
        siblings.remove(worker)
        if not siblings:
            del self._models[worker.model]
            del self._kinds[worker.model]
        self.policy.on_worker_removed(worker)

    def add_observer(self, observer: RouterObserver) -> None:
        self._observers.append(observer)

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop probing and close the HTTP pool (if the router created it)."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self._owns_transport and self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def entries_from_mapping(mapping: Mapping[str, Any]) -> list[WorkerEntry]:
    """`{model: [url, ...]}` or `{model: {"kind": "embedding", "urls": [...]}}` -> entries."""
    entries: list[WorkerEntry] = []
    for model, value in mapping.items():
        kind = "chat"
        api_key = None
        if isinstance(value, Mapping):
            unknown = set(value) - {"kind", "urls", "api_key"}
            if unknown:
                raise ValueError(
                    f"fleet[{model!r}]: unknown keys {sorted(unknown)}; allowed: kind, urls,"
                    " api_key"
                )
            kind = str(value.get("kind", "chat"))
            api_key = value.get("api_key")
            urls = value.get("urls", [])
        else:
            urls = value
        if isinstance(urls, str) or not isinstance(urls, Iterable):
            raise ValueError(f"fleet[{model!r}]: expected a list of URLs (got {urls!r})")
        if kind not in ("chat", "embedding"):
            raise ValueError(f"fleet[{model!r}].kind: must be 'chat' or 'embedding' (got {kind!r})")
        urls = list(urls)
        if not urls:
            raise ValueError(f"fleet[{model!r}]: no URLs")
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"fleet[{model!r}]: {url!r} is not an http(s) URL")
            entries.append(WorkerEntry(model, url, kind, api_key=api_key))
    return entries


def _readmit(worker: Worker) -> None:
    worker.ejected_at = None
    worker.ejection_note = ""
    worker.trial_in_flight = False
    log.info("re-admitted %s: its latency is back within the bound", worker.url)


def _completion_tokens(parsed: Any) -> int | None:
    if isinstance(parsed, dict):
        usage = parsed.get("usage")
        if isinstance(usage, dict):
            tokens = usage.get("completion_tokens")
            if isinstance(tokens, int):
                return tokens
    return None


def _deadline_error(model: str, budget: AttemptBudget) -> DeadlineExceeded:
    reason = (
        f"{len(budget.attempts)} attempts failed"
        if len(budget.attempts) >= budget.max_attempts
        else "the request deadline passed"
    )
    detail = "; ".join(budget.attempts) or "no attempt finished"
    return DeadlineExceeded(f"model {model!r}: {reason} ({detail})", budget.attempts)


def _short(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, WorkerError):
        # The worker URL is already the prefix of the message; keep only what went wrong.
        prefix = f"{exc.worker}: "
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _safely(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("router observer %r failed", hook)
