"""Resuming a broken stream on another worker: the caller sees one stream.

When a stream's worker fails after some of the answer reached the caller (the connection
reset, the body ended without `data: [DONE]`, or it stalled: see stalls.py), the request is
sent again to another worker, never one that failed it, asking it to continue the text
already delivered:

- a chat request gets that text as a final assistant message to continue. SGLang and vLLM
  take `continue_final_message: true` with `add_generation_prompt: false` (vLLM refuses the
  two together set true: vllm `entrypoints/openai/chat_completion/protocol.py`,
  `check_generation_prompt`; SGLang's `serving_chat.py` drops the final assistant message
  from the template and appends its text). llama.cpp's server continues a final assistant
  message on its own ("prefill assistant", on unless `--no-prefill-assistant`:
  ggml-org/llama.cpp `tools/server/server-common.cpp`, `oaicompat_chat_params_parse`),
  after the template rendered with `add_generation_prompt`, so that field is left out;
- a completion request gets the prompt followed by that text;
- `max_tokens` (and `max_completion_tokens`) shrink by the tokens already delivered.

The new worker's events are rewritten into the first one's stream: the same `id`, `model`
and `created`, no second role event, and the final usage counting the whole answer (the
delivered tokens move from its prompt to its completion). Only whole SSE events are handed
on, so a break never leaves half an event with the caller. Tokens delivered are counted as
the events that carried text: SGLang, vLLM and llama.cpp send one per token by default.

Requests that cannot be continued exactly are not resumed; their break raises
`StreamBroken` with the reason (`refusal`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import AsyncGeneratorType
from typing import Any, cast

import orjson

from modelserver.config import ResumeConfig
from modelserver.errors import RequestError, RetryableWorkerError, StreamBroken
from modelserver.routing.events import ResumeRecord
from modelserver.routing.response import RoutedResponse

PayloadFor = Callable[[str | None], bytes]
"""The body of a resumed request for a worker of the given backend."""
Restart = Callable[[dict[str, Any], PayloadFor, frozenset[str]], Awaitable[RoutedResponse]]
"""Route a resumed request (the body for policies, the bytes per backend), avoiding the
workers given; the router's own failover applies."""
OnResume = Callable[[ResumeRecord], None]

_DONE_EVENT = b"data: [DONE]\n\n"
_NOT_RESUMED = "not resumed"

# Why a request is not resumed (README "Resuming a broken stream" lists these).
MANY_CHOICES = (
    "n={n} asks for several answers in one stream, which cannot be continued one by one;"
    " send n=1 requests to have a broken stream resumed"
)
LOGPROBS = (
    "logprobs were asked for, and another worker cannot give those of the text already delivered"
)
ECHO = "echo=true would repeat the prompt, text already delivered included"
NOT_ONE_PROMPT = "the prompt is not one string"
NOT_JSON = "the request body is not a JSON object"
TOOL_CALL = "the answer was a tool call, which cannot be continued as text"


def route_kind(path: str) -> str | None:
    """ "chat" or "completion" for the routes a stream can be resumed on, else None."""
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/completions"):
        return "completion"
    return None


def request_json(body: bytes | dict[str, Any], parsed: dict[str, Any] | None) -> Any:
    """The request as JSON, decoded only when a stream must be resumed."""
    if isinstance(body, dict):
        return body
    if parsed is not None:
        return parsed
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def refusal(path: str, body: Any) -> str | None:
    """Why this request cannot be resumed exactly, or None if it can."""
    kind = route_kind(path)
    if kind is None:
        return f"the route {path} has no way to continue a partial answer"
    if not isinstance(body, dict):
        return NOT_JSON
    n = body.get("n")
    if n not in (None, 1):
        return MANY_CHOICES.format(n=n)
    best_of = body.get("best_of")
    if best_of not in (None, 1):
        return MANY_CHOICES.format(n=best_of)
    if kind == "chat":
        if body.get("logprobs") or body.get("top_logprobs"):
            return LOGPROBS
        if not isinstance(body.get("messages"), list):
            return "the request has no list of messages"
        return None
    if body.get("logprobs") not in (None, 0, False):
        return LOGPROBS
    if body.get("echo"):
        return ECHO
    if not isinstance(body.get("prompt"), str):
        return NOT_ONE_PROMPT
    return None


@dataclass
class Delivered:
    """What the caller has of the answer so far."""

    text: str = ""
    tokens: int = 0
    """Events that carried text (one per token on the engines we know)."""
    id: Any = None
    model: Any = None
    created: Any = None
    finish_reason: str | None = None
    tool_call: bool = False


