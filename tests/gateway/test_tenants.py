"""Tenants on their own: keys to tenants, limits and Retry-After, usage kept across a
restart of the gateway. The wall clock is injected."""

from __future__ import annotations

from pathlib import Path

import orjson

from modelserver.config import GatewayConfig, parse_fleet
from modelserver.gateway.auth import KeyRing
from modelserver.gateway.tenants import USAGE_FILE, Lease, Refusal, TenantBook
from modelserver.routing.admission import Admission


class Wall:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gateway(*tenants: dict[str, object]) -> GatewayConfig:
    return parse_fleet({"gateway": {"tenants": list(tenants)}}).gateway


def book_of(config: GatewayConfig, wall: Wall, state_dir: Path | None = None,
            environ: dict[str, str] | None = None) -> TenantBook:
    return TenantBook(config, state_dir, 100, environ=environ or {}, wall_clock=wall)


def lease(book: TenantBook, key: str) -> Lease:
    got = book.admit(book.of(f"Bearer {key}"), 100)
    assert isinstance(got, Lease), got
    return got


def test_keys_name_their_tenant_and_other_keys_are_the_default_tenant() -> None:
    config = gateway(
        {"name": "lab", "keys": ["k-lab"], "priority": "interactive"},
        {"name": "eval", "keys_env": "EVAL_KEYS", "priority": 7, "weight": 2.0},
    )
    book = book_of(config, Wall(), environ={"EVAL_KEYS": "k-e1, k-e2"})
    assert book.of("Bearer k-lab").name == "lab" and book.of("Bearer k-lab").priority == 100
    assert book.of("Bearer k-e2").name == "eval" and book.of("Bearer k-e2").priority == 7
    assert book.of("Bearer other").name == "default"
    assert book.of(None).name == "default"
    # The gateway's auth takes tenant keys as API keys (an unknown key stays 401).
    ring = KeyRing.from_config(config, {"EVAL_KEYS": "k-e1"})
    assert ring.allows_api("Bearer k-e1") and ring.allows_api("Bearer k-lab")
    assert not ring.allows_api("Bearer other")


def test_over_the_request_rate_is_refused_with_the_seconds_to_wait() -> None:
    wall = Wall()
    book = book_of(gateway({"name": "t", "keys": ["k"], "requests_per_second": 2}), wall)
    for _ in range(2):
        lease(book, "k").close()
    refused = book.admit(book.of("Bearer k"), 100)
    assert isinstance(refused, Refusal)
    assert refused.reason == "requests_per_second" and refused.retry_after_s == 1
    wall.now += 0.5  # one request's worth refilled
    lease(book, "k").close()
    assert book.tenants["t"].rejections == {"requests_per_second": 1}


def test_tokens_per_minute_counts_prompt_and_completion_and_says_when_there_is_room() -> None:
    wall = Wall()
    book = book_of(gateway({"name": "t", "keys": ["k"], "tokens_per_minute": 600}), wall)
    first = lease(book, "k")
    first.answered({"usage": {"prompt_tokens": 500, "completion_tokens": 160}})
    first.close()  # 660 of 600: 60 in debt
    refused = book.admit(book.of("Bearer k"), 100)
    assert isinstance(refused, Refusal) and refused.reason == "tokens_per_minute"
    assert refused.retry_after_s == 7  # 61 tokens at 10 a second
    wall.now += 7
    lease(book, "k").close()


def test_a_streamed_answer_is_counted_from_its_usage_event_or_its_events() -> None:
    book = book_of(gateway({"name": "t", "keys": ["k"]}), Wall())
    with_usage = lease(book, "k")
    with_usage.chunk(b'data: {"choices":[]}\n\ndata: {"choices":[],"usage":')
    with_usage.chunk(b'{"prompt_tokens":11,"completion_tokens":3}}\n\ndata: [DONE]\n\n')
    with_usage.close()
    events_only = lease(book, "k")
    events_only.chunk(b"data: a\n\ndata: b\n\ndata: c\n\ndata: [DONE]\n\n")
    events_only.close()
    tenant = book.tenants["t"]
    assert tenant.completion_tokens == 3 + 3
    assert tenant.prompt_tokens == 11 + 25  # the second estimated from a 100-byte body


def test_requests_in_flight_past_the_limit_are_refused_until_one_ends() -> None:
    book = book_of(gateway({"name": "t", "keys": ["k"], "max_in_flight": 2}), Wall())
    held = [lease(book, "k"), lease(book, "k")]
    refused = book.admit(book.of("Bearer k"), 100)
    assert isinstance(refused, Refusal) and refused.reason == "max_in_flight"
    held.pop().close()
    lease(book, "k").close()


def test_a_restarted_gateway_does_not_hand_out_the_minute_of_tokens_again(
    tmp_path: Path,
) -> None:
    wall = Wall()
    config = gateway(
        {"name": "t", "keys": ["k"], "tokens_per_minute": 600, "requests_per_second": 1}
    )
    before = book_of(config, wall, tmp_path)
    used = lease(before, "k")
    used.answered({"usage": {"prompt_tokens": 400, "completion_tokens": 200}})
    used.close()
    before.flush(force=True)  # what the gateway does when it stops
    wall.now += 3  # restarted three seconds later: 30 tokens refilled, not 600
    after = book_of(config, wall, tmp_path)
    assert after.snapshot(Admission(parse_fleet({}).router, {}, wall))[0]["tokens_left"] == 30
    wall.now += 60
    again = book_of(config, wall, tmp_path)  # a full minute on: full again
    assert again.tenants["t"].tokens is not None
    assert again.tenants["t"].tokens.refill(wall.now) == 600


def test_keys_never_appear_in_the_usage_file_the_admin_view_or_a_repr(tmp_path: Path) -> None:
    wall = Wall()
    config = gateway({"name": "t", "keys": ["secret-key-1"], "tokens_per_minute": 60})
    book = book_of(config, wall, tmp_path)
    lease(book, "secret-key-1").close()
    book.flush(force=True)
    shown = orjson.dumps(book.snapshot(Admission(parse_fleet({}).router, {}, wall)))
    for text in (shown, (tmp_path / USAGE_FILE).read_bytes(), repr(config).encode()):
        assert b"secret-key-1" not in text


def test_an_unreadable_usage_file_starts_full_rather_than_failing(tmp_path: Path) -> None:
    (tmp_path / USAGE_FILE).write_text("{not json")
    config = gateway({"name": "t", "keys": ["k"], "tokens_per_minute": 60})
    book = book_of(config, Wall(), tmp_path)
    lease(book, "k").close()
