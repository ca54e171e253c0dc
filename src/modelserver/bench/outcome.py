"""What one benchmark request gave, and how to read it out of an OpenAI-shaped answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """One request as the benchmark saw it. Times are seconds on the driver's monotonic
    clock; `ttft_s` is set for streamed requests only (the first content chunk)."""

    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    worker: str | None = None
    text: str = ""
    error: str | None = None
    start_s: float = 0.0
    """When it was sent, relative to the contender's start."""
    session: int = 0
    turn: int = 0
    streamed: bool = False
    resume_gaps_s: list[float] = field(default_factory=list)
    """Streams resumed on another worker (routing/resume.py): per resume, the seconds
    between the last event before the break and the first one after it."""
    prefilled_again: int = 0
    """Tokens the resuming workers prefilled again: the prompt and the text delivered,
    less what the last of them found in its prefix cache."""


def usage_counts(usage: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens from an OpenAI `usage` object; SGLang puts cached
    tokens in `usage.prompt_tokens_details.cached_tokens`
    (sgl-project/sglang python/sglang/srt/entrypoints/openai/protocol.py, UsageInfo)."""
    if not usage:
        return 0, 0, 0
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(details.get("cached_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
