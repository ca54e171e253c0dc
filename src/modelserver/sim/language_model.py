"""The simulated model's words: an autoregressive stand-in for a language model.

Each output word is a function of the whole context before it (the prompt's token ids and
the words generated so far) and of the model's weights, which here are one number derived
from the model's name: every replica of one model holds the same "weights", whatever its
engine seed, speed or faults. Like a real model at temperature 0, a greedy answer resumed
on another replica from any point (the prompt plus the text already delivered) continues
word for word as the uninterrupted one would.

The context is folded into a running CRC-32 over the token ids (8 bytes each), so one
pass over the prompt and then 8 bytes per generated word; a prompt's state is the same
whether its ids came in one array or one by one. Two properties of the tokenizer make the
resumed context equal to the uninterrupted one: `encode(output_text(w))` gives back
`output_ids(w)`, and a word generated after text that does not end in white space carries
its leading space (`spaced_first`), as " word" is one token.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Sequence

from modelserver.sim.tokenizer import OUTPUT_FIRST_IDS, OUTPUT_NEXT_IDS, OUTPUT_WORDS

_FIRST_BYTES = tuple(array("l", [i]).tobytes() for i in OUTPUT_FIRST_IDS)
_NEXT_BYTES = tuple(array("l", [i]).tobytes() for i in OUTPUT_NEXT_IDS)
_WORDS = len(OUTPUT_WORDS)


def weights_seed(model: str) -> int:
    """The "weights" of the model named `model`: the same in every replica of it."""
    return zlib.crc32(model.encode())


def next_words(
    context: Sequence[int], count: int, weights: int, *, spaced_first: bool = False
) -> list[int]:
    """The `count` words (indices into OUTPUT_WORDS) a greedy decode appends to `context`.

    `spaced_first`: the context ends inside a text (a continued assistant message, a
    completion prompt ending in a word), so the first word carries its leading space too.
    """
    state = zlib.crc32(array("l", context).tobytes(), weights)
    words: list[int] = []
    for i in range(count):
        # Multiplicative hashing spreads the CRC's state over the vocabulary evenly.
        word = ((state * 0x9E3779B1) & 0xFFFFFFFF) * _WORDS >> 32
        words.append(word)
        state = zlib.crc32((_NEXT_BYTES if i or spaced_first else _FIRST_BYTES)[word], state)
    return words


def continues_text(text: str) -> bool:
    """True if a word generated right after `text` starts with a space."""
    return bool(text) and not text[-1].isspace()
