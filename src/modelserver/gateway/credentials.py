"""API keys as they arrive: from an `Authorization: Bearer` header and from comma-separated
lists in environment variables. One reading for the gateway's auth and its tenant book."""

from __future__ import annotations


def split_keys(value: str | None) -> list[str]:
    """`"a, b,,c"` -> `["a", "b", "c"]`; None or empty -> `[]`."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of `Bearer <token>` (any case of `Bearer`), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    # aiohttp decodes header bytes that are not UTF-8 as lone surrogates; this gives those
    # bytes back, so a caller's junk is compared (and refused) rather than raising.
    return token.strip().encode("utf-8", "surrogateescape")
