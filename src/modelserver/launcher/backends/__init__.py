"""Backends by name: sglang, vllm, llamacpp, sim (one module each)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelserver.errors import FleetFileError
from modelserver.launcher.backends.base import Backend, LaunchSpec
from modelserver.launcher.backends.llamacpp import LlamaCppBackend
from modelserver.launcher.backends.sglang import SGLangBackend
from modelserver.launcher.backends.sim import SimBackend
from modelserver.launcher.backends.vllm import VllmBackend

if TYPE_CHECKING:  # types only: the fleet config imports this package to check options
    from modelserver.config import Fleet

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (SGLangBackend(), VllmBackend(), LlamaCppBackend(), SimBackend())
}


def backend_for(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


def check_options(fleet: Fleet) -> None:
    """Raise FleetFileError naming every `models[i].options.KEY` its backend does not take."""
    problems: list[str] = []
    for index, model in enumerate(fleet.models):
        problems += backend_for(model.backend).option_problems(index, model)
    if problems:
        raise FleetFileError(fleet.source, problems)


__all__ = ["BACKENDS", "Backend", "LaunchSpec", "backend_for", "check_options"]
