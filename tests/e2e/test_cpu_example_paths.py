"""examples/cpu.toml runs after `modelserver models prepare` with no option: its model paths
are the files that command writes into its default folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

from modelserver.config import load_fleet
from modelserver.models.prepare import CHAT_FILE, EMBEDDING_FILE, default_models_dir

from .conftest import EXAMPLE, EXAMPLE_MODELS_DIR

FILE_BY_KIND = {"chat": CHAT_FILE, "embedding": EMBEDDING_FILE}


def test_the_cpu_example_names_the_files_models_prepare_writes_by_default() -> None:
    models = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["models"]
    assert {model["kind"] for model in models} == set(FILE_BY_KIND)
    for model in models:
        path = Path(model["path"]).expanduser()
        assert path == default_models_dir() / FILE_BY_KIND[model["kind"]], model["name"]
    # As the fleet file loader reads them too (what `up` checks and starts).
    for model in load_fleet(EXAMPLE).models:
        assert Path(model.path).expanduser().parent == default_models_dir(), model.name


def test_the_e2e_copy_rewrites_the_folder_the_example_really_uses() -> None:
    assert Path(EXAMPLE_MODELS_DIR).expanduser() == default_models_dir()
