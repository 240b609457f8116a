"""Invalid CRs: the operator's message names the field as the user wrote it."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.errors import InvalidInput
from tessera.operator.reconcile import parse_spec


def _valid() -> dict[str, Any]:
    return {
        "model": {"name": "m", "source": {"pvc": "models"}, "architecture": {"preset": "llama-8b"}},
        "nodePool": {"selector": {"matchLabels": {"pool": "p"}}},
    }


CASES = [
    (("model", "name"), "", "spec.model.name", "at least 1 character"),
    (("model", "source"), {"pvc": "a", "image": "b"}, "spec.model.source", "exactly one of"),
    (("router", "replicas"), 0, "spec.router.replicas", "greater than or equal to 1"),
    (("router", "apiKeySecret"), "Bad_Name", "spec.router.apiKeySecret", "pattern"),
    (("workload", "maxInputTokens"), "many", "spec.workload.maxInputTokens", "integer"),
    (("placement", "solver"), "magic", "spec.placement.solver", "cg-bprr"),
    (("networkPolicy", "routerFrom"), [{}], "spec.networkPolicy.routerFrom[0]", "cidr"),
    (("nodePool", "classes"), [{"name": "x"}], "spec.nodePool.classes[0].match", "required"),
    (("bogus",), 1, "spec.bogus", "not permitted"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), CASES, ids=lambda c: str(c))
def test_the_message_names_the_field(
    path: tuple[str, ...], value: Any, field: str, words: str
) -> None:
    raw = _valid()
    target = raw
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    with pytest.raises(InvalidInput) as info:
        parse_spec(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert words in str(info.value)


def test_several_errors_are_all_named_up_to_a_bound() -> None:
    raw = _valid()
    raw["model"]["name"] = ""
    raw["router"] = {"replicas": 0}
    with pytest.raises(InvalidInput) as info:
        parse_spec(raw)
    assert "spec.model.name" in str(info.value) and "spec.router.replicas" in str(info.value)
    many = {f"x{i}": i for i in range(9)}
    with pytest.raises(InvalidInput) as info:
        parse_spec({**_valid(), **many})
    assert str(info.value).count("not permitted") == 5 and "more than 5" in str(info.value)


def test_a_missing_spec_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_spec(None)
    assert info.value.field in ("spec.model", "spec.nodePool")
