"""The router's workers, and the admin calls on them that the gateway exposes: list, drain,
add, remove (split from router.py; `Router` inherits them, so the names are `Router`'s)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from modelserver.config import RouterConfig
from modelserver.errors import WrongModelKind
from modelserver.routing.events import RouterObserver
from modelserver.routing.worker import Worker, WorkerStats

if TYPE_CHECKING:
    from modelserver.routing.policies import Policy

_JSON_HEADERS = {"content-type": "application/json"}


class WorkerSet:
    """The workers of every model, by model and by URL (state set up by `Router`)."""

    config: RouterConfig
    policy: Policy
    _clock: Callable[[], float]
    _observers: list[RouterObserver]
    _models: dict[str, list[Worker]]
    _kinds: dict[str, str]
    _by_url: dict[str, Worker]
    _headers: dict[str, dict[str, str]]
    _api_keys: dict[str, str]
    """model -> the engine API key its workers were given, for workers added later."""

    def models(self) -> dict[str, str]:
        """Every model the router knows, with its kind ("chat" or "embedding")."""
        return dict(self._kinds)

    def workers(self, model: str | None = None) -> list[WorkerStats]:
        """A snapshot of every worker (or those of `model`): status ("up" or why it is out),
        requests in flight, EWMA latency per token and TTFT, breaker state, counts."""
        now = self._clock()
        readmit = self.config.latency.readmit_after_s
        return [
            w.stats(now, readmit)
            for w in self._by_url.values()
            if model is None or w.model == model
        ]

    def worker(self, url: str) -> Worker:
        """The live worker object at `url` (KeyError naming the known URLs if none)."""
        try:
            return self._by_url[url.rstrip("/")]
        except KeyError:
            raise KeyError(f"no worker at {url!r}; workers: {sorted(self._by_url)}") from None

    def drain(self, url: str) -> None:
        """Send no new request to `url`; requests in flight there finish normally."""
        self.worker(url).draining = True

    def undrain(self, url: str) -> None:
        """Put a drained worker back into rotation."""
        self.worker(url).draining = False

    async def wait_drained(self, url: str, timeout_s: float) -> bool:
        """Wait until a drained worker has nothing in flight; False if `timeout_s` passed."""
        worker = self.worker(url)
        if worker.in_flight == 0:
            return True
        if worker.idle is None:
            worker.idle = asyncio.Event()
        worker.idle.clear()
        try:
            async with asyncio.timeout(timeout_s):
                while worker.in_flight > 0:  # set at 0; a new request may start before we wake
                    await worker.idle.wait()
                    worker.idle.clear()
        except TimeoutError:
            return False
        return True

    def add_worker(
        self,
        model: str,
        url: str,
        kind: str = "chat",
        *,
        name: str | None = None,
        api_key: str | None = None,
        backend: str | None = None,
    ) -> Worker:
        """Start routing `model` requests to `url` as well.

        `api_key` is the engine's own key, sent with every request to it; when not given,
        the worker gets the key the model's other workers were given (so a replica added at
        run time can talk to an engine that wants one). Raises ValueError for a URL that is
        not `http(s)://HOST:PORT` or is already routed to, and WrongModelKind if `model` is
        known with another kind.
        """
        if kind not in ("chat", "embedding"):
            raise ValueError(f"kind must be 'chat' or 'embedding' (got {kind!r})")
        check_url(url)
        known_kind = self._kinds.get(model)
        if known_kind is not None and known_kind != kind:
            raise WrongModelKind(model, known_kind, kind)
        if api_key is None:
            api_key = self._api_keys.get(model)
        worker = Worker(url, model, kind, self.config.breaker, self._clock, name, api_key, backend)
        if worker.url in self._by_url:
            raise ValueError(f"a worker at {worker.url} is already routed to")
        self._kinds[model] = kind
        self._models.setdefault(model, []).append(worker)
        self._by_url[worker.url] = worker
        headers = dict(_JSON_HEADERS)
        if api_key:
            self._api_keys.setdefault(model, api_key)
            headers["authorization"] = f"Bearer {api_key}"
        self._headers[worker.url] = headers
        return worker

    def remove_worker(self, url: str) -> None:
        """Stop routing to `url`. Requests in flight there finish normally."""
        worker = self.worker(url)
        del self._by_url[worker.url]
        del self._headers[worker.url]
        siblings = self._models[worker.model]
        siblings.remove(worker)
        if not siblings:
            del self._models[worker.model]
            del self._kinds[worker.model]
        self.policy.on_worker_removed(worker)

    def add_observer(self, observer: RouterObserver) -> None:
        self._observers.append(observer)


def check_url(url: str) -> None:
    """A worker URL is http(s)://host[:port] with nothing odd in it (the admin API takes
    URLs from outside; a junk one would only fail every request sent to it)."""
    problem = f"{url!r} is not a worker URL; expected http(s)://HOST:PORT"
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(problem)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    if parts.path.strip("/") or parts.query or parts.fragment:
        extra = url[len(f"{parts.scheme}://{parts.netloc}") :]
        raise ValueError(
            f"{problem}, without {extra!r}: the router adds each request's own path"
            " (/v1/chat/completions, /health, ...) to the worker URL"
        )
