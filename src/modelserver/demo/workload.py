"""The demo's traffic: what a small team's programs send, through the gateway, with the
`openai` SDK exactly as they would use it against OpenAI.

- chat users on `llama-8b` (the simulated H100s): multi-turn conversations under one of three
  long system prompts, so consecutive turns, and conversations of the same persona, share a
  prefix the engines find in their prefix caches; the last turn of each conversation streams;
- chat users on `tiny-chat` (real llama.cpp, random weights: real tokens, no meaning),
  every other turn streamed;
- an embedding client sending batches of sentences to `minilm` (real all-MiniLM-L6-v2).

Each request becomes one `Outcome`: what it was, whether it succeeded, how long it took, which
worker answered (the gateway's `X-ModelServer-Worker` header) and the engine's token counts.
Nothing is retried here: a failure the router could not hide is recorded as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletionMessageParam

WORKER_HEADER = "x-modelserver-worker"
Op = Literal["chat", "stream", "embed"]


@dataclass(frozen=True)
class Outcome:
    at: float
    """Seconds since the workload began, when the request ended."""
    model: str
    op: Op
    ok: bool
    latency_s: float
    worker: str | None
    """URL of the worker that answered, as the gateway reported it."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the engine took from its prefix cache (`prompt_tokens_details`)."""
    error: str | None = None


_PERSONA_BODY = (
    " You answer questions from the engineers of a small research lab that runs its own"
    " language models on its own GPUs. Be precise and brief; prefer numbers to adjectives;"
    " say when you do not know. When a question is about serving models, think about"
    " batching, the prefix cache, the memory of the GPU, the time to the first token and"
    " the time between tokens, and how a router that knows the load of each server can"
    " keep every one of them busy without letting any queue grow. When a question is about"
    " training, think about the data first."
)
_OPENINGS = {
    "support": "You are the lab's support assistant.",
    "reviewer": "You are a careful code reviewer for the lab's Python services.",
    "teacher": "You are a patient teacher who explains systems to newcomers.",
}
PERSONAS = {name: opening + _PERSONA_BODY * 4 for name, opening in _OPENINGS.items()}
"""Three long system prompts (~1,900 characters): what conversations share."""
QUESTIONS = (
    "How many requests can one GPU serve at once?",
    "Why does a shared system prompt make answers faster?",
    "What happens when a server crashes in the middle of a request?",
    "How should a client pick between eight servers of the same model?",
    "Is it better to queue a request or to send it to a slower server?",
    "What does the prefix cache keep, and for how long?",
    "How do I know that a server is healthy?",
    "What is the difference between time to first token and total latency?",
)
SENTENCES = (
    "The cat sleeps on the warm sofa.",
    "A kitten is napping on the couch.",
    "The central bank raised interest rates again.",
    "Stock prices fell sharply this morning.",
    "How do I reset my password?",
    "I forgot my password and cannot log in.",
    "The train to Lyon leaves at nine.",
    "Our flight was delayed by two hours.",
    "She plays the guitar in a small band.",
    "A musician is performing on stage.",
    "Fresh bread smells wonderful in the morning.",
    "The bakery opens at seven every day.",
)


