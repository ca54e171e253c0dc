"""The one exception tree of ModelServer.

    ModelServerError
    ├── FleetFileError            the fleet file is missing, unreadable or invalid
    ├── LaunchError               an engine could not be placed, started or stopped
    │   ├── NoGpuInventory        NVML is not there, but a GPU backend was asked for
    │   └── PlacementError        a replica cannot get the GPUs or port it needs
    ├── UnknownPolicy             no routing policy by that name; lists the valid ones
    ├── BenchError                a benchmark cannot run as asked (bad workload, flag, peer)
    ├── ModelPrepareError         `models prepare` cannot write the local CPU models; says the fix
    └── RequestError              a request to the fleet did not succeed
        ├── UnknownModel          the fleet serves no model by that name (not retryable)
        ├── WrongModelKind        e.g. a chat request to an embedding model (not retryable)
        ├── NoHealthyWorker       every worker of the model is out; says why each one is
        ├── DeadlineExceeded      the per-request deadline or attempt budget ran out
        ├── ClientClosed          the client (its router) was closed before or during the call
        └── WorkerError           one attempt on one worker failed
            ├── RetryableWorkerError    refused, reset, timeout, 401/403, 408, 429, 5xx: elsewhere
            │   ├── WorkerUnreachable   connection refused or reset
            │   │   └── WorkerRefused   no connection at all: nothing listens (taken out at once)
            │   ├── WorkerTimeout       no answer within the attempt timeout
            │   ├── WorkerBadAnswer     2xx, but not JSON (or a stream that is not SSE)
            │   └── WorkerAuthRejected  401/403: the engine refused the worker's configured key
            ├── EngineRejected          4xx other than 401/403/408/429: the request is wrong
            └── StreamBroken            a stream broke after content reached the caller and
                                        could not be resumed; says why

A caller catches `RequestError` for "this request failed" and `ModelServerError`
for anything of ours. Only `RetryableWorkerError` sends a request to another worker.
"""

from __future__ import annotations


class ModelServerError(Exception):
    """Base of every error ModelServer raises on purpose."""


class FleetFileError(ModelServerError):
    """The fleet file cannot be used; the message names the file, the key and what is allowed."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if len(problems) == 1:
            message = f"{path}: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"{path}: {len(problems)} problems:\n{lines}"
        super().__init__(message)


class LaunchError(ModelServerError):
    """An engine could not be placed, started or stopped."""


class NoGpuInventory(LaunchError):
    """NVML (the NVIDIA driver library) is not available on this machine."""


class PlacementError(LaunchError):
    """A replica cannot be given the GPUs or the port it needs."""


class UnknownPolicy(ModelServerError):
    """No routing policy is registered under the name asked for."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        valid = ", ".join(self.known)
        super().__init__(f"unknown routing policy {name!r}; valid policies: {valid}")


class ModelPrepareError(ModelServerError):
    """The local CPU models cannot be written: a package is missing (the message gives the pip
    command) or the models folder cannot be written."""


class BenchError(ModelServerError):
    """`modelserver bench` cannot run as asked: an unknown workload or contender, a bad flag,
    a peer router that does not start."""


class RequestError(ModelServerError):
    """A request sent to the fleet did not succeed."""


class UnknownModel(RequestError):
    """The fleet serves no model by the name asked for."""

    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        self.known = sorted(known)
        names = ", ".join(repr(k) for k in self.known) or "none"
        super().__init__(f"unknown model {model!r}; the fleet serves: {names}")


class WrongModelKind(RequestError):
    """The request does not fit the model's kind (a chat request to an embedding model)."""

    def __init__(self, model: str, kind: str, wanted: str) -> None:
        self.model = model
        self.kind = kind
        self.wanted = wanted
        super().__init__(
            f"model {model!r} is {_a(kind)} {kind} model;"
            f" it cannot serve {_a(wanted)} {wanted} request"
        )


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class NoHealthyWorker(RequestError):
    """Every worker of a model is out of rotation; `reasons` maps each worker URL to why."""

    def __init__(self, model: str, reasons: dict[str, str]) -> None:
        self.model = model
        self.reasons = dict(reasons)
        detail = "; ".join(f"{url}: {why}" for url, why in sorted(self.reasons.items()))
        super().__init__(f"no healthy worker for model {model!r} ({detail or 'no workers'})")


class DeadlineExceeded(RequestError):
    """The request's deadline or attempt budget ran out before any worker answered."""

    def __init__(
        self,
        message: str,
        attempts: list[str] | None = None,
        timed_out: bool = True,
        statuses: list[int | None] | None = None,
    ) -> None:
        self.attempts = list(attempts or [])
        self.statuses = list(statuses or [])
        """The engine's HTTP status of each failed attempt (None: no answer), in order."""
        self.timed_out = timed_out
        """True if the deadline passed; False if every allowed attempt failed first."""
        super().__init__(message)


class ClientClosed(RequestError):
    """The client, or the router under it, was closed: the call came after `close()`, or
    was still running when `close()` stopped it. Nothing is held against any worker."""


class WorkerError(RequestError):
    """One attempt on one worker failed."""

    retryable = False

    def __init__(self, worker: str, message: str, status: int | None = None) -> None:
        self.worker = worker
        self.status = status
        self.reason = message
        """What went wrong, without the worker URL that prefixes `str(self)`."""
        super().__init__(f"{worker}: {message}")


class RetryableWorkerError(WorkerError):
    """The worker failed in a way another worker may not: connection, timeout, 408, 429, 5xx."""

    retryable = True


class WorkerUnreachable(RetryableWorkerError):
    """Connection refused, reset or closed before a full answer."""


class WorkerRefused(WorkerUnreachable):
    """No connection could be made (refused, no route): nothing listens at the worker's
    address, so the router takes it out at once, until a health probe answers again."""


class WorkerTimeout(RetryableWorkerError):
    """The worker did not answer within the attempt timeout."""


class WorkerBadAnswer(RetryableWorkerError):
    """The worker said 2xx but sent something the request cannot use: a body that is not
    JSON, or a stream that does not start as server-sent events (an HTML error page from a
    proxy in front of it, a half-written body). Another worker may answer properly."""


class WorkerAuthRejected(RetryableWorkerError):
    """The engine answered 401 or 403 to the API key the router sends it (the fleet file's
    `api_key`, or the one given when the worker was added): that worker is misconfigured,
    the caller is not at fault. Tried elsewhere, and counted against the worker's circuit."""


class EngineRejected(WorkerError):
    """The engine refused the request itself (4xx other than 401/403/408/429); retrying
    cannot help."""

    def __init__(self, worker: str, status: int, message: str, body: object = None) -> None:
        self.body = body
        super().__init__(worker, f"HTTP {status}: {message}", status)


class StreamBroken(WorkerError):
    """A stream broke after some of its answer reached the caller, and was not resumed on
    another worker: the message gives the break, then why it was not resumed (the request
    cannot be continued exactly, the resumes allowed ran out, or no worker was left)."""


def is_retryable_status(status: int) -> bool:
    """HTTP statuses worth retrying on another worker."""
    return status in (408, 429) or status >= 500
