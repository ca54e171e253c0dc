"""The gateway fuzzed from its own OpenAPI description (schemathesis 4), with auth, in front of
simulated engines: no 500 from the gateway's own code, every error in OpenAI's shape, no hang.

Schemathesis generates valid and invalid requests for every operation of `/openapi.json`
(positive and negative modes); the example count is bounded so the run stays short. Admin
operations are fuzzed too (the fuzzer found that `POST /admin/workers` took any string as a
worker URL; the router now refuses what is not http(s)://HOST:PORT).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from modelserver.gateway.openapi import openapi_document
from tests.reliability.loop_thread import ADMIN_KEY, GatewayThread

MAX_EXAMPLES = 40
TIMEOUT_S = 30.0
"""A request the gateway does not answer within this fails the test (a hang, not slowness:
the router's own deadline here is 10 s)."""



def _with_served_models(document: dict[str, Any]) -> dict[str, Any]:
    """The gateway's description with `model` narrowed to the models this fleet serves, so
    valid examples get past the model lookup and reach the engines (invalid ones still try
    every other string)."""
    narrowed = copy.deepcopy(document)
    for path, model in (
        ("/v1/chat/completions", "chat"), ("/v1/completions", "chat"), ("/v1/embeddings", "emb")
    ):
        body = narrowed["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body["schema"]["properties"]["model"] = {"type": "string", "enum": [model]}
    return narrowed


schema = schemathesis.openapi.from_dict(_with_served_models(openapi_document()))
schema.config.generation.update(modes=list(GenerationMode), max_examples=MAX_EXAMPLES)

RUN: dict[str, int] = {"examples": 0, "5xx": 0}
SEEN: dict[int, int] = {}
"""How many answers of each status the fuzzer got (printed for the report)."""


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread() as stack:
        yield stack


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def assert_openai_error(response: schemathesis.Response) -> None:
    try:
        body: Any = response.json()
    except ValueError:
        raise AssertionError(f"HTTP {response.status_code} with a body that is not JSON:"
                             f" {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert isinstance(error.get("type"), str), body
    assert "param" in error and "code" in error, body


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,  # the same examples on every run: a failure here is reproducible
    database=None,  # nothing written into the work tree
)
def test_fuzzed_requests_get_no_500_and_errors_in_openai_shape(
    case: schemathesis.Case, gateway: GatewayThread, http: requests.Session
) -> None:
    # The admin key is good for /v1 too, so every operation passes auth and reaches its code.
    response = case.call(
        base_url=gateway.url, session=http, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=TIMEOUT_S,
    )
    RUN["examples"] += 1
    SEEN[response.status_code] = SEEN.get(response.status_code, 0) + 1
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code != 500, response.text
    if response.status_code >= 500:
        RUN["5xx"] += 1
    if response.status_code >= 400:
        assert_openai_error(response)


def test_the_fuzzer_ran_every_operation() -> None:
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 9
    print(f"fuzz: {RUN['examples']} requests over {len(operations)} operations,"
          f" {RUN['5xx']} answered 5xx (none 500); by status: {dict(sorted(SEEN.items()))}")
    assert RUN["examples"] >= len(operations)




def test_an_embedding_request_asking_to_stream_is_answered_whole(
    gateway: GatewayThread, http: requests.Session
) -> None:
    # Found by the fuzzer: engines answer embeddings whole even with `stream: true`; that
    # JSON answer is the answer, not a stream that went wrong.
    response = http.post(
        gateway.url + "/v1/embeddings",
        json={"model": "emb", "input": "hello", "stream": True},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["embedding"]


def test_the_admin_api_refuses_a_worker_url_that_is_not_one(
    gateway: GatewayThread, http: requests.Session
) -> None:
    for junk in ("\x95", "ftp://host:1", "http://", "http://host:port", "http://a b:1"):
        response = http.post(
            gateway.url + "/admin/workers",
            json={"model": "chat", "url": junk},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=TIMEOUT_S,
        )
        assert response.status_code == 400, (junk, response.text)
        assert "not a worker URL" in response.json()["error"]["message"]
    assert len(gateway.router.workers("chat")) == 2
