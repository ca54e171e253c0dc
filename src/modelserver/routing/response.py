"""What `Router.forward` returns: the answer of the worker that served the request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson


class RoutedResponse:
    """The answer of the worker that served a request.

    `status` and `headers` are the engine's. `worker` is its URL and `attempts` how many
    attempts the request took. A non-streamed answer has `body` (bytes, exactly as the engine
    sent it) and `chunks` None; a streamed one has `chunks`, an async iterator of the raw SSE
    bytes as they arrive (nothing buffered), and `body` None. A stream must be consumed to
    the end or closed with `aclose()` (or `async with response:`), which frees the worker's
    in-flight slot and the engine connection, whether any chunk was read or not. A worker
    that dies, cuts or stalls the stream after its first chunk is replaced by another that
    continues it (routing/resume.py; `worker` stays the first one); a stream that cannot be
    resumed raises `StreamBroken` from the iterator, saying why.
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
