"""A streamed answer on its way to the caller: chunks handed on as they arrive, and the
attempt accounted for exactly once however the stream ends.

The relay is an object rather than an async generator on purpose: `aclose()` on an async
generator that was never started skips its `finally`, so a stream closed before its first
chunk was read (a caller that left during a long time to first token) used to keep the
worker's in-flight slot and the engine connection forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager

from modelserver.errors import ClientClosed, RetryableWorkerError, WorkerError, WorkerUnreachable

StreamEnd = Callable[["StreamRelay", "bool | None", "str | None", int], None]
"""Called once when a stream ends: (relay, verdict on the worker or None for none, error,
output tokens counted)."""

_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
_DONE = b"[DONE]"


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
    gives the connection back. `guard` wraps each wait for a chunk (the router uses it to
    stop readers when it closes); `abandon()` ends a stream nobody is reading, so that its
    next read raises `ClientClosed`.
    """

    __slots__ = (
        "_chunks",
        "_closed_error",
        "_done",
        "_ended",
        "_events",
        "_first",
        "_guard",
        "_on_end",
        "_release",
        "_sse",
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
        guard: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.worker = worker
        self._first: bytes | None = first
        self._chunks = chunks
        self._release = release
        self._on_end = on_end
        self._sse = sse
        self._guard = guard
        self._events = first.count(b"data:")
        # A caller may stop reading once it has seen `data: [DONE]` (the end of an OpenAI
        # stream); that is a complete, successful answer, not an abandoned one.
        self._done = _DONE in first
        self._tail = first[-8:]
        self._ended = False
        self._closed_error: ClientClosed | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            if self._closed_error is not None:
                raise self._closed_error
            raise StopAsyncIteration
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            with self._guard():
                chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            if self._sse and not self._done:
                cut = WorkerUnreachable(self.worker, "the stream ended before data: [DONE]")
                await self._end(False, _short(cut))
                raise cut from None
            await self._end(True, None)
            raise
        except RetryableWorkerError as exc:
            await self._end(False, _short(exc))
            raise
        except ClientClosed as exc:
            await self._end(None, str(exc))
            raise
        except BaseException:  # cancelled by the caller: no verdict on the worker
            await self._end(None, "stream closed by the caller")
            raise
        self._events += chunk.count(b"data:")
        # The marker may straddle two chunks: look across the seam too.
        self._done = self._done or _DONE in chunk or _DONE in self._tail + chunk[:8]
        self._tail = chunk[-8:]
        return chunk

    async def aclose(self) -> None:
        """Stop here: frees the worker's slot and the engine connection, read or not."""
        await self._end(None, "stream closed by the caller")

    async def abandon(self, error: ClientClosed) -> None:
        """End a stream that is not being read (the router is closing): no verdict on the
        worker, and the next read raises `error`."""
        if not self._ended:
            self._closed_error = error
            await self._end(None, str(error))

    async def _end(self, verdict: bool | None, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        if verdict is None and self._done:
            verdict, error = True, None
        # Accounting first: it must happen even if closing the connection fails.
        # The last event of an OpenAI stream is `data: [DONE]`, not a token.
        self._on_end(self, verdict, error, max(self._events - 1, 1))
        try:
            closer = getattr(self._chunks, "aclose", None)
            if closer is not None:
                # RuntimeError: another task is waiting on the chunks right now; giving the
                # connection back below breaks that wait, so it ends too.
                with contextlib.suppress(RuntimeError):
                    await closer()
        finally:
            self._release()


def _short(exc: WorkerError) -> str:
    return str(exc).removeprefix(f"{exc.worker}: ")
