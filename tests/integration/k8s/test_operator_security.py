"""The real operator against the emulated API server: worker token, API keys, NetworkPolicies,
invalid CRs, and deletion without a finalizer."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from conftest import NS, Cluster, gpu_node, llmd, wait_for
from kopf.testing import KopfRunner

ARGS = ["run", "-A", "--standalone", "-m", "tessera.operator.handlers"]
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def _pool(cluster: Cluster, pool: str = "test") -> None:
    for i, product in enumerate(("NVIDIA-A100-SXM4-80GB",) * 2 + ("NVIDIA-L40S",) * 2):
        cluster.add_node(gpu_node(f"{pool}-n{i}", product, pool=pool))


def _condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def _checked(runner: KopfRunner) -> None:
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def test_worker_token_is_made_once_and_survives_replans_and_restarts(cluster: Cluster) -> None:
    _pool(cluster)
    with KopfRunner(ARGS, timeout=30) as runner:
        cluster.create(llmd("s1"))
        st = wait_for(lambda: cluster.status("s1").get("plan") and cluster.status("s1"))
        secret = wait_for(lambda: cluster.secret("s1-worker-token"), what="the token Secret")
        assert len(base64.b64decode(secret.data["token"])) >= 32
        assert secret.metadata.owner_references[0].uid == cluster.get("s1")["metadata"]["uid"]
        deps = wait_for(
            lambda: len(cluster.deployments("s1")) == st["stages"] + 1 and cluster.deployments("s1")
        )
        for dep in deps.values():  # every stage pod and the router mount the same token
            vols = {v.name: v for v in dep.spec.template.spec.volumes}
            assert vols["worker-token"].secret.secret_name == "s1-worker-token"
        pols = wait_for(
            lambda: len(cluster.network_policies("s1")) == 2 and cluster.network_policies("s1")
        )
        stage_pol = pols["s1-stages"].spec
        assert stage_pol.pod_selector.match_labels["app.kubernetes.io/component"] == "stage"
        (peer,) = stage_pol.ingress[0]._from
        assert peer.pod_selector.match_labels["app.kubernetes.io/component"] == "router"
        # Open router: said in the status, and once as a Warning event.
        auth = _condition(cluster.status("s1"), "Authenticated")
        assert (auth["status"], auth["reason"]) == ("False", "NoApiKeySecret")

        victim = st["plan"]["stages"][0]["node"]
        cluster.core.delete_node(victim)
        wait_for(
            lambda: all(s["node"] != victim for s in cluster.status("s1")["plan"]["stages"]),
            what="a re-plan",
        )
    _checked(runner)
    with KopfRunner(ARGS, timeout=30) as runner:
        cluster.mark_ready("s1")
        wait_for(lambda: cluster.status("s1").get("phase") == "Ready")
    _checked(runner)
    again = cluster.secret("s1-worker-token")
    assert (again.metadata.uid, again.data) == (secret.metadata.uid, secret.data)
    assert len(cluster.events("OpenEndpoint")) == 1


def test_missing_api_key_secret_holds_the_router_and_says_so(cluster: Cluster) -> None:
    _pool(cluster)
    with KopfRunner(ARGS, timeout=30) as runner:
        cluster.create(llmd("s2", router={"apiKeySecret": "s2-keys"}))
        st = wait_for(
            lambda: cluster.status("s2").get("phase") == "Degraded" and cluster.status("s2"),
            what="Degraded for the missing Secret",
        )
        assert st["message"].startswith('spec.router.apiKeySecret: Secret "s2-keys" not found')
        assert _condition(st, "Authenticated")["reason"] == "SecretNotFound"
        router = wait_for(lambda: cluster.deployments("s2").get("s2-router"))
        vols = {v.name: v for v in router.spec.template.spec.volumes}
        # Kubernetes does not start a pod whose Secret volume is missing: never an open router.
        assert vols["api-keys"].secret.secret_name == "s2-keys"
        assert not vols["api-keys"].secret.optional
        assert "--api-keys-file" in router.spec.template.spec.containers[0].args
        assert wait_for(lambda: cluster.events("SecretNotFound"))

        # The wrong key first, then the right one: the operator re-checks by itself.
        keys = base64.b64encode(b"sha256:" + b"ab" * 32 + b"\n").decode()
        cluster.core.create_namespaced_secret(
            NS, {"metadata": {"name": "s2-keys"}, "data": {"other": keys}}
        )
        wait_for(
            lambda: _condition(cluster.status("s2"), "Authenticated")["reason"] == "KeyNotFound"
        )
        cluster.core.patch_namespaced_secret("s2-keys", NS, {"data": {"keys": keys}})
        st = wait_for(
            lambda: (
                _condition(cluster.status("s2"), "Authenticated").get("status") == "True"
                and cluster.status("s2")
            ),
            what="the keys to be found",
        )
        assert st["phase"] == "Deploying"
        cluster.mark_ready("s2")
        wait_for(lambda: cluster.status("s2").get("phase") == "Ready")
    _checked(runner)
    assert not cluster.events("OpenEndpoint")


def test_invalid_cr_fails_once_naming_the_field_and_policies_can_be_off(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pool(cluster)
    monkeypatch.setenv("TESSERA_RESYNC_SECONDS", "0.3")  # full resyncs, often
    with KopfRunner(ARGS, timeout=30) as runner:
        bad = llmd("s3", router={"replicas": 0, "apiKeySecret": "Not_A_Name"})
        cluster.create(bad)  # the CRD schema would refuse it; the emulator does not check
        st = wait_for(
            lambda: cluster.status("s3").get("phase") == "Failed" and cluster.status("s3")
        )
        assert st["message"].startswith("spec.router.replicas: ")
        assert "spec.router.apiKeySecret" in st["message"]
        assert _condition(st, "Planned")["reason"] == "InvalidSpec"
        cluster.create(llmd("s4", networkPolicy={"enabled": False}))
        st = wait_for(lambda: cluster.status("s4").get("plan") and cluster.status("s4"))
        wait_for(lambda: len(cluster.services("s4")) == st["stages"] + 1)
        assert cluster.network_policies("s4") == {}
        assert not cluster.deployments("s3")
        # A deleted worker token comes back with the next full resync, which re-ran s3 first
        # (sorted): still Failed, and no second Event.
        old = cluster.secret("s4-worker-token")
        cluster.core.delete_namespaced_secret("s4-worker-token", NS)
        new = wait_for(lambda: cluster.secret("s4-worker-token"), what="a full resync")
        assert new.metadata.uid != old.metadata.uid
    _checked(runner)  # a PermanentError: no crash, no retry loop
    assert len(cluster.events("InvalidSpec")) == 1  # once, not once per resync


def test_deleted_cr_goes_away_without_the_operator(cluster: Cluster) -> None:
    _pool(cluster)
    _pool(cluster, "second")  # two deployments never share a GPU
    old = llmd("s5")
    old["metadata"]["finalizers"] = [KOPF_FINALIZER]  # as left by the previous operator
    with KopfRunner(ARGS, timeout=30) as runner:
        cluster.create(old)
        cluster.create(llmd("s6", pool="second"))
        for name in ("s5", "s6"):
            st = wait_for(lambda n=name: cluster.status(n).get("plan") and cluster.status(n))
            wait_for(lambda n=name, k=st["stages"]: len(cluster.services(n)) == k + 1)
        wait_for(lambda: not cluster.get("s5")["metadata"].get("finalizers"), what="no finalizer")
    _checked(runner)
    assert not cluster.get("s6")["metadata"].get("finalizers")
    for name in ("s5", "s6"):  # the operator is stopped
        cluster.custom.delete_namespaced_custom_object(
            "tessera.dev", "v1alpha1", NS, "llmdeployments", name
        )
        wait_for(lambda n=name: cluster.secret(f"{n}-worker-token") is None, what="GC")
        assert not cluster.deployments(name) and not cluster.network_policies(name)
    assert not cluster.custom.list_namespaced_custom_object(
        "tessera.dev", "v1alpha1", NS, "llmdeployments"
    )["items"]
