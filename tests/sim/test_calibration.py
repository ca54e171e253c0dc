"""Calibration: the engine, run on its virtual clock, reproduces the figures perf.py cites.

`perf.CITED_FIGURES` holds the TTFT and decode rates the constants of `perf.py` are meant to
give for Llama-3.1-8B-Instruct (bf16) on one H100 SXM5 under SGLang, each worked out by hand
in perf.py from the model's shape and the GPU's datasheet. Here whole requests go through
the scheduler (admission, prefill, decode steps, growing context) and the figures are read
off the virtual clock: each must come out within 15%. See docs/SIMULATOR.md.
"""

from __future__ import annotations

import pytest

from modelserver.sim.engine import Engine, Request, VirtualClock, drive_virtual
from modelserver.sim.perf import CITED_FIGURES, KV_POOL_TOKENS, PerfModel

TOLERANCE = 0.15


def engine() -> Engine:
    return Engine(PerfModel(), max_running=256, cache_tokens=KV_POOL_TOKENS)


def prompt(seed: int, length: int) -> list[int]:
    return [seed * 1_000_003 + i for i in range(length)]


def within(measured: float, cited: float) -> bool:
    return abs(measured - cited) <= TOLERANCE * cited


def test_ttft_of_a_cold_2048_token_prompt() -> None:
    request = Request(prompt(1, 2048), 1, arrival=0.0)
    drive_virtual(engine(), VirtualClock(), [request])
    assert request.first_token_at is not None
    ttft = request.first_token_at - request.arrival
    assert within(ttft, CITED_FIGURES["ttft_2048_cold_s"]), ttft


def test_ttft_of_a_2048_token_prompt_with_1920_cached() -> None:
    sim = engine()
    clock = VirtualClock()
    shared = prompt(2, 1920)
    drive_virtual(sim, clock, [Request([*shared, *prompt(3, 128)], 1, arrival=0.0)])
    request = Request([*shared, *prompt(4, 128)], 1, arrival=clock.now)
    drive_virtual(sim, clock, [request])
    assert request.cached_tokens == 1920
    assert request.first_token_at is not None
    ttft = request.first_token_at - request.arrival
    assert within(ttft, CITED_FIGURES["ttft_2048_hit_1920_s"]), ttft


@pytest.mark.parametrize(
    ("batch", "figure"), [(1, "decode_tok_s_batch_1"), (128, "decode_tok_s_batch_128")]
)
def test_decode_rate(batch: int, figure: str) -> None:
    new_tokens = 129
    requests = [Request(prompt(10 + i, 1024), new_tokens, arrival=0.0) for i in range(batch)]
    drive_virtual(engine(), VirtualClock(), requests)
    decode_started = max(r.first_token_at or 0.0 for r in requests)  # all prefilled
    decode_ended = max(r.finished_at or 0.0 for r in requests)
    rate = batch * (new_tokens - 1) / (decode_ended - decode_started)
    assert within(rate, CITED_FIGURES[figure]), rate