def data_events(events: bytes) -> list[Any]:
    """The JSON payload of every `data:` event in `events` (whole events), in order;
    `[DONE]` and anything that is not JSON are left out."""
    payloads: list[Any] = []
    for event in events.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data and data != b"[DONE]":
                    with contextlib.suppress(orjson.JSONDecodeError):
                        payloads.append(orjson.loads(data))
    return payloads


def read_delivered(events: bytes, chat: bool) -> Delivered:
    """The text, token count and identity of the answer in the events handed on so far."""
    delivered = Delivered()
    pieces: list[str] = []
    for payload in data_events(events):
        if not isinstance(payload, dict):
            continue
        if delivered.id is None:
            delivered.id = payload.get("id")
            delivered.model = payload.get("model")
            delivered.created = payload.get("created")
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            continue
        choice = choices[0]
        if chat:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(delta, dict) and delta.get("tool_calls"):
                delivered.tool_call = True
        else:
            text = choice.get("text")
        if isinstance(text, str) and text:
            pieces.append(text)
            delivered.tokens += 1
        if choice.get("finish_reason"):
            delivered.finish_reason = str(choice["finish_reason"])
    delivered.text = "".join(pieces)
    return delivered


def continued_body(path: str, body: dict[str, Any], delivered: Delivered) -> dict[str, Any]:
    """The request that continues `delivered` (for SGLang, vLLM and the simulator; see
    `for_backend` for llama.cpp). Nothing delivered yet: the request as it was."""
    new = dict(body)
    if not delivered.tokens:
        return new
    for key in ("max_tokens", "max_completion_tokens"):
        budget = body.get(key)
        if isinstance(budget, int) and not isinstance(budget, bool):
            new[key] = budget - delivered.tokens
    if route_kind(path) == "completion":
        new["prompt"] = body["prompt"] + delivered.text
        return new
    messages = list(body["messages"])
    last = messages[-1] if messages else None
    if (
        body.get("continue_final_message")
        and isinstance(last, Mapping)
        and (last.get("role") == "assistant")
    ):
        earlier = last.get("content")
        messages[-1] = {
            **last,
            "content": (earlier if isinstance(earlier, str) else "") + delivered.text,
        }
    else:
        messages.append({"role": "assistant", "content": delivered.text})
    new["messages"] = messages
    new["continue_final_message"] = True
    new["add_generation_prompt"] = False
    return new


def for_backend(path: str, body: dict[str, Any]) -> PayloadFor:
    """The bytes of `body` for a worker of each backend: llama.cpp's server continues a
    final assistant message by itself and needs its generation prompt, so it gets the
    request without the two fields."""
    generic = orjson.dumps(body)
    messages = body.get("messages")
    continuing = (
        route_kind(path) == "chat"
        and isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], Mapping)
        and messages[-1].get("role") == "assistant"
    )
    if not continuing:  # a completion, or a chat request sent again as it was
        return lambda backend: generic
    plain = {
        k: v
        for k, v in body.items()
        if k not in ("continue_final_message", "add_generation_prompt")
    }
    llamacpp = orjson.dumps(plain)
    return lambda backend: llamacpp if backend == "llamacpp" else generic


class _Rewriter:
    """Turns the events of a resumed attempt into the first attempt's stream."""

    def __init__(self, delivered: Delivered) -> None:
        self._delivered = delivered
        self._offset = delivered.tokens

    def rewrite(self, events: bytes) -> bytes:
        out: list[bytes] = []
        for event in events.split(b"\n\n"):
            if not event.strip():
                continue
            if not event.startswith(b"data:") or event[5:].strip() == b"[DONE]":
                out.append(event + b"\n\n")
                continue
            try:
                payload = orjson.loads(event[5:].strip())
            except orjson.JSONDecodeError:
                out.append(event + b"\n\n")
                continue
            if isinstance(payload, dict):
                if _only_the_role(payload):
                    continue  # the caller had this event from the first worker
                self._restamp(payload)
            out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
        return b"".join(out)

    def _restamp(self, payload: dict[str, Any]) -> None:
        delivered = self._delivered
        for key, value in (
            ("id", delivered.id),
            ("model", delivered.model),
            ("created", delivered.created),
        ):
            if value is not None and key in payload:
                payload[key] = value
        usage = payload.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            # The delivered text was this worker's prompt; it is the caller's completion.
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int):
                usage["prompt_tokens"] = max(prompt - self._offset, 0)
            usage["completion_tokens"] += self._offset
            if isinstance(usage.get("prompt_tokens"), int):
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]


def _only_the_role(payload: dict[str, Any]) -> bool:
    choices = payload.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta")
    return (
        isinstance(delta, dict)
        and not choice.get("finish_reason")
        and set(delta) <= {"role", "content"}
        and not delta.get("content")
        and payload.get("usage") is None
    )


