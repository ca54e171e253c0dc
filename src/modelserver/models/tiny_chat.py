"""A tiny chat model with random weights, written as a llama GGUF from numpy alone.

It exists so a real llama.cpp engine can serve chat on any machine with no download: two
layers, hidden size 64, a byte-level BPE vocabulary of a few hundred tokens trained here on a
paragraph of text, and a ChatML template. Its answers are printable noise that runs until
`max_tokens` (it never picks its end token); what is real is the engine: tokenizer, template,
batching, sampling, streaming.

GGUF conventions followed (ggml-org/llama.cpp, gguf-py/gguf/constants.py as installed with
the `gguf` package, and src/llama-vocab.cpp):

- `general.architecture = "llama"`, hyperparameters under `llama.*`;
- tokenizer `tokenizer.ggml.model = "gpt2"` (byte-level BPE) needs `tokenizer.ggml.merges`,
  and `tokenizer.ggml.pre` must name a known pre-tokenizer: `"gpt-2"` (the spelling `"gpt2"`
  fails to load with "unknown pre-tokenizer type");
- special tokens are of type CONTROL so the chat template's `<|im_start|>` / `<|im_end|>`
  are parsed as single tokens, and `<|im_end|>` is the end-of-generation token.

The output is deterministic: the same generator version writes the same bytes.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

GENERATOR_VERSION = "tiny-chat/2"
"""Bumped whenever the bytes written change, so `models prepare` rewrites older files."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML, the format `<|im_start|>role\ncontent<|im_end|>\n`; llama.cpp recognises it and
# renders it with its Jinja engine.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The text the BPE merges are learned from: any English prose does; this one is about us.
_TRAINING_TEXT = (
    "The model server starts engines on the machines of a fleet, waits until each one "
    "answers, and restarts the ones that crash. The router sends every request to the best "
    "healthy worker of the model asked for, by live latency, load and prefix cache affinity, "
    "and retries elsewhere when a worker fails. The gateway speaks the same protocol as the "
    "engines, so any client that talks to one engine can talk to the whole fleet. This tiny "
    "model has random weights: it writes nonsense, quickly, on any computer, with no network."
)


@dataclass(frozen=True)
class TinyChatShape:
    """Hyperparameters of the tiny model (small enough to load in milliseconds)."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048
    n_merges: int = 128
    seed: int = 20261121


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (openai/gpt-2, encoder.py).

    Byte-level BPE vocabularies store each byte as one of these characters, so that every
    token is printable text; llama.cpp's BPE tokenizer undoes the same map.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Learn byte-level BPE merges from `text` (ties broken alphabetically: deterministic)."""
    byte_map = bytes_to_unicode()
    # GPT-2 style pre-tokenisation: a word keeps the space in front of it.
    words = re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", text)
    counts = Counter(tuple(byte_map[b] for b in word.encode("utf-8")) for word in words)
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in counts.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        counts = Counter({_apply_merge(symbols, best): n for symbols, n in counts.items()})
    return merges


def _apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def build_vocab(shape: TinyChatShape) -> tuple[list[str], list[int], list[str]]:
    """Tokens, their GGUF token types, and the merges, in id order: 256 bytes, merges, specials."""
    byte_map = bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    merges = learn_merges(_TRAINING_TEXT, shape.n_merges)
    known = set(tokens)
    for left, right in merges:
        if left + right not in known:
            tokens.append(left + right)
            known.add(left + right)
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    tokens.extend(SPECIAL_TOKENS)
    types.extend([int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS))
    return tokens, types, [f"{left} {right}" for left, right in merges]


def _printable_token(token: str, byte_map_inverse: dict[str, int]) -> bool:
    """True for tokens whose bytes are printable ASCII (or a space or newline)."""
    try:
        raw = bytes(byte_map_inverse[ch] for ch in token)
    except KeyError:
        return False
    return all(32 <= b < 127 or b == 10 for b in raw)


def write_tiny_chat(path: Path, shape: TinyChatShape | None = None) -> None:
    """Write the tiny chat GGUF to `path` (the caller makes the write atomic)."""
    shape = shape or TinyChatShape()
    tokens, types, merges = build_vocab(shape)
    n_vocab = len(tokens)
    head_dim = shape.n_embd // shape.n_head
    n_embd_kv = head_dim * shape.n_head_kv  # grouped-query attention: fewer K/V heads
    rng = np.random.default_rng(shape.seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        # numpy shape (out, in) like a torch Linear; gguf reverses it into ggml's order.
        values: np.ndarray = rng.standard_normal((rows, cols)) / np.sqrt(cols)
        return values.astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("modelserver tiny-chat (random weights)")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    endoftext, _im_start, im_end = (tokens.index(t) for t in SPECIAL_TOKENS)
    writer.add_bos_token_id(endoftext)
    writer.add_eos_token_id(im_end)
    writer.add_eot_token_id(im_end)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(n_vocab, shape.n_embd))
    for layer in range(shape.n_layer):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(shape.n_embd, np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"{prefix}.attn_k.weight", weight(n_embd_kv, shape.n_embd))
        writer.add_tensor(f"{prefix}.attn_v.weight", weight(n_embd_kv, shape.n_embd))
        writer.add_tensor(f"{prefix}.attn_output.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(shape.n_embd, np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(shape.n_embd, shape.n_ff))
    writer.add_tensor("output_norm.weight", np.ones(shape.n_embd, np.float32))
    writer.add_tensor("output.weight", _output_weight(rng, tokens, shape.n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _output_weight(rng: np.random.Generator, tokens: list[str], n_embd: int) -> np.ndarray:
    """The output projection, with zero rows for tokens the model should not emit.

    Random weights would otherwise emit stray bytes of multi-byte characters and control
    characters (invalid UTF-8 text) and the end token at random. A zero row gives logit 0,
    while the printable tokens' rows are scaled so their logits have a standard deviation of
    about 4: some hundred of them beat 0, so llama.cpp's default top-k (40) never lets a
    zero-row token through. The model therefore never ends an answer by itself: it stops at
    `max_tokens`, or when its slot's context is full, which makes answer lengths predictable.
    """
    inverse = {ch: b for b, ch in bytes_to_unicode().items()}
    scale = 4.0 / np.sqrt(n_embd)  # the final RMS norm leaves the hidden state at length √n_embd
    out = np.zeros((len(tokens), n_embd), np.float32)
    for index, token in enumerate(tokens):
        # Special tokens are spelled in printable characters too, but must stay silent.
        if token not in SPECIAL_TOKENS and _printable_token(token, inverse):
            out[index] = rng.standard_normal(n_embd) * scale
    return out
