"""Resume on the real llama.cpp engine (xllamacpp runners, the tiny chat model, greedy): a
stream whose runner is SIGKILLed, hung (SIGSTOP) or reset after its 5th chunk continues on
another runner, through the client and through the gateway with the `openai` SDK.

llama.cpp continues a final assistant message from its text, which it tokenizes again: the
answer is the unbroken one word for word when that text gives back the ids generated (a
trained model's output does; the tiny random model's does for this prompt, checked first
with the runner's /tokenize). See README "Resuming a broken stream".

The tiny model answers in milliseconds, so the first runner is reached through a proxy that
passes on its first 6 events (the role and 5 pieces) and holds the rest: the fault then
lands mid-stream every time, never after the whole answer has gone through.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelserver import AsyncModelServer
from modelserver.config import RouterConfig
from modelserver.models import PreparedModels, prepare_models
from modelserver.routing import Router
from tests.models.runner_process import Runner, start_runner
from tests.routing.broken_streams import FAULTS, ResettingProxy, Resumes, sdk_through_gateway

MODEL = "tiny-chat"
MESSAGES = [{"role": "user", "content": "Say something."}]
MAX_TOKENS = 24
GREEDY: dict[str, Any] = {"temperature": 0.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedModels:
    return prepare_models(tmp_path_factory.mktemp("models"))


@contextlib.contextmanager
def two_runners(prepared: PreparedModels, log_dir: Path) -> Iterator[tuple[Runner, Runner]]:
    """Two replicas of the tiny chat model; both stopped at the end, even a stopped one."""
    args = ["--model", str(prepared.chat_path), "--alias", MODEL, "-c", "2048", "-np", "1"]
    started: list[Runner] = []
    try:
        for name in ("first", "second"):
            started.append(start_runner([*args, "-t", "1"], log_dir / f"{name}.log"))
        yield started[0], started[1]
    finally:
        for runner in started:
            if runner.process.poll() is None:
                os.killpg(runner.process.pid, signal.SIGCONT)  # a hung one must hear SIGTERM
            runner.stop()


def unbroken(runner: Runner) -> tuple[list[str], dict[str, Any]]:
    """The pieces and usage of the same stream with no fault."""
    status, raw = runner.request(
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True,
         "stream_options": {"include_usage": True}, **GREEDY},
    )  # fmt: skip
    assert status == 200
    pieces, usage = [], {}
    for line in raw.decode().split("\n"):
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                pieces.append(event["choices"][0]["delta"]["content"])
    # The precondition of an exact continuation: the delivered text gives back its ids.
    tokens = runner.post_json("/tokenize", {"content": "".join(pieces[:5])})["tokens"]
    assert len(tokens) == 5
    return pieces, usage


async def hit(fault: str, first: Runner, proxy: ResettingProxy) -> None:
    if fault == "kill":
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
    elif fault == "hang":
        os.killpg(first.process.pid, signal.SIGSTOP)
    else:
        proxy.reset()


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_llamacpp_stream_broken_after_its_5th_chunk_ends_as_the_unbroken_answer(
    fault: str, prepared: PreparedModels, tmp_path: Path
) -> None:
    with two_runners(prepared, tmp_path) as (first, second):
        expected, _ = unbroken(second)
        # The proxy passes on the role event and 5 pieces only: the tiny model answers in
        # milliseconds, and the fault must land mid-stream.
        async with ResettingProxy(first.port, hold_after=6) as proxy:
            target = proxy.url
            resumes = Resumes()
            client = AsyncModelServer(
                {MODEL: {"urls": [target], "backend": "llamacpp"}},
                config=RouterConfig(), probe=False, observers=[resumes],
            )  # fmt: skip
            async with client:
                if fault == "hang":  # what the router learns of the runner judges its stall
                    for _ in range(3):
                        await client.chat(MODEL, MESSAGES, max_tokens=8, **GREEDY)
                pieces: list[str] = []
                async for piece in client.stream(MODEL, MESSAGES, max_tokens=MAX_TOKENS, **GREEDY):
                    pieces.append(piece)
                    if len(pieces) == 5:
                        client.router.add_worker(MODEL, second.url, backend="llamacpp")
                        await hit(fault, first, proxy)
    assert "".join(pieces) == "".join(expected)
    (record,) = resumes.records
    assert (record.failed_worker, record.worker) == (target, second.url)


async def test_a_llamacpp_stream_through_the_gateway_keeps_its_id_and_usage(
    prepared: PreparedModels, tmp_path: Path
) -> None:
    with two_runners(prepared, tmp_path) as (first, second):
        expected, expected_usage = unbroken(second)
        async with ResettingProxy(first.port, hold_after=6) as proxy:  # see above
            router = Router.from_mapping(
                {MODEL: {"urls": [proxy.url], "backend": "llamacpp"}}, config=RouterConfig()
            )
            async with sdk_through_gateway(router) as (_, sdk):
                stream = await sdk.chat.completions.create(
                    model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
                    temperature=0.0,
                )  # fmt: skip
                chunks, pieces = [], []
                async for chunk in stream:
                    chunks.append(chunk)
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                        if len(pieces) == 5:
                            router.add_worker(MODEL, second.url, backend="llamacpp")
                            os.killpg(first.process.pid, signal.SIGKILL)
    assert "".join(pieces) == "".join(expected)
    assert len({c.id for c in chunks}) == 1
    (usage,) = [c.usage for c in chunks if c.usage is not None]
    assert usage.completion_tokens == expected_usage["completion_tokens"] == MAX_TOKENS
    assert usage.prompt_tokens == expected_usage["prompt_tokens"]
