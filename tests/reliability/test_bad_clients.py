"""Callers that behave badly, by hand: bodies cut off before their Content-Length, bodies
dribbled a byte at a time, streams read slowly, streams left mid-way again and again.

The gateway must answer what it can, never count a caller's departure as its own 500, keep
serving everyone else meanwhile, and leave no in-flight slot or engine request behind.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
from collections.abc import Iterator

import orjson
import pytest
import requests

from modelserver.gateway.app import CLIENT_CLOSED
from tests.reliability.loop_thread import API_KEY, GatewayThread
from tests.waiting import wait_until_sync

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"


@pytest.fixture
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread() as stack:
        yield stack


def chat_body(max_tokens: int = 4, stream: bool = False) -> bytes:
    return orjson.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": "hello there"}],
         "max_tokens": max_tokens, "stream": stream}
    )


def answers_by_status(gateway: GatewayThread) -> dict[str, float]:
    """The gateway's own count of the answers it gave, by status (from /metrics)."""
    text = requests.get(gateway.url + "/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for match in re.finditer(
        r'^modelserver_gateway_responses_total\{(.*?)\} (\S+)$', text, re.MULTILINE
    ):
        code = re.search(r'code="(\d+)"', match.group(1))
        assert code is not None
        counts[code.group(1)] = counts.get(code.group(1), 0.0) + float(match.group(2))
    return counts


def one_good_request(gateway: GatewayThread) -> None:
    response = requests.post(gateway.url + CHAT, data=chat_body(), headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text


def raw_head(gateway: GatewayThread, length: int, extra: str = "") -> bytes:
    return (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def connect(gateway: GatewayThread) -> socket.socket:
    assert gateway.gateway is not None
    sock = socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def no_slot_taken(gateway: GatewayThread) -> bool:
    return all(w.in_flight == 0 for w in gateway.router.workers())


def test_bodies_cut_off_before_their_content_length_are_no_500(gateway: GatewayThread) -> None:
    body = chat_body()
    cuts = [b"", body[:1], body[: len(body) // 2], body[:-1]]
    for cut in cuts:
        with connect(gateway) as sock:
            sock.sendall(raw_head(gateway, len(body)) + cut)
    wait_until_sync(
        lambda: answers_by_status(gateway).get(str(CLIENT_CLOSED), 0) == len(cuts),
        f"{len(cuts)} cut-off bodies counted as {CLIENT_CLOSED} (caller closed)",
    )
    statuses = answers_by_status(gateway)
    assert "500" not in statuses, statuses
    # Nothing half-read went on to an engine.
    assert sum(w.requests for w in gateway.router.workers()) == 0
    one_good_request(gateway)  # and the gateway serves on


def test_a_body_dribbled_a_byte_at_a_time_is_served_while_others_are(
    gateway: GatewayThread,
) -> None:
    body = chat_body()
    with connect(gateway) as sock:
        sock.sendall(raw_head(gateway, len(body), "Connection: close\r\n"))
        for index in range(len(body)):
            sock.sendall(body[index : index + 1])
            if index % 20 == 0:
                one_good_request(gateway)  # the slow caller holds up nobody
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert orjson.loads(payload)["choices"][0]["message"]["content"]


def test_a_stream_read_slowly_arrives_whole_while_others_are_served(
    gateway: GatewayThread,
) -> None:
    assert gateway.gateway is not None
    connection = http.client.HTTPConnection("127.0.0.1", gateway.gateway.port, timeout=30)
    try:
        connection.request("POST", CHAT, body=chat_body(max_tokens=64, stream=True),
                           headers={**AUTH, "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        received = b""
        reads = 0
        while piece := response.read(16):  # a few bytes at a time...
            received += piece
            reads += 1
            if reads % 25 == 0:
                one_good_request(gateway)  # ...with other work in between
    finally:
        connection.close()
    events = [e for e in received.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 1 + 64 + 1  # the role chunk, one per token, [DONE]
    last = orjson.loads(events[-2].removeprefix(b"data: "))
    assert last["choices"][0]["finish_reason"] == "length"
    wait_until_sync(lambda: no_slot_taken(gateway), "every in-flight slot free")


def test_callers_leaving_streams_again_and_again_leak_no_slot_and_no_engine_request(
    gateway: GatewayThread,
) -> None:
    assert gateway.gateway is not None
    leavers = 30
    for _ in range(leavers):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.gateway.port, timeout=30)
        try:
            # Minutes of tokens at the sim's speed: only a cancelled request ends early.
            connection.request("POST", CHAT, body=chat_body(max_tokens=30_000, stream=True),
                               headers={**AUTH, "Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            assert response.fp is not None
            assert response.fp.readline()  # the first chunk arrived: the engine is at work
        finally:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            connection.close()
    wait_until_sync(lambda: no_slot_taken(gateway), "the router's in-flight counts at 0")
    wait_until_sync(
        lambda: not any(sim.engine.running or sim.engine.queue for sim in gateway.sims),
        "every engine request cancelled",
    )
    served = sum(w.requests for w in gateway.router.workers())
    assert served == leavers
    statuses = answers_by_status(gateway)
    assert "500" not in statuses, statuses
    one_good_request(gateway)


@pytest.mark.parametrize("path", ["/v1/models", "/admin/workers"])
@pytest.mark.parametrize("token", [b"\xff", b"\xc3\x28", API_KEY.encode() + b"\xff"])
def test_a_key_that_is_not_utf8_is_refused_with_401_in_openai_shape(
    gateway: GatewayThread, path: str, token: bytes
) -> None:
    # Sent by hand: HTTP clients refuse to put such bytes in a header.
    with connect(gateway) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
            + b"Authorization: Bearer " + token + b"\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    error = orjson.loads(payload)["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert "500" not in answers_by_status(gateway)
