"""Deterministic embeddings: a signed, hashed bag of tokens, normalised to unit length.

Texts that share most of their tokens get nearby vectors and unrelated texts nearly
orthogonal ones, which is all a router or a cache test needs from an embedding model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DIMENSIONS = 384  # the width of the common small sentence-embedding models (e.g. MiniLM)


def embed(tokens: Sequence[int], dimensions: int = DIMENSIONS) -> list[float]:
    vector = [0.0] * dimensions
    for token in tokens:
        # Spread ids over dimensions with a multiplicative hash; the sign from another bit.
        mixed = (token * 2654435761) & 0xFFFFFFFF
        vector[mixed % dimensions] += 1.0 if mixed & 0x10000 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[0] = norm = 1.0
    return [v / norm for v in vector]
