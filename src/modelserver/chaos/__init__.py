"""Chaos runs: break simulated workers at random (seeded) while traffic flows, and measure.

`schedule` decides what to break next, `controller` does it (SIGKILL through the pid in the
launcher's state file, `POST /sim/faults` for hang, slow and 5xx), `load` sends requests
through the client and the gateway, `timeline` records everything with wall-clock times,
`figures` turns the record into the numbers docs/BENCHMARKS.md reports, and `run` ties them
together (`run_chaos`). bench/chaos.py runs it on a fleet it launches itself.
"""

from modelserver.chaos.figures import ChaosFigures, compute_figures
from modelserver.chaos.load import LoadSettings
from modelserver.chaos.run import ChaosOptions, run_chaos
from modelserver.chaos.schedule import Action, Chaos, ChaosSettings
from modelserver.chaos.timeline import Timeline

__all__ = [
    "Action",
    "Chaos",
    "ChaosFigures",
    "ChaosOptions",
    "ChaosSettings",
    "LoadSettings",
    "Timeline",
    "compute_figures",
    "run_chaos",
]
