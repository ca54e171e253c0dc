"""ModelServer: launch, route and measure a fleet of self-hosted LLM engines."""

import logging

from modelserver.client import AsyncModelServer, Completion, MapItem, ModelServer, Usage
from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import (
    ClientClosed,
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

# A library logs; the application decides where to. Without this, Python's last-resort
# handler would print the router's warnings on the caller's stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AsyncModelServer",
    "ClientClosed",
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
