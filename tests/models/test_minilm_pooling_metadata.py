"""Our MiniLM GGUF says how it pools: the llamacpp backend passes no `--pooling`, so llama.cpp
takes `bert.pooling_type` from the file (and the reference-vector test shows it is right)."""

from __future__ import annotations

import gguf

from modelserver.models import PreparedModels


def test_the_minilm_gguf_records_mean_pooling(prepared: PreparedModels) -> None:
    reader = gguf.GGUFReader(str(prepared.embedding_path))
    field = reader.fields["bert.pooling_type"]
    assert int(field.parts[field.data[0]][0]) == gguf.PoolingType.MEAN