class ResumingStream:
    """Async iterator over one streamed request's SSE bytes, whole events only, across as
    many workers as it takes (at most `max_resumes` resumes)."""

    def __init__(
        self,
        model: str,
        path: str,
        first: RoutedResponse,
        body: Callable[[], Any],
        restart: Restart,
        settings: ResumeConfig,
        on_resume: OnResume,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._path = path
        assert first.chunks is not None
        self._chunks: AsyncIterator[bytes] = first.chunks
        self.worker = first.worker
        """The worker streaming now."""
        self._body = body
        self._restart = restart
        self._settings = settings
        self._on_resume = on_resume
        self._clock = clock
        self._delivered: list[bytes] = []
        self._failed: set[str] = set()
        self._resumes = 0
        self.records: list[ResumeRecord] = []
        """This stream's resumes so far."""
        self._last_event_at = clock()
        self._closed = False
        """The caller closed the stream: a read it breaks is not a worker's failure."""
        # The concrete type, for `ag_running`.
        self._gen = cast(AsyncGeneratorType[bytes, None], self._run())

    @property
    def reading(self) -> bool:
        """True while a task waits for the next event."""
        return self._gen.ag_running

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    def __anext__(self) -> Awaitable[bytes]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop here: the worker streaming now is freed, read or not. A task waiting for
        the next event meanwhile gets the end of the stream from the worker's relay."""
        self._closed = True
        try:
            closer = getattr(self._chunks, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            if not self.reading:
                await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[bytes, None]:
        rewriter: _Rewriter | None = None
        while True:
            pending = b""
            chunks = self._chunks
            try:
                async for chunk in chunks:
                    if pending:
                        chunk = pending + chunk
                    cut = chunk.rfind(b"\n\n") + 2
                    if cut < 2:
                        pending = chunk
                        continue
                    pending = chunk[cut:]
                    whole = chunk[:cut] if pending else chunk
                    if rewriter is not None:
                        whole = rewriter.rewrite(whole)
                        if not whole:
                            continue
                    self._delivered.append(whole)
                    self._last_event_at = self._clock()
                    yield whole
                if pending:  # a last event without its blank line
                    yield rewriter.rewrite(pending + b"\n\n") if rewriter else pending
                return
            except RetryableWorkerError as exc:
                if self._closed:
                    return
                ending, rewriter = await self._resume(exc)
                if ending is not None:
                    yield ending
                    return

    async def _resume(self, exc: RetryableWorkerError) -> tuple[bytes | None, _Rewriter | None]:
        """Continue on another worker: (None, rewriter), or (the stream's last bytes, None)
        when the answer was already complete. Raises `StreamBroken` when it cannot."""
        failed = self.worker
        self._failed.add(failed)
        body = self._body()
        why = refusal(self._path, body)
        if why is None and self._resumes >= self._settings.max_resumes:
            why = (
                f"it was resumed {self._resumes} times already ([router.resume] max_resumes"
                f" = {self._settings.max_resumes})"
            )
        chat = route_kind(self._path) == "chat"
        delivered = read_delivered(b"".join(self._delivered), chat)
        if why is None and delivered.tool_call:
            why = TOOL_CALL
        if why is not None:
            raise StreamBroken(failed, f"{exc.reason}; {_NOT_RESUMED}: {why}") from exc
        if delivered.finish_reason is not None:
            # Only [DONE] was missing: the answer is whole.
            return _DONE_EVENT, None
        new_body = continued_body(self._path, body, delivered)
        if any(new_body.get(k) == 0 for k in ("max_tokens", "max_completion_tokens")):
            return _length_ending(delivered, chat), None
        try:
            response = await self._restart(
                new_body, for_backend(self._path, new_body), frozenset(self._failed)
            )
        except RequestError as error:
            raise StreamBroken(
                failed, f"{exc.reason}; resuming on another worker failed: {error}"
            ) from error
        self._resumes += 1
        assert response.chunks is not None
        self._chunks = response.chunks
        self.worker = response.worker
        record = ResumeRecord(
            model=self._model,
            failed_worker=failed,
            worker=response.worker,
            error=exc.reason,
            delivered_tokens=delivered.tokens,
            gap_s=self._clock() - self._last_event_at,
        )
        self.records.append(record)
        self._on_resume(record)
        return None, _Rewriter(delivered)


def _length_ending(delivered: Delivered, chat: bool) -> bytes:
    """The budget was spent by the text delivered: end the answer as the engine would."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    if chat:
        choice["delta"] = {}
    else:
        choice["text"] = ""
    event = {
        "id": delivered.id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": delivered.created,
        "model": delivered.model,
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n" + _DONE_EVENT
