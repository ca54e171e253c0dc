"""Our MiniLM GGUF, served by llama.cpp, gives the embeddings sentence-transformers gives.

The reference vectors in tests/data/minilm_reference.json were computed once by
sentence-transformers on PyTorch from the same packaged weights (how: the file's "about"
and tests/data/make_minilm_reference.py). llama.cpp and our converter played no part in
them, so a wrong tensor name, a transposed weight, the wrong pooling or a mangled
vocabulary would all show here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelserver.models import PreparedModels

from .runner_process import Runner, start_runner

REFERENCE = Path(__file__).parent.parent / "data" / "minilm_reference.json"
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(REFERENCE.read_text(encoding="utf-8"))
    return document


def embed(runner: Runner, texts: list[str]) -> np.ndarray:
    answer = runner.post_json("/v1/embeddings", {"model": "minilm", "input": texts})
    ordered = sorted(answer["data"], key=lambda item: item["index"])
    return np.array([item["embedding"] for item in ordered], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_llama_cpp_embeddings_match_the_sentence_transformers_reference(
    embedding_runner: Runner, reference: dict[str, Any]
) -> None:
    texts = [item["text"] for item in reference["items"]]
    expected = np.array([item["embedding"] for item in reference["items"]])

    got = embed(embedding_runner, texts)

    assert got.shape == expected.shape == (len(texts), reference["dimensions"])
    similarities = {text: cosine(g, e) for text, g, e in zip(texts, got, expected, strict=True)}
    assert min(similarities.values()) >= MIN_COSINE, similarities


def test_one_text_at_a_time_gives_the_same_vector_as_a_batch(
    embedding_runner: Runner, reference: dict[str, Any]
) -> None:
    item = reference["items"][2]

    alone = embed(embedding_runner, [item["text"]])[0]

    assert cosine(alone, np.array(item["embedding"])) >= MIN_COSINE


def test_a_sentence_is_closer_to_its_paraphrase_than_to_an_unrelated_one(
    embedding_runner: Runner,
) -> None:
    guitar, guitar_paraphrase, stocks, password, password_paraphrase = embed(
        embedding_runner,
        [
            "A man is playing a guitar on stage.",
            "Someone performs music with a guitar in front of an audience.",
            "The stock market fell sharply this morning.",
            "How do I reset my password?",
            "I forgot my password and need to change it.",
        ],
    )

    assert cosine(guitar, guitar_paraphrase) > cosine(guitar, stocks) + 0.3
    assert cosine(password, password_paraphrase) > cosine(password, stocks) + 0.3
    assert cosine(password, password_paraphrase) > cosine(password, guitar) + 0.3


def test_the_reference_tells_a_wrongly_served_model_apart(
    prepared: PreparedModels, reference: dict[str, Any], tmp_path: Path
) -> None:
    """The same weights with CLS instead of mean pooling must fail the check above."""
    runner = start_runner(
        ["--model", str(prepared.embedding_path), "--embedding", "--pooling", "cls"],
        tmp_path / "runner.log",
    )
    try:
        got = embed(runner, [item["text"] for item in reference["items"]])
    finally:
        runner.stop()

    expected = np.array([item["embedding"] for item in reference["items"]])
    assert max(cosine(g, e) for g, e in zip(got, expected, strict=True)) < MIN_COSINE
