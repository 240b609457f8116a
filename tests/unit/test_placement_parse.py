"""Problem files: every bad input is rejected with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tessera.errors import InvalidInput
from tessera.placement import (
    plan_from_dict,
    plan_to_dict,
    problem_from_dict,
    problem_to_dict,
    solve,
)

GOOD: dict[str, Any] = {
    "model": {"name": "m", "num_blocks": 4, "block_bytes": 1000, "cache_bytes_per_token": 1},
    "workload": {"max_input_tokens": 2, "max_output_tokens": 3, "concurrent_requests": 2},
    "servers": [
        {
            "name": "a",
            "memory_bytes": 5000,
            "decode_s_per_block": 0.01,
            "prefill_s_per_block": {"per_token": 0.0, "fixed": 0.01},
        },
        {
            "name": "b",
            "memory_bytes": 3000,
            "decode_s_per_block": 0.02,
            "prefill_s_per_block": {"per_token": 0.001, "fixed": 0.0},
        },
    ],
    "clients": [{"name": "c0"}],
    "links": [
        {"client": "c0", "server": "a", "rtt_s": 0.1, "prefill_s": 0.2},
        {"client": "c0", "server": "b", "rtt_s": 0.1, "prefill_s": 0.2},
    ],
}


def mutated(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


DELETE = object()


def test_good_problem_round_trips() -> None:
    p = problem_from_dict(GOOD)
    assert problem_from_dict(problem_to_dict(p)) == p
    assert p.session_bytes_per_block == 5


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["model", "colour"], "red", "model.colour"),
        (["servers", 0, "memory_bytes"], -5, "servers[0](a).memory_bytes"),
        (["servers", 1, "memory_bytes"], 0, "servers[1](b).memory_bytes"),
        (["servers", 0, "decode_s_per_block"], 0, "servers[0](a).decode_s_per_block"),
        (["model", "num_blocks"], 0, "model.num_blocks"),
        (["model", "block_bytes"], "big", "model.block_bytes"),
        (["workload", "concurrent_requests"], DELETE, "workload"),
        (["servers", 0, "prefill_s_per_block", "per_token"], -1, "prefill_s_per_block.per_token"),
        (["links", 0, "rtt_s"], -0.1, "links[0].rtt_s"),
        (["clients"], [], "clients"),
        (["servers", 0, "memory"], 5, "servers[0](a).memory"),
    ],
)
def test_bad_fields_are_named(path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        problem_from_dict(mutated(path, value))
    assert field in str(err.value)


def test_client_without_any_link_is_rejected() -> None:
    data = copy.deepcopy(GOOD)
    data["clients"].append({"name": "lonely"})
    with pytest.raises(InvalidInput, match="'lonely' has no link to any server"):
        problem_from_dict(data)


def test_missing_link_pair_is_named() -> None:
    data = copy.deepcopy(GOOD)
    data["links"] = data["links"][:1]
    with pytest.raises(InvalidInput, match=r"no link to server\(s\) b"):
        problem_from_dict(data)


def test_unknown_server_in_link_and_duplicate_names() -> None:
    with pytest.raises(InvalidInput, match=r"links\[1\].server: unknown server 'zz'"):
        problem_from_dict(mutated(["links", 1, "server"], "zz"))
    with pytest.raises(InvalidInput, match="duplicate name 'a'"):
        problem_from_dict(mutated(["servers", 1, "name"], "a"))


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidInput, match="must be a mapping"):
        problem_from_dict(["not", "a", "problem"])


def test_plan_round_trip_through_json_shape() -> None:
    problem = problem_from_dict(GOOD)
    plan = solve(problem)
    data = plan_to_dict(plan)
    assert set(data) == {"solver", "feasible", "placement", "routes", "predicted", "stats"}
    again = plan_from_dict(yaml.safe_load(yaml.safe_dump(data)))
    assert again.placement == plan.placement
    assert dict(again.routes) == dict(plan.routes)
    with pytest.raises(InvalidInput, match="placement"):
        plan_from_dict({**data, "placement": [{"server": "a", "start": -1, "blocks": 2}]})
