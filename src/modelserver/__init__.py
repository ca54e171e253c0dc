"""ModelServer: launch, route and measure a fleet of self-hosted LLM engines."""

from modelserver.client import AsyncModelServer, Completion, MapItem, ModelServer, Usage
from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import (
    DeadlineExceeded,
    EngineRejected,
    FleetFileError,
    LaunchError,
    ModelServerError,
    NoHealthyWorker,
    RequestError,
    UnknownModel,
    WorkerError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncModelServer",
    "Completion",
    "DeadlineExceeded",
    "EngineRejected",
    "Fleet",
    "FleetFileError",
    "LaunchError",
    "MapItem",
    "ModelServer",
    "ModelServerError",
    "NoHealthyWorker",
    "RequestError",
    "UnknownModel",
    "Usage",
    "WorkerError",
    "WorkerSpec",
    "__version__",
    "load_fleet",
]
