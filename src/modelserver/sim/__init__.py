"""A simulated SGLang engine: SGLang's HTTP surface, timing from a model of a GPU engine
(continuous batching over a radix prefix cache), and faults on demand. See docs/SIMULATOR.md.
"""

from modelserver.sim.config import SimConfig
from modelserver.sim.faults import Faults, FaultSpecError, parse_faults
from modelserver.sim.server import SimServer
from modelserver.sim.thread import SimThread

__all__ = ["FaultSpecError", "Faults", "SimConfig", "SimServer", "SimThread", "parse_faults"]
