"""The stand-in tokenizer: BPE-like density, stable ids, and chat prompts that extend."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelserver.sim.tokenizer import (
    BEGIN_OF_TEXT,
    END_OF_TURN,
    apply_chat_template,
    encode,
    output_ids,
    output_text,
)

# Two passages of plain English written for this test. Llama 3.1's own tokenizer
# (tokenizer.json of meta-llama/Llama-3.1-8B-Instruct, tokenizers 0.23) cuts NARRATIVE
# into 180 tokens (4.73 characters a token, 1.12 tokens a word) and TECHNICAL into 193
# (5.07 characters, 1.11 tokens a word).
NARRATIVE = (
    "The river had been rising for three days before anyone in the village thought to "
    "move the boats. By the time the baker's son ran down to the landing, the water was "
    "already lapping at the lowest step, brown and quick and full of branches that had "
    "come down from the hills. He stood there for a while, watching a whole tree turn "
    "slowly in the current, and then he went back up the lane to tell his father.\n\nNobody"
    " was surprised. The river flooded most springs, and the older people remembered "
    "years when it had reached the church door. What worried them this time was the "
    "bridge. It had been built in a hurry after the war, with timber that was never quite"
    " dry, and every winter another plank went soft. The council had promised to replace "
    "it, and then promised again, and in the end had done nothing but paint a warning "
    "sign and nail it to the railing."
)

TECHNICAL = (
    "Large language models are usually served by engines that batch requests "
    "continuously. Instead of waiting for a whole batch to finish, the scheduler adds new"
    " requests as soon as there is room and removes finished ones after every step. Each "
    "step is either a prefill, which computes the attention keys and values of a new "
    "prompt, or a decode, which produces one more token for every running request.\n\nA "
    "prefix cache keeps the keys and values of earlier prompts in memory. When a new "
    "request begins with text the engine has already seen, such as a long system prompt "
    "or the earlier turns of a conversation, those tokens are not computed again, and the"
    " time to the first token falls sharply. The cache has a fixed budget, so the engine "
    "evicts the entries that were used least recently when it needs room. A router that "
    "sends related requests to the same engine makes the cache far more useful, but it "
    "must also avoid piling every request onto one machine while the others sit idle.\n"
)
ENGLISH = TECHNICAL
LLAMA3_TOKENS = {"NARRATIVE": 180, "TECHNICAL": 193}


@pytest.mark.parametrize("name", ["NARRATIVE", "TECHNICAL"])
def test_english_costs_what_llama3_charges_within_ten_percent(name: str) -> None:
    text = {"NARRATIVE": NARRATIVE, "TECHNICAL": TECHNICAL}[name]
    tokens = len(encode(text))
    assert abs(tokens - LLAMA3_TOKENS[name]) <= 0.10 * LLAMA3_TOKENS[name], tokens
    assert 4.2 <= len(text) / tokens <= 5.6  # characters a token: BPE density, not 3
    assert 1.0 <= tokens / len(text.split()) <= 1.25  # tokens a word


def test_a_short_word_with_its_space_is_one_token_and_a_long_word_is_split() -> None:
    assert len(encode("hello world")) == 2  # as Llama 3: "hello", " world"
    assert len(encode(" the")) == 1
    assert len(encode(" requests")) == 1
    assert len(encode("Hello, world!")) == 4  # punctuation is a token of its own
    assert len(encode("internationalization")) > 2
    assert len(encode("1234567")) == 3  # digits go three to a token


def test_same_text_same_ids_in_another_process() -> None:
    code = f"from modelserver.sim.tokenizer import encode; print(encode({ENGLISH!r}))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == str(encode(ENGLISH))


def test_different_words_get_different_ids() -> None:
    assert encode("hello world") != encode("hello there")
    assert encode("hello world")[0] == encode("hello there")[0]


def test_generated_text_reencodes_to_the_generated_ids() -> None:
    words = [0, 5, 17, 3, 99, 42]
    assert encode(output_text(words)) == output_ids(words)


def test_next_turn_prompt_extends_previous_prompt_and_answer() -> None:
    turn1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    prompt1 = apply_chat_template(turn1)
    answer_words = [7, 8, 9, 10]
    answer = output_text(answer_words)
    turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "More"}]
    prompt2 = apply_chat_template(turn2)
    grown = prompt1 + output_ids(answer_words) + [END_OF_TURN]
    assert prompt2[: len(grown)] == grown
    assert prompt1[0] == BEGIN_OF_TEXT


def test_content_parts_count_as_text() -> None:
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    assert apply_chat_template([{"role": "user", "content": parts}]) == apply_chat_template(
        [{"role": "user", "content": "Hi there"}]
    )
