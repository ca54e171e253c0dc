"""How the router talks HTTP: a small protocol, one pooled aiohttp implementation, and a
mock for tests (routing logic without sockets or sleeps).

A transport raises only our error types for connection trouble: `WorkerUnreachable`
(refused, reset, closed mid-answer) and `WorkerTimeout`, and `ClientClosed` once closed.
HTTP statuses are not errors here; the router classifies them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from modelserver.errors import ClientClosed, WorkerRefused, WorkerTimeout, WorkerUnreachable


class TransportResponse(Protocol):
    """An answer whose status and headers have arrived; the body may still be coming."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk (for SSE streams)."""
        ...

    def release(self) -> None:
        """Give the connection back (or drop it if the body was not read to the end)."""
        ...

    def set_read_timeout(self, seconds: float) -> None:
        """From now on, wait at most `seconds` for each chunk (a stream's bound after its
        first chunk, which may differ from the one for the first)."""
        ...


class Transport(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float,
        stream: bool = False,
    ) -> TransportResponse:
        """Send one request. `timeout_s` bounds the whole answer, or for a stream the wait
        for each chunk (so a stream that stalls mid-way is detected too)."""
        ...

    async def close(self) -> None: ...


# -- aiohttp -------------------------------------------------------------------------------


class _AiohttpResponse:
    __slots__ = ("_response", "_worker", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, worker: str) -> None:
        self._response = response
        self._worker = worker
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise WorkerTimeout(self._worker, "timed out reading the answer") from None
        except aiohttp.ClientError as exc:
            raise WorkerUnreachable(self._worker, f"connection lost: {exc}") from None
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._response.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise WorkerTimeout(self._worker, "stream stalled (no chunk in time)") from None
        except aiohttp.ClientError as exc:
            raise WorkerUnreachable(self._worker, f"stream broke: {exc}") from None
        finally:
            self._response.release()

    def release(self) -> None:
        self._response.release()

    def set_read_timeout(self, seconds: float) -> None:
        connection = self._response.connection
        if connection is not None and connection.protocol is not None:
            # aiohttp's own per-read timer (the `sock_read` of the request's ClientTimeout),
            # restarted now: a timer already running would otherwise keep its old length
            # until more data came. The next request on this connection sets its own.
            connection.protocol.read_timeout = seconds
            connection.protocol.start_timeout()


class AiohttpTransport:
    """One pooled `aiohttp.ClientSession` per router; keep-alive connections to every worker.

    Create it inside the event loop that will use it (aiohttp binds the session to it).
    """

    def __init__(self, connect_timeout_s: float = 3.0, max_connections: int = 0) -> None:
        self._connect_timeout_s = connect_timeout_s
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            json_serialize=lambda value: orjson.dumps(value).decode(),
            # No automatic decompression cost or cookie handling: engines speak plain JSON.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float,
        stream: bool = False,
    ) -> TransportResponse:
        if stream:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout_s, sock_read=timeout_s
            )
        else:
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout_s)
        worker = _worker_of(url)
        if self._session.closed:
            raise ClientClosed("the HTTP session is closed")
        try:
            response = await self._session.request(
                method, url, data=body, headers=headers, timeout=timeout
            )
        except RuntimeError:
            if self._session.closed:  # aiohttp's "Session is closed"
                raise ClientClosed("the HTTP session was closed during the request") from None
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise WorkerTimeout(worker, f"no answer within {timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise WorkerRefused(worker, f"cannot connect: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise WorkerUnreachable(worker, f"connection failed: {exc}") from None
        return _AiohttpResponse(response, worker)

    async def close(self) -> None:
        await self._session.close()


def _worker_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- mock ----------------------------------------------------------------------------------


@dataclass
class MockRequest:
    method: str
    url: str
    worker: str
    """The worker's base URL (scheme://host:port)."""
    path: str
    body: bytes | None
    headers: Mapping[str, str]
    stream: bool
    timeout_s: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class MockResponse:
    status: int = 200
    json: Any = None
    body: bytes = b""
    chunks: Iterable[bytes | BaseException] | AsyncIterable[bytes] | None = None
    """For streams: the chunks, in order. An exception instance in the list is raised there
    (a stream that breaks mid-way). An async iterable plays an engine that takes its time."""
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


class _MockResponseHandle:
    def __init__(self, response: MockResponse, transport: MockTransport, worker: str) -> None:
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._transport = transport
        self._worker = worker
        self._released = False
        self._pending: asyncio.Future[bytes | None] | None = None

    async def read(self) -> bytes:
        try:
            if self._response.json is not None:
                return orjson.dumps(self._response.json)
            chunks = self._response.chunks
            if isinstance(chunks, AsyncIterable):
                return b"".join([c async for c in chunks])
            if chunks is not None:
                return b"".join(c for c in chunks if isinstance(c, bytes))
            return self._response.body
        finally:
            self.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        chunks = self._response.chunks
        try:
            if isinstance(chunks, AsyncIterable):
                iterator = aiter(chunks)
                while (data := await self._next_or_released(iterator)) is not None:
                    yield data
                return
            for chunk in [await self.read()] if chunks is None else chunks:
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk
        finally:
            self.release()

    async def _next_or_released(self, iterator: AsyncIterator[bytes]) -> bytes | None:
        """The next chunk, None at the end; as with aiohttp, a release while a read waits
        breaks that read."""
        self._pending = asyncio.ensure_future(anext(iterator, None))
        try:
            return await self._pending
        except asyncio.CancelledError:
            if self._released and self._pending.cancelled():
                raise WorkerUnreachable(self._worker, "stream broke: Connection closed") from None
            self._pending.cancel()
            raise
        finally:
            self._pending = None

    def set_read_timeout(self, seconds: float) -> None:
        self._transport.read_timeouts.append((self._worker, seconds))

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._transport.open_answers -= 1
            if self._pending is not None:
                self._pending.cancel()


MockHandler = Callable[[MockRequest], "MockResponse | Awaitable[MockResponse]"]


class MockTransport:
    """Answers requests with `handler(request)`; records every request in `requests`.

    The handler may raise `WorkerUnreachable` / `WorkerTimeout` (or ConnectionRefusedError,
    mapped to WorkerUnreachable) to play a broken worker.
    """

    def __init__(self, handler: MockHandler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []
        self.closed = False
        self.open_answers = 0
        """Answers not given back yet (read to the end, or released): held connections."""
        self.read_timeouts: list[tuple[str, float]] = []
        """(worker, seconds) for every `set_read_timeout` on an answer."""

    async def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float,
        stream: bool = False,
    ) -> TransportResponse:
        parts = urlsplit(url)
        request = MockRequest(
            method=method,
            url=url,
            worker=f"{parts.scheme}://{parts.netloc}",
            path=parts.path,
            body=body,
            headers=dict(headers or {}),
            stream=stream,
            timeout_s=timeout_s,
        )
        self.requests.append(request)
        try:
            result = self.handler(request)
            if inspect.isawaitable(result):
                result = await result
        except ConnectionRefusedError as exc:
            raise WorkerRefused(request.worker, f"cannot connect: {exc}") from None
        except ConnectionResetError as exc:
            raise WorkerUnreachable(request.worker, f"connection reset: {exc}") from None
        except TimeoutError:
            raise WorkerTimeout(request.worker, f"no answer within {timeout_s:g} s") from None
        assert isinstance(result, MockResponse)
        self.open_answers += 1
        return _MockResponseHandle(result, self, request.worker)

    async def close(self) -> None:
        self.closed = True
