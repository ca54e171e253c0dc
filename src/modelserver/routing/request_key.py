"""What a request looks like to the policies: its model, kind and rendered text.

Prefix affinity works on the whole conversation: every message, role and content, rendered
in order, so turn N+1 of a chat (turn N plus the reply plus a new question) extends turn
N's text and lands where turn N's prefix is cached. SGLang's router matches the text the
same way (raw characters, no tokenizer), see `sgl-model-gateway/src/policies/cache_aware.rs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/generate"})
EMBEDDING_PATHS = frozenset({"/v1/embeddings"})


@dataclass(slots=True)
class RequestInfo:
    model: str
    path: str
    text: str = ""
    """The rendered conversation / prompt; empty when the policy does not need it."""
    tenant: str = ""
    """Who asked (the admission queue charges its tokens served to it)."""
    body: Any = None
    """The parsed request body, when the policy reads the text (else None)."""


def kind_of_path(path: str) -> str | None:
    """ "chat" or "embedding" for the OpenAI routes, None for anything else (passed through)."""
    if path in EMBEDDING_PATHS:
        return "embedding"
    if path in CHAT_PATHS:
        return "chat"
    return None


def render_text(body: dict[str, Any]) -> str:
    """The text prefix affinity keys on: all messages, or the prompt, or the input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            parts.append(str(message.get("role", "")))
            parts.append("\x1f")
            parts.append(_content_text(message.get("content")))
            parts.append("\x1e")
        return "".join(parts)
    for key in ("prompt", "text", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and isinstance(value[0], str):
            return "\x1e".join(value)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
