"""ModelServer: launch, route and measure a fleet of self-hosted LLM engines."""

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
    "DeadlineExceeded",
    "EngineRejected",
    "Fleet",
    "FleetFileError",
    "LaunchError",
    "ModelServerError",
    "NoHealthyWorker",
    "RequestError",
    "UnknownModel",
    "WorkerError",
    "WorkerSpec",
    "__version__",
    "load_fleet",
]
