"""The stand-in tokenizer: BPE-like density, stable ids, and chat prompts that extend."""

from __future__ import annotations

import subprocess
import sys

from modelserver.sim.tokenizer import (
    BEGIN_OF_TEXT,
    END_OF_TURN,
    apply_chat_template,
    encode,
    output_ids,
    output_text,
)

ENGLISH = (
    "Large language models are served by engines that batch requests continuously and keep "
    "the attention keys and values of earlier prompts in a prefix cache, so a router that "
    "sends related requests to the same engine saves the cost of computing them again."
)


def test_english_costs_about_four_characters_per_token() -> None:
    ratio = len(ENGLISH) / len(encode(ENGLISH))
    assert 3.0 <= ratio <= 4.5


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
