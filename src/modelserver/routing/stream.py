"""A streamed answer on its way to the caller: chunks handed on as they arrive, and the
attempt accounted for exactly once however the stream ends.

The relay is an object around the async generator that carries the chunks, on purpose:
`aclose()` on an async generator that was never started skips its `finally`, so a stream
closed before its first chunk was read (a caller that left during a long time to first
token) used to keep the worker's in-flight slot and the engine connection forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import AsyncGeneratorType
from typing import cast

from modelserver.errors import ClientClosed, RetryableWorkerError, WorkerUnreachable

StreamEnd = Callable[["StreamRelay", "bool | None", "str | None", int], None]
"""Called once when a stream ends: (relay, verdict on the worker or None for none, error,
output tokens counted)."""

_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
_DONE = b"[DONE]"
_CALLER_CLOSED = "stream closed by the caller"


def looks_like_sse(first: bytes) -> bool:
    """True if a stream's first chunk can be the start of an SSE event (it may be cut
    anywhere, even inside the first field name)."""
    head = first.lstrip(b"\r\n")
    return any(head[: len(f)] == f[: len(head)] for f in _SSE_FIELDS)


def looks_like_json(headers: Mapping[str, str], first: bytes) -> bool:
    """An engine may answer a stream request whole, as JSON (embeddings ignore `stream`):
    that is an answer, passed on as it is."""
    kind = headers.get("content-type", "")
    return kind.startswith("application/json") and first.lstrip()[:1] in (b"{", b"[")


async def no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


class StreamRelay:
    """Async iterator over one streamed answer, from its first chunk on.

    It ends exactly once, and then calls `on_end`: at the last chunk (a success, unless an
    SSE stream ended without `data: [DONE]`, which is a cut-off the worker is blamed for), at
    a broken connection (blamed), or at `aclose()` (no verdict, or a success if `[DONE]` was
    already seen), whether any chunk was read or not. Ending closes the engine's chunks and
    gives the connection back, which also ends a read another task is waiting on.
    `abandon()` is the router closing: the stream ends with no verdict and its reader (the
    one waiting now, or the next one) gets `ClientClosed`.

    The chunks flow through an inner async generator, so `async for` costs what it did when
    the relay was a bare generator; this object adds the endings a generator cannot do.
    """

    __slots__ = (
        "_chunks",
        "_closed_error",
        "_done",
        "_ended",
        "_events",
        "_gen",
        "_on_end",
        "_release",
        "_sse",
        "_started",
        "_tail",
        "worker",
    )

    def __init__(
        self,
        worker: str,
        first: bytes,
        chunks: AsyncIterator[bytes],
        *,
        release: Callable[[], None],
        on_end: StreamEnd,
        sse: bool,
    ) -> None:
        self.worker = worker
        self._chunks = chunks
        self._release = release
        self._on_end = on_end
        self._sse = sse
        self._events = first.count(b"data:")
        # A caller may stop reading once it has seen `data: [DONE]` (the end of an OpenAI
        # stream); that is a complete, successful answer, not an abandoned one.
        self._done = _DONE in first
        self._tail = first[-8:]
        self._started = False
        self._ended = False
        self._closed_error: ClientClosed | None = None
        # The concrete type, for `ag_running` (is a task inside it right now?).
        self._gen = cast(AsyncGeneratorType[bytes, None], self._relay(first))

    @property
    def sse(self) -> bool:
        """True for a stream of server-sent events (not a whole JSON answer)."""
        return self._sse

    @property
    def reading(self) -> bool:
        """True while a task waits for the next chunk."""
        return self._gen.ag_running

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    def __anext__(self) -> Awaitable[bytes]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop here: frees the worker's slot and the engine connection, read or not."""
        if not self._started or self.reading:
            # Never ran: `aclose()` on such a generator skips its `finally`. Running (another
            # task waits for a chunk): giving the connection back ends that wait.
            await self._end(None, _CALLER_CLOSED)
        if not self.reading:
            await self._gen.aclose()

    async def abandon(self, error: ClientClosed) -> None:
        """The router is closing: end the stream with no verdict on the worker; whoever
        reads it, now or next, gets `error`."""
        if not self._ended:
            self._closed_error = error
            await self._end(None, str(error))

    async def _relay(self, first: bytes) -> AsyncGenerator[bytes, None]:
        self._started = True
        verdict: bool | None = None
        error: str | None = _CALLER_CLOSED
        try:
            if self._closed_error is None:
                yield first
            if self._closed_error is not None:  # the router closed while nobody read
                raise self._closed_error
            async for chunk in self._chunks:
                self._events += chunk.count(b"data:")
                # The marker may straddle two chunks: look across the seam too.
                if not self._done:
                    self._done = _DONE in chunk or _DONE in self._tail + chunk[:8]
                    self._tail = chunk[-8:]
                yield chunk
                if self._closed_error is not None:
                    raise self._closed_error
            if self._sse and not self._done:
                raise WorkerUnreachable(self.worker, "the stream ended before data: [DONE]")
            verdict, error = True, None
        except RetryableWorkerError as exc:
            if self._closed_error is not None:  # the read broke because the router closed
                raise self._closed_error from None
            verdict, error = False, exc.reason
            raise
        finally:
            await self._end(verdict, error)

    async def _end(self, verdict: bool | None, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        if verdict is None and self._done:
            verdict, error = True, None
        try:
            # Accounting first: it must happen even if closing the connection fails.
            # The last event of an OpenAI stream is `data: [DONE]`, not a token.
            self._on_end(self, verdict, error, max(self._events - 1, 1))
            closer = getattr(self._chunks, "aclose", None)
            if closer is not None:
                # RuntimeError: another task is waiting on the chunks right now; giving the
                # connection back below breaks that wait, so it ends too.
                with contextlib.suppress(RuntimeError):
                    await closer()
        finally:
            self._release()
