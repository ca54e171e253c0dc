"""The client library: `AsyncModelServer` for asyncio code, `ModelServer` for everything else.

    async with AsyncModelServer("fleet.toml") as ms:
        result = await ms.chat("llama-8b", [{"role": "user", "content": "Hi"}])
        print(result.text, result.usage.cached_tokens, result.worker, result.latency_s)

    ms = ModelServer({"llama-8b": ["http://10.0.0.5:30000", "http://10.0.0.6:30000"]})
    vectors = ms.embed("bge", ["a text", "another"])

Every call goes through one `routing.Router` (the same one the gateway uses): best usable
worker by the fleet's policy, failover to another worker on connection errors, timeouts,
408/429/5xx. `ModelServer` runs that router on one background event-loop thread and is safe
to call from many threads at once (no lock around requests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from modelserver.config import Fleet, RouterConfig, load_fleet
from modelserver.errors import ClientClosed, ModelServerError, RequestError
from modelserver.routing.router import Router
from modelserver.routing.transport import Transport
from modelserver.routing.worker import WorkerStats

T = TypeVar("T")
FleetLike = str | Path | Fleet | Mapping[str, Any]
Messages = Sequence[Mapping[str, Any]]
MapOp = Literal["chat", "complete", "embed"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the engine found in its prefix cache
    (`usage.prompt_tokens_details.cached_tokens`, as SGLang and vLLM report it)."""

    @classmethod
    def from_json(cls, usage: Any) -> Usage:
        if not isinstance(usage, dict):
            return cls()
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(cached or 0),
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to `chat` or `complete`."""

    text: str
    usage: Usage
    worker: str
    """URL of the worker that answered."""
    latency_s: float
    """Seconds from the call to the answer, retries included."""
    finish_reason: str | None
    raw: dict[str, Any]
    """The engine's JSON answer, untouched."""


@dataclass(frozen=True, slots=True)
class MapItem:
    """One item of a `map` batch: `value` when `ok`, else `error`."""

    index: int
    ok: bool
    value: Any = None
    error: BaseException | None = None


def _user_messages(message: str | Messages) -> list[dict[str, Any]]:
    if isinstance(message, str):
        return [{"role": "user", "content": message}]
    if isinstance(message, Sequence):
        messages = [dict(m) for m in message if isinstance(m, Mapping)]
        if len(messages) == len(message):
            return messages
    raise TypeError(
        "messages must be a string (one user message) or a list of message dicts such as"
        f' {{"role": "user", "content": "..."}} (got {_shown_type(message)})'
    )


