"""SGLang's published router benchmark on the simulated engine model alone, in virtual time.

    .venv/bin/python bench/published_router_virtual.py [--gpu a100-80gb ...]

The `generated-shared-prefix` run of sgl-project/sglang PR #2170 (64 groups x 16 prompts,
2,054 shared + 133 own prompt tokens with Llama 3's chat template, 256 output tokens, all
1,024 requests at once, 8 workers), without HTTP or a router process: round-robin sends the
i-th request of the shuffled list to engine i mod 8, ideal cache-aware sends group g to
engine g mod 8. Each engine runs on its own virtual clock (seconds of GPU time in
milliseconds of CPU), so the figures are the engine model's, free of this machine's load.
Prints the time to the last answer, total (prompt + output) tokens per second as
`bench_serving` counts them, the hit rate, and the tokens evicted and requests retracted.
"""

from __future__ import annotations

import argparse
import random

from modelserver.sim.engine import Engine, Request, SchedulerConfig, VirtualClock, drive_virtual
from modelserver.sim.perf import GPUS, PerfModel, chunked_prefill_size, kv_pool_tokens

GROUPS, PER_GROUP, SHARED, OWN, OUTPUT, WORKERS = 64, 16, 2054, 133, 256, 8


def workload(seed: int = 0) -> list[tuple[int, list[int]]]:
    rnd = random.Random(seed)
    requests = []
    for group in range(GROUPS):
        prefix = [rnd.randrange(1, 10**9) for _ in range(SHARED)]
        for _ in range(PER_GROUP):
            requests.append((group, prefix + [rnd.randrange(1, 10**9) for _ in range(OWN)]))
    rnd.shuffle(requests)
    return requests


def run(gpu_name: str, policy: str, max_running: int = 256) -> dict[str, float]:
    gpu = GPUS[gpu_name]
    scheduler = SchedulerConfig(chunked_prefill_size=chunked_prefill_size(gpu))
    engines = [Engine(PerfModel(1.0, gpu), max_running, kv_pool_tokens(gpu), scheduler)
               for _ in range(WORKERS)]
    queues: list[list[Request]] = [[] for _ in range(WORKERS)]
    requests = workload()
    for i, (group, tokens) in enumerate(requests):
        worker = i % WORKERS if policy == "round_robin" else group % WORKERS
        queues[worker].append(Request(tokens, OUTPUT, arrival=0.0))
    end = 0.0
    for engine, queue in zip(engines, queues, strict=True):
        clock = VirtualClock()
        drive_virtual(engine, clock, queue)
        end = max(end, clock.now)
    done = [r for queue in queues for r in queue]
    return {
        "seconds": end,
        "tok_s": len(done) * (SHARED + OWN + OUTPUT) / end,
        "hit": sum(r.cached_tokens for r in done) / sum(r.prompt_tokens for r in done),
        "evicted": sum(e.cache.evicted_total for e in engines),
        "retracted": sum(e.totals.retracted_requests for e in engines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", nargs="+", default=["h100", "a100-80gb", "a100-40gb"],
                        choices=list(GPUS))
    args = parser.parse_args()
    for gpu in args.gpu:
        rr, ca = run(gpu, "round_robin"), run(gpu, "cache_aware")
        print(f"{gpu:10} round-robin {rr['seconds']:5.1f} s {rr['tok_s']:8.0f} tok/s "
              f"hit {rr['hit']:.0%} evicted {rr['evicted']:.0f} retracted {rr['retracted']:.0f}"
              f" | cache-aware {ca['seconds']:5.1f} s {ca['tok_s']:8.0f} tok/s "
              f"hit {ca['hit']:.0%} | {rr['seconds'] / ca['seconds']:.2f}x")


if __name__ == "__main__":
    main()
