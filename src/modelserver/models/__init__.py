"""Real models for the CPU engine (llama.cpp), written locally from installed packages.

`prepare_models()` writes a tiny random-weights chat model and the real all-MiniLM-L6-v2
embedding model as GGUF files into a models folder, with no download. The modules that write
them (`tiny_chat`, `minilm`) need the `cpu` extra and are imported only when used.
"""

from modelserver.models.prepare import (
    CHAT_FILE,
    EMBEDDING_FILE,
    PreparedFile,
    PreparedModels,
    default_models_dir,
    prepare_models,
)

__all__ = [
    "CHAT_FILE",
    "EMBEDDING_FILE",
    "PreparedFile",
    "PreparedModels",
    "default_models_dir",
    "prepare_models",
]
