from modelserver.config import BreakerConfig
from modelserver.routing.breaker import BreakerState, CircuitBreaker

from .helpers import FakeClock


def make(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerConfig(failure_threshold=3, success_threshold=2, cooldown_s=10), clock
    )


def test_opens_after_consecutive_failures_only() -> None:
    breaker = make(FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the run
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows_request()


def test_half_open_after_cooldown_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.2)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allows_request()
    breaker.on_request_start()
    assert not breaker.allows_request()  # one trial at a time


def test_trial_successes_close_and_a_trial_failure_reopens() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    breaker.on_request_start()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN  # cool-down starts again
    clock.advance(10)
    breaker.on_request_start()
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows_request()
    breaker.on_request_start()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_released_trial_frees_the_half_open_slot() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    breaker.on_request_start()
    breaker.release_trial()
    assert breaker.allows_request()
