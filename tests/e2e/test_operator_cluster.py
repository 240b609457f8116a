"""Against a real cluster (kind, k3d or any): set E2E_KUBECONFIG to run; skipped otherwise.

Without GPUs (kind): the real apiserver enforces the CRD schema, `kubectl get llmd` shows the
printer columns, and the operator reports Failed for a pool with no usable GPU. With a GPU pool
(E2E_GPU_POOL=<value of the tessera.dev/pool label> and the images pushed, E2E_WORKER_IMAGE and
E2E_ROUTER_IMAGE): the packaged SmolLM2 becomes Ready and answers through the router.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
import uuid
from typing import Any

import pytest

from .fixtures import client_configured, cr, image_env, restricted_pods

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBECONFIG = os.environ.get("E2E_KUBECONFIG")
KUBECTL = shutil.which(
    "kubectl", path=f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not KUBECONFIG or not KUBECTL, reason="set E2E_KUBECONFIG to a real cluster"
    ),
]


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    assert KUBECTL and KUBECONFIG
    return subprocess.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def _cr(name: str, ns: str, pool: str, **spec: Any) -> str:
    return json.dumps(cr(name, ns, pool, **spec))


@pytest.fixture(scope="module")
def namespace() -> Any:
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmdeployment.yaml"))
    kubectl(
        "wait", "--for=condition=Established", "crd/llmdeployments.tessera.dev", "--timeout=60s"
    )
    ns = f"tessera-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(namespace: str) -> Any:
    from kopf.testing import KopfRunner

    assert KUBECONFIG
    args = ["run", "--standalone", "--namespace", namespace, "-m", "tessera.operator.handlers"]
    with (
        client_configured(KUBECONFIG, image_env(os.environ)),
        KopfRunner(args, timeout=60) as runner,
    ):
        yield runner
    assert runner.exception is None, runner.output


def _status(name: str, ns: str) -> dict[str, Any]:
    out = kubectl("get", "llmd", name, "-n", ns, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


def _wait(pred: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(1)
    raise AssertionError("timed out")


def test_apiserver_rejects_invalid_crs(namespace: str) -> None:
    bad = json.loads(_cr("bad", namespace, "x"))
    bad["spec"]["placement"] = {"solver": "magic"}
    out = kubectl("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert out.returncode != 0 and "solver" in out.stderr
    unknown = json.loads(_cr("bad2", namespace, "x"))
    unknown["spec"]["colour"] = "red"
    out = kubectl("apply", "--validate=strict", "-f", "-", stdin=json.dumps(unknown), check=False)
    assert out.returncode != 0 and "colour" in out.stderr


def test_pool_without_gpus_is_failed_and_listed(namespace: str, operator: Any) -> None:
    kubectl("apply", "-f", "-", stdin=_cr("empty", namespace, "no-such-pool"))
    st = _wait(
        lambda: (
            _status("empty", namespace).get("phase") == "Failed" and _status("empty", namespace)
        ),
        60,
    )
    assert "spec.nodePool.selector" in st["message"]
    table = kubectl("get", "llmd", "-n", namespace).stdout
    assert "PHASE" in table and "ENDPOINT" in table and "Failed" in table


@pytest.mark.skipif(
    not os.environ.get("E2E_GPU_POOL"), reason="set E2E_GPU_POOL to a labelled GPU pool"
)
def test_gpu_pool_becomes_ready_and_deletion_cascades(namespace: str, operator: Any) -> None:
    pool = os.environ["E2E_GPU_POOL"]
    kubectl("apply", "-f", "-", stdin=_cr("smol", namespace, pool))
    _wait(lambda: _status("smol", namespace).get("phase") == "Ready", 900)
    pods = json.loads(
        kubectl(
            "get", "pods", "-n", namespace, "-l", "tessera.dev/deployment=smol", "-o", "json"
        ).stdout
    )
    assert pods["items"] and all(p["status"]["phase"] == "Running" for p in pods["items"])
    kubectl("delete", "llmd", "smol", "-n", namespace)
    _wait(
        lambda: (
            not json.loads(
                kubectl(
                    "get",
                    "deploy",
                    "-n",
                    namespace,
                    "-l",
                    "tessera.dev/deployment=smol",
                    "-o",
                    "json",
                ).stdout
            )["items"]
        ),
        300,
    )


def test_every_pod_the_operator_builds_passes_restricted_pod_security(namespace: str) -> None:
    """The apiserver's Pod Security admission (level restricted) accepts the stage and router
    pods; a server-side dry run, so no GPU is needed."""
    ns = f"{namespace}-pss"
    kubectl("create", "namespace", ns)
    try:
        kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
        for pod in restricted_pods(ns):
            out = kubectl(
                "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False
            )
            assert out.returncode == 0, out.stderr
            assert "violate" not in out.stderr, out.stderr
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
