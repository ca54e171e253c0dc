"""SGLang's gateway as it is today, the Shepherd Model Gateway (`smg` 1.13.0), as a real
process in front of the engines.

Started as users start it: `smg launch --host 127.0.0.1 --port P --worker-urls URL...
--policy P` (run as `python -m smg`, the `smg` wheel's own CLI; flags as `smg launch --help`
lists them in 1.13.0). Every setting that decides routing (cache threshold, balance
thresholds, tree size, load monitoring), retries, circuit breaking and health is left at its
default; only what must differ on a shared machine or in this benchmark is set, as for the
older `sglang-router` contender beside it: its Prometheus listener on 127.0.0.1 and a free
port, warn-level logs, a 1 s worker start-up check interval, and its request timeout set to
the benchmark's per-attempt timeout. It is up when `GET /workers` lists every worker (the
gateway answers `/health` before its workers are registered).

The gateway process's CPU time counts as this contender's client-side CPU.
"""

from __future__ import annotations

import importlib.util
import sys

from modelserver.bench.contenders.sglang_router import SglangRouterContender, router_arguments
from modelserver.errors import BenchError

# The four policies the benchmark runs by default (smg `--policy` accepts more:
# random, round_robin, passthrough, manual, consistent_hashing); round_robin is there for
# the reproduction of SGLang's published cache-aware vs round-robin result.
POLICIES = ("cache_aware", "prefix_hash", "least_load", "power_of_two", "round_robin")


def smg_program() -> list[str]:
    """`python -m smg`, the smg wheel's own CLI (its `__main__`), not the `smg` console
    script: sglang-router 0.3.2, installed beside it as history, ships a console script of
    the same name, and in a fresh environment whichever wheel pip writes last owns it (the
    old router's `--policy` has no prefix_hash or least_load)."""
    if importlib.util.find_spec("smg") is None:
        raise BenchError("smg is not installed (pip install '.[bench]')")
    return [sys.executable, "-m", "smg"]


def smg_command(policy: str, port: int, metrics_port: int, urls: list[str],
                attempt_timeout_s: float) -> list[str]:
    return [*smg_program(), "launch",
            *router_arguments(policy, port, metrics_port, urls, attempt_timeout_s)]


class SmgContender(SglangRouterContender):
    family = "smg"
    policies = POLICIES
    label = "smg gateway"

    def command(self, port: int, metrics_port: int, urls: list[str],
                attempt_timeout_s: float) -> list[str]:
        return smg_command(self.policy, port, metrics_port, urls, attempt_timeout_s)
