"""Backends by name: sglang, vllm, llamacpp, sim (one module each)."""

from __future__ import annotations

from modelserver.backends.base import Backend, LaunchSpec
from modelserver.backends.llamacpp import LlamaCppBackend
from modelserver.backends.sglang import SGLangBackend
from modelserver.backends.sim import SimBackend
from modelserver.backends.vllm import VllmBackend
from modelserver.config import Fleet
from modelserver.errors import FleetFileError

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
