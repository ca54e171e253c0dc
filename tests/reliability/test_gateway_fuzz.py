"""The gateway fuzzed from the OpenAPI description it serves (schemathesis 4), with auth, in
front of simulated engines: no 500 from the gateway's own code, every error in OpenAI's shape,
no hang.

Schemathesis generates valid and invalid requests for every operation of the `/openapi.json`
the running gateway serves (positive and negative modes); the example count is bounded so the
run stays short. That description must list exactly the app's route table (HEAD aside), so a
new route cannot be left out of it, nor out of the fuzzing. Admin operations are fuzzed too
(the fuzzer found that `POST /admin/workers` took any string as a worker URL; the router now
refuses what is not http(s)://HOST:PORT).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

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


RUN: dict[str, int] = {"examples": 0, "5xx": 0}
SEEN: dict[int, int] = {}
"""How many answers of each status the fuzzer got (printed for the report)."""
FUZZED: set[tuple[str, str]] = set()
"""The (method, path) operations the fuzzer sent requests to."""


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread() as stack:
        yield stack


@pytest.fixture(scope="module")
def served_document(gateway: GatewayThread) -> dict[str, Any]:
    """What the running gateway serves at /openapi.json (open, like /health)."""
    response = requests.get(gateway.url + "/openapi.json", timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(scope="module")
def served_schema(served_document: dict[str, Any]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(_with_served_models(served_document))


def routed_operations(gateway: GatewayThread) -> set[tuple[str, str]]:
    """The app's route table; aiohttp adds a HEAD beside every GET, which needs no fuzzing of
    its own."""
    assert gateway.gateway is not None
    return {
        (route.method, route.resource.canonical)
        for route in gateway.gateway.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


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


def test_fuzzed_requests_get_no_500_and_errors_in_openai_shape(
    gateway: GatewayThread, served_schema: schemathesis.BaseSchema, http: requests.Session
) -> None:
    # Strategies per operation rather than `schema.parametrize()`: the operations are only
    # known once the gateway serves its description, and schemathesis' fixture-loaded
    # schemas do not run under this pytest.
    for result in served_schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))

        @hypothesis.given(case=cases)
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,  # the same examples on every run: a failure is reproducible
            database=None,  # nothing written into the work tree
        )
        def fuzz(case: schemathesis.Case) -> None:
            send_and_check(case, gateway, http)

        try:
            fuzz()
        except BaseException as exc:
            exc.add_note(f"while fuzzing {operation.label}")
            raise


def send_and_check(
    case: schemathesis.Case, gateway: GatewayThread, http: requests.Session
) -> None:
    # The admin key is good for /v1 too, so every operation passes auth and reaches its code.
    response = case.call(
        base_url=gateway.url, session=http, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=TIMEOUT_S,
    )
    RUN["examples"] += 1
    FUZZED.add((case.operation.method.upper(), case.operation.path))
    SEEN[response.status_code] = SEEN.get(response.status_code, 0) + 1
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code != 500, response.text
    if response.status_code >= 500:
        RUN["5xx"] += 1
    if response.status_code >= 400:
        assert_openai_error(response)


def test_the_served_description_has_every_route_of_the_app(
    gateway: GatewayThread, served_document: dict[str, Any]
) -> None:
    described = {
        (method.upper(), path)
        for path, operations in served_document["paths"].items()
        for method in operations
    }
    assert described == routed_operations(gateway)


def test_the_fuzzer_ran_every_route_of_the_app(gateway: GatewayThread) -> None:
    routed = routed_operations(gateway)
    print(f"fuzz: {RUN['examples']} requests over {len(FUZZED)} operations,"
          f" {RUN['5xx']} answered 5xx (none 500); by status: {dict(sorted(SEEN.items()))}")
    assert routed == FUZZED
    assert RUN["examples"] >= len(routed)


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
