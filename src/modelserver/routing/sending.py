"""One attempt on one worker: count it in, send it, and read the answer's start (the whole
answer, or a stream's first chunk, which is handed on as a `StreamRelay`), then give the
worker its verdict (split from router.py; `Router` inherits it, so the names are `Router`'s).
The stall bounds of a stream attempt come from what the router learned of the worker
(stalls.py)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Mapping

from modelserver.errors import (
    EngineRejected,
    RetryableWorkerError,
    WorkerBadAnswer,
    WorkerRefused,
    WorkerTimeout,
    WorkerUnreachable,
)
from modelserver.routing.admission import Admission, Ticket
from modelserver.routing.answers import completion_tokens, json_answer, safely, short, shown
from modelserver.routing.closing import InFlight
from modelserver.routing.probing import Probing
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.response import RoutedResponse
from modelserver.routing.resume import PayloadFor
from modelserver.routing.retry import AttemptBudget, error_for_status
from modelserver.routing.stalls import StallBounds, stall_bounds
from modelserver.routing.stream import StreamRelay, looks_like_json, looks_like_sse, no_chunks
from modelserver.routing.transport import TransportResponse
from modelserver.routing.verdicts import take_out_until_probed
from modelserver.routing.worker import Worker


class Sending(Probing):
    """Sends one attempt and reads the start of its answer."""

    admission: Admission
    _in_flight: InFlight
    _streams: set[StreamRelay]

    def _attempt_for(
        self,
        worker: Worker,
        *,
        request: RequestInfo,
        payload: bytes,
        payload_for: PayloadFor | None,
        ticket: Ticket,
        stream: bool,
        headers: Mapping[str, str] | None,
        attempt: int,
        budget: AttemptBudget,
    ) -> Awaitable[RoutedResponse]:
        """`_attempt` on `worker` with the body its backend takes (a resumed stream's may
        differ per backend, and an engine that schedules by priority gets the request's)."""
        data = payload if payload_for is None else payload_for(worker.backend)
        data = self.admission.engine_body(worker, data, ticket)
        return self._attempt(worker, request, data, stream, headers, attempt, budget)

    def _attempt(
        self,
        worker: Worker,
        request: RequestInfo,
        payload: bytes,
        stream: bool,
        headers: Mapping[str, str] | None,
        attempt: int,
        budget: AttemptBudget,
    ) -> Awaitable[RoutedResponse]:
        """Count the attempt in at once (so a choice made before it is awaited, as a
        hedge's, sees it in flight), and return the sending, to be awaited."""
        worker.in_flight += 1
        worker.requests += 1
        worker.breaker.on_request_start()
        if worker.ejected_at is not None:
            worker.trial_in_flight = True
        self.policy.on_request_start(worker, request)
        for observer in self._observers:
            safely(observer.on_attempt, request.model, worker.url, attempt, request.path)
        outer_s = min(self.config.attempt_timeout_s, budget.remaining_s())
        send_headers = self._headers[worker.url]
        if headers:
            send_headers = {**send_headers, **headers}
        start = self._clock()
        return self._send(worker, request, payload, stream, attempt, outer_s, send_headers, start)

    async def _send(
        self,
        worker: Worker,
        request: RequestInfo,
        payload: bytes,
        stream: bool,
        attempt: int,
        outer_s: float,
        send_headers: Mapping[str, str],
        start: float,
    ) -> RoutedResponse:
        timeout_s = outer_s
        bounds = stall_bounds(worker, self.config.resume, outer_s) if stream else None
        stall = bounds.first if bounds is not None else None
        if stall is not None:
            timeout_s = stall.seconds
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
                assert bounds is not None
                return await self._start_stream(
                    worker, request, answer, attempt, start, bounds, outer_s
                )
            data = await answer.read()
            parsed = json_answer(worker.url, answer.headers, data)
        except RetryableWorkerError as original:
            exc = original
            if stall is not None and isinstance(exc, WorkerTimeout):
                exc = WorkerTimeout(
                    worker.url,
                    f"stalled: no first chunk within {stall.seconds:.2f} s ({stall.basis})",
                )
            # While closing, a failure may be the closing itself: no verdict then.
            verdict = None if self._in_flight.closing else False
            self._finish(
                worker, request, attempt, verdict, status, short(exc), start, None, None, stream
            )
            if isinstance(exc, WorkerRefused) and self._probe_task is not None:
                # Only while probes run: they are what brings the worker back.
                take_out_until_probed(worker, short(exc))
            if exc is original:
                raise
            raise exc from original
        except EngineRejected as exc:
            # The request was wrong, not the worker: no mark against its circuit.
            self._finish(
                worker, request, attempt, None, status, short(exc), start, None, None, stream
            )
            raise
        except BaseException:
            # Cancelled by the caller: no verdict on the worker either.
            self._finish(
                worker, request, attempt, None, status, "cancelled", start, None, None, stream
            )
            raise
        tokens = completion_tokens(parsed)
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
        bounds: StallBounds,
        outer_s: float,
    ) -> RoutedResponse:
        chunks = answer.chunks()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            raise WorkerUnreachable(worker.url, "stream ended before its first chunk") from None
        if not looks_like_sse(first):
            if not looks_like_json(answer.headers, first):
                closer = getattr(chunks, "aclose", None)
                if closer is not None:  # drop the connection: the rest of it is of no use
                    await closer()
                raise WorkerBadAnswer(
                    worker.url,
                    f"answered a stream request with {shown(answer.headers, first)},"
                    " not server-sent events",
                )
            # Answered whole (embeddings ignore `stream`): read it all, pass it on if JSON.
            first += b"".join([chunk async for chunk in chunks])
            json_answer(worker.url, answer.headers, first)
            chunks = no_chunks()
        ttft = self._clock() - start
        if bounds.chunk is not None or bounds.first is not None:
            # Each chunk from now on: its own learned bound, else the outer one.
            answer.set_read_timeout(bounds.chunk.seconds if bounds.chunk else outer_s)
        relay = StreamRelay(
            worker.url,
            first,
            chunks,
            release=answer.release,
            on_end=functools.partial(
                self._stream_ended, worker, request, attempt, start, ttft, answer.status
            ),
            sse=looks_like_sse(first),
        )
        self._streams.add(relay)
        return RoutedResponse(
            answer.status, answer.headers, worker.url, attempt, ttft, chunks=relay, ttft_s=ttft
        )

    def _stream_ended(
        self,
        worker: Worker,
        request: RequestInfo,
        attempt: int,
        start: float,
        ttft: float,
        status: int,
        relay: StreamRelay,
        ok: bool | None,
        error: str | None,
        tokens: int,
    ) -> None:
        self._streams.discard(relay)
        if ok is False and self._in_flight.closing:
            ok = None  # broken by the closing itself
        self._finish(worker, request, attempt, ok, status, error, start, ttft, tokens, True)
