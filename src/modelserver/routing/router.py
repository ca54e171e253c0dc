"""The router: pick -> send -> observe -> retry elsewhere, plus health probing.

One implementation serves both the client library (`AsyncModelServer`) and the
OpenAI-compatible gateway. The gateway's contract is `Router.forward` (pass-through of
raw bodies and SSE streams), the admin calls (`workers`, `drain`, `undrain`, `add_worker`,
`remove_worker`) and observers (`events.RouterObserver`).

The request path, in order: `forward` and `_route` here (pick a worker, retry elsewhere,
wait in the admission queue, admission.py), `_attempt` / `_send` in sending.py (one attempt
on one worker), `_finish` in verdicts.py (what the attempt says about the worker); a stream
broken later is resumed by resume.py. Probing and the launcher's state files: probing.py;
the admin calls: admin.py.

Everything here runs on one asyncio event loop; there is no lock around requests. The
clock, the sleep, the random source and the HTTP transport are injected, so the routing
logic is tested with `MockTransport` and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from modelserver._tenant_config import PriorityValue
from modelserver.config import Fleet, RouterConfig
from modelserver.errors import (
    ClientClosed,
    NoHealthyWorker,
    RetryableWorkerError,
    UnknownModel,
    WrongModelKind,
)
from modelserver.routing.admission import Admission, Asked
from modelserver.routing.answers import (
    deadline_error,
)
from modelserver.routing.availability import Availability
from modelserver.routing.closing import STOPPED, InFlight
from modelserver.routing.discovery import Discovery
from modelserver.routing.entries import WorkerEntry, entries_from_mapping
from modelserver.routing.events import RouterObserver
from modelserver.routing.hedge import Hedger, hedging_allowed, next_best
from modelserver.routing.policies import Policy, make_policy, usable_workers
from modelserver.routing.request_key import RequestInfo, kind_of_path, render_text
from modelserver.routing.response import RoutedResponse
from modelserver.routing.resume import PayloadFor, ResumingStream, request_json
from modelserver.routing.retry import AttemptBudget, backoff_delay
from modelserver.routing.sending import Sending
from modelserver.routing.stream import StreamRelay
from modelserver.routing.transport import Transport
from modelserver.routing.worker import Worker

log = logging.getLogger(__name__)

__all__ = ["RoutedResponse", "Router", "WorkerEntry", "entries_from_mapping"]


class Router(Sending):
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
        discovery: Discovery | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self._discovery = discovery
        """Where workers come from besides `entries` (cluster mode: the Ray cluster)."""
        self._rng = rng or random.Random()
        if isinstance(policy, Policy):
            self.policy = policy
        else:
            self.policy = make_policy(policy or self.config.policy, self.config, self._rng)
        self._transport = transport
        self._owns_transport = transport is None
        self._observers: list[RouterObserver] = list(observers)
        self._availability = Availability(state_dir, wall_clock)
        self._clock = clock
        self._sleep = sleep
        self._models: dict[str, list[Worker]] = {}
        self._kinds: dict[str, str] = {}
        self.admission = Admission(self.config, self._models, clock)
        self._by_url: dict[str, Worker] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self._api_keys: dict[str, str] = {}
        """model -> the engine API key its workers were given, for workers added later."""
        self._probe_task: asyncio.Task[None] | None = None
        self._state_task: asyncio.Task[None] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._added_by_launcher: set[str] = set()
        """Workers routed to because the launcher's state files name them (probing.py)."""
        self._in_flight = InFlight()
        self._streams: set[StreamRelay] = set()
        """Streams handed to callers and not ended yet (closed with the router)."""
        self._closing: asyncio.Future[None] | None = None
        self._hedger = Hedger(self.config.hedge, sleep) if self.config.hedge.enabled else None
        if self._hedger is not None:
            self._observers.append(self._hedger)
        for entry in entries:
            self.add_worker(
                entry.model,
                entry.url,
                entry.kind,
                name=entry.name,
                api_key=entry.api_key,
                backend=entry.backend,
            )

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_fleet(cls, fleet: Fleet, **kwargs: Any) -> Router:
        """Workers from the fleet file; `[router]` settings; state dir for the launcher's
        state files and `availability.json`."""
        entries = [
            WorkerEntry(w.model, w.url, w.kind, name=w.name, api_key=w.api_key, backend=w.backend)
            for w in fleet.workers()
        ]
        kwargs.setdefault("config", fleet.router)
        kwargs.setdefault("state_dir", fleet.state_dir())
        if fleet.cluster is not None:  # cluster mode: the workers are read from the cluster
            from modelserver.launcher.cluster.discovery import ClusterDiscovery

            kwargs.setdefault("discovery", ClusterDiscovery(fleet))
            entries = []
        router = cls(entries, **kwargs)
        router.admission.configure_for(fleet)
        return router

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **kwargs: Any) -> Router:
        """Workers from `{model: [url, ...]}` or `{model: {"kind": ..., "urls": [...]}}`."""
        return cls(entries_from_mapping(mapping), **kwargs)

    @property
    def hedger(self) -> Hedger | None:
        """The hedging of late streams (`[router.hedge] enabled`), with its counts."""
        return self._hedger

    # -- the request path ------------------------------------------------------------------

    async def forward(
        self,
        model: str,
        path: str,
        body: bytes | dict[str, Any],
        *,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
        parsed: dict[str, Any] | None = None,
        priority: PriorityValue | None = None,
        tenant: str | None = None,
        weight: float = 1.0,
    ) -> RoutedResponse:
        """Send one POST request for `model` to the best usable worker, failing over.

        `path` is the engine route (`/v1/chat/completions`, `/v1/completions`,
        `/v1/embeddings`, `/generate`, ...); `body` goes to the engine unchanged (a dict is
        serialised with orjson). `stream=True` returns as soon as the first chunk of the
        answer has arrived; set it when the body asks the engine to stream. `headers` are
        added to the engine request (the worker's API key, if any, is set by the router).
        `parsed`: the bytes `body` already decoded by the caller (the gateway has), so a
        policy that reads the prompt does not decode it again. `priority`, `tenant` and
        `weight` place the request in the admission queue (routing/admission.py).

        Failover: connection refused or reset, timeouts, HTTP 408, 429 and 5xx are retried
        on a different worker within `[router] max_attempts` and `request_timeout_s`;
        backoff with jitter only when the worker that just failed is the only one left.
        A stream that breaks or stalls after its first chunk is resumed on another worker
        (`[router.resume]`, resume.py): the caller reads one stream; one that cannot be
        resumed raises `StreamBroken` from its iterator, saying why.

        Raises:
            UnknownModel: no such model in the fleet.
            WrongModelKind: e.g. `/v1/embeddings` for a chat model, or the reverse.
            EngineRejected: the engine answered 4xx (not 408/429); `.status`, `.body` (the
                engine's JSON error, parsed) and the message are the engine's. Not retried.
            NoHealthyWorker: every worker of the model is out; `.reasons` says why each.
            DeadlineExceeded: the attempts or the deadline ran out; `.attempts` lists
                `url: error` per failed attempt.
            ClientClosed: `close()` was called before, or while the request ran.
        """
        deadline = self._clock() + self.config.request_timeout_s
        with self._in_flight.guard():
            asked = (model, tenant, priority, weight)
            response = await self._route(
                model, path, body, stream, headers, parsed, deadline, asked=asked
            )
        relay = response.chunks
        if isinstance(relay, StreamRelay) and relay.sse and self.config.resume.enabled:
            response.chunks = ResumingStream(
                model,
                path,
                response,
                functools.partial(request_json, body, parsed),
                functools.partial(self._resume_stream, model, path, headers, deadline, asked),
                self.config.resume,
                self._notify_resume,
                self._clock,
            )
        return response

    async def _resume_stream(
        self,
        model: str,
        path: str,
        headers: Mapping[str, str] | None,
        deadline: float,
        asked: Asked,
        body: dict[str, Any],
        payload_for: PayloadFor,
        never: frozenset[str],
    ) -> RoutedResponse:
        """A broken stream's request, continued, to a worker that has not failed it."""
        with self._in_flight.guard():
            return await self._route(
                model, path, body, True, headers, body, deadline, never, payload_for, asked
            )

    async def _route(
        self,
        model: str,
        path: str,
        body: bytes | dict[str, Any],
        stream: bool,
        headers: Mapping[str, str] | None,
        parsed: dict[str, Any] | None,
        deadline: float,
        never: frozenset[str] = frozenset(),
        payload_for: PayloadFor | None = None,
        asked: Asked | None = None,
    ) -> RoutedResponse:
        workers = self._models.get(model)
        if workers is None:
            raise UnknownModel(model, list(self._models))
        if never:
            workers = [w for w in workers if w.url not in never]
            if not workers:
                raise NoHealthyWorker(model, dict.fromkeys(never, "failed this request"))
        wanted = kind_of_path(path)
        if wanted is not None and wanted != self._kinds[model]:
            raise WrongModelKind(model, self._kinds[model], wanted)
        if isinstance(body, dict):
            payload = orjson.dumps(body)
            parsed_body: Any = body
        else:
            payload = body
            parsed_body = parsed
        text = ""
        if self.policy.needs_text:
            if parsed_body is None:
                try:
                    parsed_body = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    parsed_body = {}
            if isinstance(parsed_body, dict):
                text = render_text(parsed_body)
        ticket = self.admission.ticket(*(asked or (model, None, None, 1.0)), len(payload))
        request = RequestInfo(model, path, text, ticket.tenant, parsed_body if text else None)
        config = self.config
        budget = AttemptBudget(config.max_attempts, deadline, self._clock)
        readmit = config.latency.readmit_after_s
        tried: set[str] = set()
        last_failed: Worker | None = None
        backoff_round = 0
        while True:
            now = self._clock()
            usable = usable_workers(workers, now, readmit) or _last_resort(workers, now, readmit)
            if not usable:
                raise await self._no_healthy_worker(model, workers, now, budget)
            candidates = [w for w in usable if w.url not in tried] if tried else usable
            if not candidates:
                # Every usable worker failed this request: one not tried yet, even if out for
                # being slow, beats asking a failing one again.
                candidates = [w for w in _last_resort(workers, now, readmit) if w.url not in tried]
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
                    raise deadline_error(model, budget)
                self._notify_retry(model, last_failed, budget, delay)
                await self._sleep(delay)
                tried.clear()
                last_failed = None
                continue
            if budget.remaining_s() <= 0:
                raise deadline_error(model, budget)
            roomy = self.admission.with_room(candidates, ticket)
            if not roomy:  # every worker at its running cap: wait for a place
                await self.admission.wait(ticket, budget.remaining_s())
                continue
            worker = self.policy.select(roomy, request)
            send = functools.partial(
                self._attempt_for, request=request, payload=payload, payload_for=payload_for,
                ticket=ticket, stream=stream, headers=headers,
                attempt=len(budget.attempts) + 1, budget=budget,
            )  # fmt: skip
            try:
                if self._hedger is not None and stream and hedging_allowed(headers):
                    others = functools.partial(next_best, worker, candidates, request, self)
                    response = await self._hedger.run(worker, send, others)
                else:
                    response = await send(worker)
            except RetryableWorkerError as exc:
                budget.failed(worker.url, exc)
                tried.add(worker.url)
                last_failed = worker
                if not budget.can_try_again():
                    raise deadline_error(model, budget) from exc
                # Retrying at once on another worker; the backoff branch above reports
                # its own wait when this worker is the only one left.
                now = self._clock()
                if any(w is not worker and w.out_reason(now, readmit) is None for w in workers):
                    self._notify_retry(model, worker, budget, 0.0)
                continue
            if model in self._availability.down:
                await self._availability.mark_up(model, self._models)
            return response

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse new requests; stop the ones in flight (their callers get `ClientClosed`,
        no worker gets a verdict); stop probing; close the HTTP pool if the router created
        it. Safe to call more than once, and from several tasks."""
        self._in_flight.closing = True  # refuse new requests from now on
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for task in (self._probe_task, self._state_task, self._discovery_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._probe_task = self._state_task = self._discovery_task = None
        await self.policy.aclose()
        await self._in_flight.stop()
        # Streams handed out but not being read at this moment.
        for relay in list(self._streams):
            await relay.abandon(ClientClosed(STOPPED))
        await self._availability.settle()
        if self._owns_transport and self._transport is not None:
            await self._transport.close()
        self._transport = None

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _last_resort(workers: Sequence[Worker], now: float, readmit: float) -> list[Worker]:
    """When no worker is usable: those out only for being slow, or only by their circuit
    while their health probe answers (`Worker.out_reason(last_resort=True)`). Trying one of
    them beats answering "no healthy worker" while some are alive."""
    return [w for w in workers if w.out_reason(now, readmit, last_resort=True) is None]