def _shown_type(value: object) -> str:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a {type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    return f"{type(value).__name__} {value!r:.40}"


class AsyncModelServer:
    """Route chat, completion and embedding requests over a fleet of engines.

    `fleet` is a fleet file path, a loaded `Fleet`, or a dict `{model: [url, ...]}` /
    `{model: {"kind": "embedding", "urls": [...]}}` for engines started by other means.
    `config` overrides the fleet's `[router]` section; `policy` overrides its policy name.
    `probe=False` skips the background health probes (traffic and the circuit breaker still
    take failing workers out). Use `async with` or call `close()`.
    """

    def __init__(
        self,
        fleet: FleetLike,
        *,
        config: RouterConfig | None = None,
        policy: str | None = None,
        transport: Transport | None = None,
        probe: bool = True,
        **router_options: Any,
    ) -> None:
        if isinstance(fleet, (str, Path)):
            fleet = load_fleet(fleet)
        if config is None:
            config = fleet.router if isinstance(fleet, Fleet) else RouterConfig()
        if policy is not None:
            config = config.model_copy(update={"policy": policy})
        options: dict[str, Any] = {"config": config, "transport": transport, **router_options}
        if isinstance(fleet, Fleet):
            self.router = Router.from_fleet(fleet, **options)
        else:
            try:
                self.router = Router.from_mapping(fleet, **options)
            except ValueError as exc:
                raise ModelServerError(f"invalid fleet mapping: {exc}") from None
        self._probe = probe
        self._started = False

    async def _ready(self) -> Router:
        if not self._started:
            self._started = True
            if self._probe:
                await self.router.start()  # probes, and re-reads the state files each round
            else:
                self.router.apply_state_files()  # still honour what the launcher knows
        return self.router

    # -- requests --------------------------------------------------------------------------

    async def chat(self, model: str, messages: str | Messages, **params: Any) -> Completion:
        """One chat completion. `messages` is a list of OpenAI messages (a string is one user
        message). `params` go to the engine as they are (max_tokens, temperature, ...)."""
        body = {"model": model, "messages": _user_messages(messages), **params}
        return await self._complete(model, CHAT_PATH, body, chat=True)

    async def complete(self, model: str, prompt: str, **params: Any) -> Completion:
        """One text completion of `prompt`."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string (got {_shown_type(prompt)})")
        body = {"model": model, "prompt": prompt, **params}
        return await self._complete(model, COMPLETIONS_PATH, body, chat=False)

    async def _complete(
        self, model: str, path: str, body: dict[str, Any], *, chat: bool
    ) -> Completion:
        router = self.router if self._started else await self._ready()
        start = asyncio.get_running_loop().time()
        response = await router.forward(model, path, body)
        latency = asyncio.get_running_loop().time() - start
        data = response.json()
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise RequestError(
                f"{response.worker}: unexpected answer shape: {response.body[:200]!r}"
                if response.body
                else f"{response.worker}: empty answer"
            ) from None
        return Completion(
            text=text or "",
            usage=Usage.from_json(data.get("usage")),
            worker=response.worker,
            latency_s=latency,
            finish_reason=choice.get("finish_reason"),
            raw=data,
        )

    async def embed(self, model: str, texts: str | Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (a single string gives a list of one vector)."""
        router = self.router if self._started else await self._ready()
        inputs = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(text, str) for text in inputs):
            raise TypeError(
                f"texts must be a string or a list of strings (got {_shown_type(texts)})"
            )
        response = await router.forward(model, EMBEDDINGS_PATH, {"model": model, "input": inputs})
        data = response.json()
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            vectors = [list(row["embedding"]) for row in rows]
        except (KeyError, TypeError):
            raise RequestError(f"{response.worker}: unexpected embeddings answer") from None
        if len(vectors) != len(inputs):
            raise RequestError(f"{response.worker}: {len(vectors)} vectors for {len(inputs)} texts")
        return vectors

    async def stream(
        self, model: str, messages: str | Messages, **params: Any
    ) -> AsyncGenerator[str, None]:
        """Chat with `stream=True`: yields the text pieces as the engine sends them.

        Fails over to another worker before the first piece; after it, a worker that dies,
        stalls or cuts the stream is replaced by another that continues the text (the
        router's resume, `[router.resume]`): the pieces read on as one answer. A stream
        that cannot be continued exactly (n > 1, logprobs) raises `StreamBroken` saying
        why."""
        router = self.router if self._started else await self._ready()
        body = {"model": model, "messages": _user_messages(messages), **params, "stream": True}
        response = await router.forward(model, CHAT_PATH, body, stream=True)
        assert response.chunks is not None
        buffer = b""
        async with response:
            async for chunk in response.chunks:
                buffer += chunk
                # SSE events end with a blank line; a chunk may hold several or half of one.
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    piece = _sse_text(event)
                    if piece is _DONE:
                        return
                    if piece:
                        yield piece
        # A stream that broke and could not be resumed raises from the router's relay above.

    async def map(
        self,
        model: str,
        inputs: Sequence[Any],
        *,
        op: MapOp = "chat",
        concurrency: int = 16,
        progress: bool = False,
        **params: Any,
    ) -> list[MapItem]:
        """Run `op` ("chat": inputs are message lists or strings; "complete": prompts;
        "embed": texts, one vector each) over `inputs` with at most `concurrency` requests
        at once. Results come back in input order; a failed item is a `MapItem` with
        `ok=False` and its `error` (any exception, a bad input included), the batch goes on.
        `progress=True` draws a rich bar."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 (got {concurrency})")
        await self._ready()
        call: Callable[[Any], Awaitable[Any]]
        if op == "chat":
            call = lambda item: self.chat(model, item, **params)  # noqa: E731
        elif op == "complete":
            call = lambda item: self.complete(model, item, **params)  # noqa: E731
        elif op == "embed":
            call = lambda item: self._embed_one(model, item)  # noqa: E731
        else:
            raise ValueError(f"op must be 'chat', 'complete' or 'embed' (got {op!r})")
        results: list[MapItem | None] = [None] * len(inputs)
        semaphore = asyncio.Semaphore(concurrency)
        bar = _Progress(len(inputs), f"{op} {model}") if progress else None

        async def run(index: int, item: Any) -> None:
            async with semaphore:
                try:
                    results[index] = MapItem(index, True, await call(item))
                except Exception as exc:  # one item's failure, whatever it is, is that item's
                    results[index] = MapItem(index, False, error=exc)
                if bar is not None:
                    bar.advance(results[index])

        try:
            await asyncio.gather(*(run(i, item) for i, item in enumerate(inputs)))
        finally:
            if bar is not None:
                bar.close()
        return [r for r in results if r is not None]

    async def _embed_one(self, model: str, text: str) -> list[float]:
        return (await self.embed(model, [text]))[0]

    async def get_completion_or_embedding(
        self,
        model: str,
        message: str | Messages,
        temperature: float = 0.0,
        max_tokens: int = 256,
        get_embedding: bool = False,
    ) -> str | list[float]:
        """The seed's call: the answer's text, or (get_embedding=True) the message's vector."""
        if get_embedding:
            text = message if isinstance(message, str) else str(message)
            return (await self.embed(model, [text]))[0]
        result = await self.chat(model, message, temperature=temperature, max_tokens=max_tokens)
        return result.text

    # -- fleet view and lifecycle ------------------------------------------------------------

    def workers(self, model: str | None = None) -> list[WorkerStats]:
        return self.router.workers(model)

    async def close(self) -> None:
        """Refuse new calls and stop those in flight: each raises `ClientClosed`, and no
        worker is held responsible (no breaker opens, no model is marked down)."""
        await self.router.close()

    async def __aenter__(self) -> AsyncModelServer:
        await self._ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ModelServer:
    """`AsyncModelServer` for synchronous code, safe to call from many threads at once.

    The router lives on one background event-loop thread; each call hands its coroutine to
    that loop and waits for the answer, so concurrent callers share the connection pool and
    the routing state without a lock around requests. `close()` (from any thread) makes
    every call still waiting, and every later one, raise `ClientClosed`.
    """

    def __init__(self, fleet: FleetLike, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modelserver-router", daemon=True
        )
        self._thread.start()
        self._closed = False
        # Held only while a call is handed to the loop, never while it runs: so that no
        # call slips in after close() has started, to wait on a loop that has stopped.
        self._handover = threading.Lock()
        self._waiting: set[Future[Any]] = set()

        async def build() -> AsyncModelServer:
            server = AsyncModelServer(fleet, **options)
            await server._ready()
            return server

        try:
            self._async = self._run(build)
        except BaseException:
            self._stop_loop()
            raise

    @property
    def router(self) -> Router:
        return self._async.router

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run `make()` on the router's loop and wait for it (`make` is called only when the
        client is open, so a closed client leaves no coroutine behind)."""
        with self._handover:
            if self._closed:
                raise ClientClosed("this ModelServer is closed")
            future: Future[T] = asyncio.run_coroutine_threadsafe(_as_coroutine(make), self._loop)
            self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientClosed("this ModelServer was closed while the call ran") from None

    def chat(self, model: str, messages: str | Messages, **params: Any) -> Completion:
        return self._run(lambda: self._async.chat(model, messages, **params))

    def complete(self, model: str, prompt: str, **params: Any) -> Completion:
        return self._run(lambda: self._async.complete(model, prompt, **params))

    def embed(self, model: str, texts: str | Sequence[str]) -> list[list[float]]:
        return self._run(lambda: self._async.embed(model, texts))

    def stream(self, model: str, messages: str | Messages, **params: Any) -> Iterator[str]:
        agen = self._async.stream(model, messages, **params)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                with contextlib.suppress(ClientClosed):  # closed meanwhile: the router ended it
                    self._run(agen.aclose)

    def map(
        self,
        model: str,
        inputs: Sequence[Any],
        *,
        op: MapOp = "chat",
        concurrency: int = 16,
        progress: bool = False,
        **params: Any,
    ) -> list[MapItem]:
        """`AsyncModelServer.map`, waited for (the progress bar draws from the loop thread)."""
        return self._run(
            lambda: self._async.map(
                model, inputs, op=op, concurrency=concurrency, progress=progress, **params
            )
        )

    def get_completion_or_embedding(
        self,
        model: str,
        message: str | Messages,
        temperature: float = 0.0,
        max_tokens: int = 256,
        get_embedding: bool = False,
    ) -> str | list[float]:
        """The seed's call, unchanged: text, or a vector with get_embedding=True."""
        return self._run(
            lambda: self._async.get_completion_or_embedding(
                model, message, temperature, max_tokens, get_embedding
            )
        )

    def workers(self, model: str | None = None) -> list[WorkerStats]:
        return self._run(lambda: _call(lambda: self._async.workers(model)))

    def close(self) -> None:
        """Refuse new calls, stop those in flight (they raise `ClientClosed`, no worker is
        blamed), close the connection pool and the loop thread."""
        with self._handover:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop).result()
        finally:
            self._stop_loop()

    async def _shut_down(self) -> None:
        await self._async.close()
        # Whatever still runs on the loop (a map between items, a stream's generator) ends
        # now rather than being dropped with the loop.
        me = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not me]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        # A call handed over but never started (the loop stopped first) must not wait forever.
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(ClientClosed("this ModelServer was closed"))
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


async def _call(fn: Callable[[], T]) -> T:
    return fn()


_DONE = object()


def _sse_text(event: bytes) -> Any:
    """The text delta of one SSE event; `_DONE` for the end marker; "" for anything else."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return _DONE
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        try:
            choice = payload["choices"][0]
        except (KeyError, IndexError, TypeError):
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is None:
            text = choice.get("text")
        return text or ""
    return ""


class _Progress:
    """A rich progress bar for `map` (rich is imported only when one is asked for)."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "{task.fields[failed]} failed",
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._progress.add_task(label, total=total, failed=0)
        self._failed = 0
        self._progress.start()

    def advance(self, item: MapItem | None) -> None:
        if item is not None and not item.ok:
            self._failed += 1
        self._progress.update(self._task, advance=1, failed=self._failed)

    def close(self) -> None:
        self._progress.stop()
