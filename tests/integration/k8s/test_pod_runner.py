"""The kubelet stand-in itself, on a small Deployment (a Python HTTP server, no model): what it
promises in pod_runner's docstring, checked where the closed loop would only fail vaguely."""

from __future__ import annotations

import base64
import json
import pathlib
import signal
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NS, Cluster, gpu_node, wait_for
from pod_runner import Kubelet

# A container: serves its environment and a mounted file at /env; /readyz says 503 until
# someone POSTs /ready, which leaves a flag in its emptyDir (it outlives a container restart).
APP = r"""
import http.server, json, os, pathlib, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
flag = pathlib.Path(os.environ["DATA_DIR"]) / "ready"
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        self.send_response(code); self.end_headers(); self.wfile.write(body.encode())
    def do_GET(self):
        if self.path == "/readyz":
            return self.reply(200 if flag.exists() else 503, "")
        conf = pathlib.Path(args["--config"]).read_text()
        env = {k: v for k, v in os.environ.items() if k.startswith(("FROM_", "CM_", "DATA_"))}
        self.reply(200, json.dumps({"env": env, "conf": conf, "config": args["--config"]}))
    def do_POST(self):
        flag.touch(); self.reply(200, "")
    def log_message(self, *a):
        pass
http.server.HTTPServer((args["--host"], int(args["--port"])), H).serve_forever()
"""


def _deployment(extra_env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    labels = {"app": "demo"}
    container = {
        "name": "app",
        "image": "unused:1",
        "command": [sys.executable],
        "args": ["-c", APP, "--host", "0.0.0.0", "--port", "8080", "--config", "/etc/app/conf"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "mode"}}},
            {"name": "DATA_DIR", "value": "/data"},
            *(extra_env or []),
        ],
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [
            {"name": "conf", "mountPath": "/etc/app", "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }
    node_term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [node_term]
                            }
                        }
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "conf", "configMap": {"name": "c", "items": [
                            {"key": "conf", "path": "conf"}]}},
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            },
        },
    }  # fmt: skip


def _configmap(conf: str) -> dict[str, Any]:
    return {"metadata": {"name": "c"}, "data": {"conf": conf, "mode": "fast"}}


@pytest.fixture
def kubelet(cluster: Cluster, tmp_path: pathlib.Path) -> Iterator[Kubelet]:
    with Kubelet(NS, tmp_path / "pods", probe_every_s=0.2, tick_s=0.1, refresh_every_s=0.2) as k:
        try:
            yield k
        finally:
            print(k.logs())


def _get(kubelet: Kubelet, path: str, method: str = "GET") -> Any:
    pod = kubelet.pod("demo")
    assert pod is not None
    req = urllib.request.Request(f"http://127.0.0.1:{pod.ports['8080']}{path}", method=method)
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
        body = r.read().decode()
    return json.loads(body) if body else None


def _up(kubelet: Kubelet) -> Any:
    try:
        return _get(kubelet, "/env")
    except OSError:  # not listening yet
        return None


def _ready_replicas(cluster: Cluster) -> int:
    return int(cluster.apps.read_namespaced_deployment("demo", NS).status.ready_replicas or 0)


def test_a_deployment_runs_as_its_manifest_says(cluster: Cluster, kubelet: Kubelet) -> None:
    cluster.core.create_namespaced_service(
        NS,
        {
            "metadata": {"name": "demo"},
            "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster.apps.create_namespaced_deployment(NS, _deployment())
    wait_for(lambda: "demo" in kubelet.pending, what="Pending: no node n1")
    cluster.add_node(gpu_node("n0", "x"))
    cluster.add_node(gpu_node("n1", "x"))
    wait_for(lambda: kubelet.pod("demo") is not None, what="scheduled on n1")
    pod = kubelet.pod("demo")
    assert pod is not None and pod.node == "n1"
    wait_for(lambda: "not found" in pod.waiting, what="waiting for its Secret and ConfigMap")
    assert pod.proc is None

    cluster.core.create_namespaced_secret(
        NS, {"metadata": {"name": "s"}, "data": {"k": base64.b64encode(b"hush").decode()}}
    )
    cluster.core.create_namespaced_config_map(NS, _configmap("peer http://demo.default.svc:80/x"))
    wait_for(lambda: pod.running(), what="started")
    # Running but not Ready until the readiness probe passes.
    wait_for(lambda: kubelet.status_log.get("demo"), what="a status")
    assert _ready_replicas(cluster) == 0
    seen = wait_for(lambda: _up(kubelet), what="the server up")
    root = str(pod.root)
    assert seen["env"] == {
        "FROM_SECRET": "hush",
        "FROM_CM": "fast",
        "CM_conf": f"peer http://127.0.0.1:{pod.ports['8080']}/x",  # the Service, resolved
        "CM_mode": "fast",
        "DATA_DIR": f"{root}/data",
    }
    assert seen["config"] == f"{root}/etc/app/conf"
    assert seen["conf"] == f"peer http://127.0.0.1:{pod.ports['8080']}/x"
    _get(kubelet, "/ready", method="POST")
    wait_for(lambda: _ready_replicas(cluster) == 1, what="Ready by the probe")
    dep = cluster.apps.read_namespaced_deployment("demo", NS)
    assert dep.status.observed_generation == dep.metadata.generation

    # A changed ConfigMap reaches the mounted file (atomically), without a restart.
    cluster.core.patch_namespaced_config_map("c", NS, {"data": {"conf": "v2"}})
    wait_for(lambda: _get(kubelet, "/env")["conf"] == "v2", what="the projected update")
    assert pod.restarts == 0

    # restartPolicy Always: killed, restarted, Ready again (its emptyDir survived).
    kubelet.kill("demo", signal.SIGKILL)
    wait_for(lambda: pod.restarts == 1 and pod.ready, what="restarted and Ready")
    assert pod.exit_codes == [-signal.SIGKILL]
    wait_for(lambda: [s["readyReplicas"] for s in kubelet.status_log["demo"]][-3:] == [1, 0, 1])

    # A new pod template replaces the pod; deleting the Deployment stops it.
    cluster.apps.patch_namespaced_deployment(
        "demo", NS, {"spec": {"template": {"metadata": {"labels": {"app": "demo", "v": "2"}}}}}
    )
    wait_for(lambda: (p := kubelet.pod("demo")) is not None and p.name != pod.name)
    assert not pod.running()
    new = kubelet.pod("demo")
    assert new is not None
    cluster.apps.delete_namespaced_deployment("demo", NS)
    wait_for(lambda: kubelet.pod("demo") is None, what="the pod gone with its Deployment")
    assert new.proc is not None and new.proc.poll() is not None