class Workload:
    """Runs the demo's users against one OpenAI-compatible URL until told to stop."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        record: Callable[[Outcome], None],
        *,
        chat_users: int = 6,
        tiny_users: int = 2,
        seed: int = 7,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._record = record
        self._chat_users = chat_users
        self._tiny_users = tiny_users
        self._rng = random.Random(seed)
        self._clock = clock
        self._started = clock()

    async def run(self, stop: asyncio.Event) -> None:
        self._started = self._clock()
        users = [self._llama_user(i, stop) for i in range(self._chat_users)]
        users += [self._tiny_user(i, stop) for i in range(self._tiny_users)]
        users.append(self._embedder(stop))
        await asyncio.gather(*users)

    # -- users -----------------------------------------------------------------------------

    async def _llama_user(self, index: int, stop: asyncio.Event) -> None:
        personas = list(PERSONAS.values())
        conversation = 0
        while not stop.is_set():
            system = personas[(index + conversation) % len(personas)]
            messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}]
            turns = self._rng.randint(3, 5)
            for turn in range(turns):
                if stop.is_set():
                    return
                question = self._rng.choice(QUESTIONS)
                messages.append({"role": "user", "content": question})
                stream = turn == turns - 1
                answer = await self.chat("llama-8b", messages, max_tokens=48, stream=stream)
                if answer is None:
                    break  # a failed turn ends the conversation, as a user would give up
                messages.append({"role": "assistant", "content": answer})
                await self._think(stop, 0.1, 0.5)
            conversation += 1

    async def _tiny_user(self, index: int, stop: asyncio.Event) -> None:
        system = "You are a tiny model with random weights. Answer anyway."
        while not stop.is_set():
            messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}]
            for turn in range(3):
                if stop.is_set():
                    return
                messages.append({"role": "user", "content": self._rng.choice(QUESTIONS)})
                answer = await self.chat(
                    "tiny-chat", messages, max_tokens=24, stream=(turn + index) % 2 == 1
                )
                if answer is None:
                    break
                messages.append({"role": "assistant", "content": answer})
                await self._think(stop, 0.2, 0.6)

    async def _embedder(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.embed(self._rng.sample(SENTENCES, 4))
            await self._think(stop, 0.2, 0.6)

    async def _think(self, stop: asyncio.Event, low: float, high: float) -> None:
        """A user's pause between requests (ends early when the workload stops)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self._rng.uniform(low, high))

    # -- one request each ------------------------------------------------------------------

    async def chat(
        self,
        model: str,
        messages: list[ChatCompletionMessageParam],
        *,
        max_tokens: int,
        stream: bool,
    ) -> str | None:
        """One chat request, recorded; its text, or None if it failed."""
        if stream:
            return await self._stream(model, messages, max_tokens)
        start = self._clock()
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens
            )
            reply = raw.parse()
        except openai.APIError as exc:
            self._fail(model, "chat", start, exc)
            return None
        prompt, cached = _usage(reply.usage)
        self._ok(model, "chat", start, raw.headers.get(WORKER_HEADER), prompt, cached)
        return reply.choices[0].message.content or ""

    async def _stream(
        self, model: str, messages: list[ChatCompletionMessageParam], max_tokens: int
    ) -> str | None:
        start = self._clock()
        worker: str | None = None
        pieces: list[str] = []
        finished = False
        prompt = cached = 0
        try:
            async with self.client.chat.completions.with_streaming_response.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            ) as response:
                worker = response.headers.get(WORKER_HEADER)
                async for chunk in await response.parse():
                    if chunk.usage is not None:
                        prompt, cached = _usage(chunk.usage)
                    for choice in chunk.choices:
                        pieces.append(choice.delta.content or "")
                        finished = finished or choice.finish_reason is not None
        except openai.APIError as exc:
            self._fail(model, "stream", start, exc, worker)
            return None
        if not finished:
            self._fail(model, "stream", start, "the stream ended before its last token", worker)
            return None
        self._ok(model, "stream", start, worker, prompt, cached)
        return "".join(pieces)

    async def embed(self, texts: list[str]) -> list[list[float]] | None:
        start = self._clock()
        try:
            raw = await self.client.embeddings.with_raw_response.create(
                model="minilm", input=texts
            )
            reply = raw.parse()
        except openai.APIError as exc:
            self._fail("minilm", "embed", start, exc)
            return None
        self._ok("minilm", "embed", start, raw.headers.get(WORKER_HEADER), 0, 0)
        return [list(item.embedding) for item in reply.data]

    def _ok(
        self, model: str, op: Op, start: float, worker: str | None, prompt: int, cached: int
    ) -> None:
        now = self._clock()
        self._record(
            Outcome(now - self._started, model, op, True, now - start, worker, prompt, cached)
        )

    def _fail(
        self, model: str, op: Op, start: float, error: BaseException | str,
        worker: str | None = None,
    ) -> None:
        now = self._clock()
        why = error if isinstance(error, str) else _describe(error)
        self._record(
            Outcome(now - self._started, model, op, False, now - start, worker, error=why)
        )


def _usage(usage: Any) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens) of an OpenAI usage object, 0 when absent."""
    if usage is None:
        return 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return int(usage.prompt_tokens or 0), int(cached or 0)


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc).splitlines()[0][:160]
    return f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {message}"
