"""`[[gateway.tenants]]` and `[router.admission]` in the fleet file: what is taken, and
mistakes named by key with what is allowed (never echoing a key)."""

from __future__ import annotations

from typing import Any

import pytest

from modelserver.config import parse_fleet
from modelserver.errors import FleetFileError


def tenants(*tables: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": {"tenants": list(tables)}}


def test_a_tenant_takes_a_class_or_a_number_a_weight_and_limits() -> None:
    fleet = parse_fleet(
        {
            **tenants(
                {"name": "chat", "keys_env": "CHAT_KEYS", "priority": "interactive"},
                {"name": "evals", "keys": ["k1"], "priority": -5, "weight": 2.5,
                 "requests_per_second": 0.5, "tokens_per_minute": 1000, "max_in_flight": 8},
            ),
            "router": {"admission": {"reserved_where": "above_cap", "max_running": 16}},
        }
    )
    chat, evals = fleet.gateway.tenants
    assert chat.priority == "interactive" and chat.weight == 1.0
    assert (evals.priority, evals.weight, evals.tokens_per_minute) == (-5, 2.5, 1000)
    assert fleet.router.admission.reserved_where == "above_cap"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (tenants({"name": "t"}), "gateway.tenants[0]: a tenant needs `keys` or `keys_env`"),
        (tenants({"name": "t", "keys": ["k"], "priority": "urgent"}), "'interactive' or 'batch'"),
        (tenants({"name": "t", "keys": ["k"], "weight": 0}), "gateway.tenants[0].weight"),
        (tenants({"name": "t", "keys": ["k"], "tokens_per_minute": 0}), "tokens_per_minute"),
        (tenants({"name": "t", "keys": ["a b"]}), "visible ASCII"),
        (tenants({"name": "t", "keys": ["k"], "keys_env": "1BAD"}), "gateway.tenants[0].keys_env"),
        (tenants({"name": "t", "keys": ["k"]}, {"name": "t", "keys": ["j"]}),
         "gateway.tenants[1].name: duplicate name 't'"),
        ({"router": {"admission": {"reserved_where": "middle"}}}, "'below_cap' or 'above_cap'"),
    ],
)
def test_tenant_mistakes_name_the_key_and_what_is_allowed(
    data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(FleetFileError) as caught:
        parse_fleet(data)
    assert expected in str(caught.value)


def test_a_key_given_to_two_tenants_is_refused_without_showing_it() -> None:
    data = tenants({"name": "a", "keys": ["sk-shared-1"]}, {"name": "b", "keys": ["sk-shared-1"]})
    with pytest.raises(FleetFileError) as caught:
        parse_fleet(data)
    assert "a key of 'b' is also a key of 'a'" in str(caught.value)
    assert "sk-shared-1" not in str(caught.value)
