"""The workers a router starts with: from a fleet file, or from a plain dict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerEntry:
    """A worker to route to: what the fleet file, a dict or the gateway's admin API gives."""

    model: str
    url: str
    kind: str = "chat"
    name: str | None = None
    api_key: str | None = None
    backend: str | None = None
    """"sglang", "vllm", "llamacpp" or "sim", when known (how a broken stream is resumed)."""


def entries_from_mapping(mapping: Mapping[str, Any]) -> list[WorkerEntry]:
    """`{model: [url, ...]}` or `{model: {"kind": "embedding", "urls": [...]}}` -> entries
    (`"api_key"` and `"backend"` may be given too)."""
    entries: list[WorkerEntry] = []
    for model, value in mapping.items():
        kind = "chat"
        api_key = None
        backend = None
        if isinstance(value, Mapping):
            unknown = set(value) - {"kind", "urls", "api_key", "backend"}
            if unknown:
                raise ValueError(
                    f"fleet[{model!r}]: unknown keys {sorted(unknown)}; allowed: kind, urls,"
                    " api_key, backend"
                )
            kind = str(value.get("kind", "chat"))
            api_key = value.get("api_key")
            backend = value.get("backend")
            urls = value.get("urls", [])
        else:
            urls = value
        if isinstance(urls, str) or not isinstance(urls, Iterable):
            raise ValueError(f"fleet[{model!r}]: expected a list of URLs (got {urls!r})")
        if kind not in ("chat", "embedding"):
            raise ValueError(f"fleet[{model!r}].kind: must be 'chat' or 'embedding' (got {kind!r})")
        urls = list(urls)
        if not urls:
            raise ValueError(f"fleet[{model!r}]: no URLs")
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"fleet[{model!r}]: {url!r} is not an http(s) URL")
            entries.append(WorkerEntry(model, url, kind, api_key=api_key, backend=backend))
    return entries
