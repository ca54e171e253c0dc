"""Reading engines' answers and naming failures: small helpers of the request path."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from modelserver.errors import DeadlineExceeded, WorkerBadAnswer, WorkerError
from modelserver.routing.retry import AttemptBudget

log = logging.getLogger("modelserver.routing.router")


def json_answer(url: str, headers: Mapping[str, str], data: bytes) -> Any:
    """The parsed body of a 2xx answer; a body that is not JSON is the worker's failure
    (every route the router forwards answers JSON), so the request goes elsewhere."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise WorkerBadAnswer(
            url, f"answered HTTP 200 with {shown(headers, data)}, which is not JSON"
        ) from None


def shown(headers: Mapping[str, str], data: bytes) -> str:
    kind = headers.get("content-type") or "no content type"
    text = data[:80].decode("utf-8", "replace")
    return f"{kind} {text!r}" if data else f"{kind} and an empty body"


def completion_tokens(parsed: Any) -> int | None:
    if isinstance(parsed, dict):
        usage = parsed.get("usage")
        if isinstance(usage, dict):
            tokens = usage.get("completion_tokens")
            if isinstance(tokens, int):
                return tokens
    return None


def deadline_error(model: str, budget: AttemptBudget) -> DeadlineExceeded:
    exhausted = len(budget.attempts) >= budget.max_attempts
    reason = (
        f"{len(budget.attempts)} attempts failed" if exhausted else "the request deadline passed"
    )
    detail = "; ".join(budget.attempts) or "no attempt finished"
    return DeadlineExceeded(
        f"model {model!r}: {reason} ({detail})",
        budget.attempts,
        timed_out=not exhausted,
        statuses=budget.statuses,
    )


def short(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, WorkerError) else str(exc)


def safely(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("router observer %r failed", hook)
