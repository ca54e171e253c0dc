"""The simulated model is autoregressive: a greedy answer resumed on another replica, from
any point, continues word for word as the uninterrupted one would."""

from __future__ import annotations

from typing import Any

import aiohttp

from modelserver.sim.language_model import next_words, weights_seed
from tests.sim.conftest import StartSim

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about the sea, please."},
]


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_a_chat_answer_continued_on_another_replica_is_the_same_answer(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # Replicas of one model with different engine seeds: the "weights" are the model's.
    first = await start_sim(model="llama", seed=1)
    second = await start_sim(model="llama", seed=2)
    whole = await _post(
        http,
        first.url + "/v1/chat/completions",
        {"model": "llama", "messages": MESSAGES, "max_tokens": 24},
    )
    text = whole["choices"][0]["message"]["content"]
    words = text.split(" ")
    for cut in (1, 5, 17):
        delivered = " ".join(words[:cut])
        rest = await _post(
            http,
            second.url + "/v1/chat/completions",
            {
                "model": "llama",
                "messages": [*MESSAGES, {"role": "assistant", "content": delivered}],
                "continue_final_message": True,
                "add_generation_prompt": False,
                "max_tokens": 24 - cut,
            },
        )
        assert delivered + rest["choices"][0]["message"]["content"] == text
        usage = rest["usage"]
        assert usage["prompt_tokens"] == whole["usage"]["prompt_tokens"] + cut
        assert usage["completion_tokens"] == 24 - cut


async def test_a_completion_continued_from_prompt_plus_text_is_the_same_completion(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    first = await start_sim(model="llama", seed=1)
    second = await start_sim(model="llama", seed=7)
    prompt = "Once upon a time"
    whole = await _post(
        http, first.url + "/v1/completions", {"model": "llama", "prompt": prompt, "max_tokens": 16}
    )
    text = whole["choices"][0]["text"]
    assert text.startswith(" ")  # a model continues "a time" with " word", not "word"
    cut = len(" ".join(text.split(" ")[:6]))  # the leading space and five words
    rest = await _post(
        http,
        second.url + "/v1/completions",
        {"model": "llama", "prompt": prompt + text[:cut], "max_tokens": 11},
    )
    assert text[:cut] + rest["choices"][0]["text"] == text


async def test_the_answer_depends_on_the_model_and_on_the_context() -> None:
    context = list(range(100, 140))
    llama = next_words(context, 30, weights_seed("llama"))
    assert llama == next_words(context, 30, weights_seed("llama"))
    assert llama != next_words(context, 30, weights_seed("qwen"))
    assert llama != next_words([*context, 7], 30, weights_seed("llama"))
    # Not stuck on one word: a 30-word answer uses many of the vocabulary's words.
    assert len(set(llama)) > 15
