"""Operator latency against the emulated API server (kmock + fixes, tests/integration/k8s).

Measures, with the real operator (KopfRunner) and a pool of 50 GPU nodes:
- create: LLMDeployment created -> every child (worker-token Secret, stage Deployments and
  Services, plan ConfigMap, router Deployment and Service, NetworkPolicies) applied and the
  status written. Target < 2 s.
- re-plan: a node holding a stage deleted -> a new plan without it applied. Target < 1 s.
Baseline, same run: one Deployment POST + GET round trip through the same client and server
(the API floor); the ratio says how many such round trips each figure costs.

At scale (issue 10), emulator in its own process, 1,000 GPU nodes of 6 GPUs (6,000 GPUs):
- create: CR applied -> every stage Deployment created and phase Deploying. Target < 10 s. The
  number of stages for the workload is printed against the pool's size.
- node loss: a node holding a stage deleted -> a plan without it published. Target < 2 s.
- resident memory of the bench process (operator + this client), peak. Target < 300 MB.

Setups, same run: the headline runs the emulator in its own process (a real API server does not
share the operator's GIL) keeping no request history; two comparison rows run it in the
operator's process, with no request history and with kmock's unbounded one (the issue-5 setup:
kmock scans every past request on each request, so late requests cost tens of milliseconds).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "k8s"))

NODES = 50
REPEATS = 3
PRODUCTS = (
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-L40S",
    "NVIDIA-L4",
    "Tesla-T4",
)
NS, GROUP, VERSION, PLURAL = "default", "tessera.dev", "v1alpha1", "llmdeployments"


def _node(i: int) -> dict[str, Any]:
    product = PRODUCTS[i % len(PRODUCTS)]
    return {
        "metadata": {
            "name": f"gpu-{i:02d}",
            "labels": {
                "tessera.dev/pool": "bench",
                "nvidia.com/gpu.product": product,
                "topology.kubernetes.io/zone": f"zone-{i % 3}",
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(1 + i % 2)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


CR = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "LLMDeployment",
    "metadata": {"name": "bench", "namespace": NS},
    "spec": {
        "model": {
            "name": "llama-70b",
            "source": {"pvc": "models"},
            "architecture": {"preset": "llama-70b"},
        },
        "workload": {"concurrentRequests": 16},
        "nodePool": {"selector": {"matchLabels": {"tessera.dev/pool": "bench"}}},
    },
}


def _wait(pred: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError("the operator did not finish in time")


OPERATOR_ARGS = ["run", "-A", "--standalone", "--quiet", "-m", "tessera.operator.handlers"]


class _Api(NamedTuple):
    core: Any  # kubernetes.client.CoreV1Api
    apps: Any  # kubernetes.client.AppsV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi


@contextlib.contextmanager
def _cluster(emulator: str, nodes: Iterable[dict[str, Any]]) -> Iterator[_Api]:
    """An emulated API server (`emulator`: a SETUPS kind) with the CRD and `nodes` in it, and
    this process's kubernetes client (and the operator's, via KUBECONFIG) pointed at it."""
    import kubernetes
    import yaml
    from k8s_emulator import EmulatorProcess, EmulatorThread, write_kubeconfig

    server: EmulatorProcess | EmulatorThread
    if emulator == "process":
        server = EmulatorProcess()
    else:
        server = EmulatorThread(forget_served=emulator != "thread-unbounded")
    with server as srv, tempfile.TemporaryDirectory() as tmp:
        cfg = pathlib.Path(tmp) / "kubeconfig"
        write_kubeconfig(cfg, srv.url)
        os.environ["KUBECONFIG"] = str(cfg)
        os.environ["TESSERA_RESYNC_SECONDS"] = "3600"
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(cfg)
        kubernetes.config.load_kube_config(config_file=str(cfg))
        crd = yaml.safe_load((ROOT / "crds" / "llmdeployment.yaml").read_text())
        kubernetes.client.ApiextensionsV1Api().create_custom_resource_definition(crd)
        api = _Api(
            kubernetes.client.CoreV1Api(),
            kubernetes.client.AppsV1Api(),
            kubernetes.client.CustomObjectsApi(),
        )
        for node in nodes:
            api.core.create_node(node)
        yield api


def _status(api: _Api) -> dict[str, Any]:
    body = api.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "bench")
    return body.get("status") or {}


def _replanned(api: _Api, victim: str) -> bool:
    """The status and the published plan no longer name the node `victim`."""
    stages = _status(api).get("plan", {}).get("stages", [])
    if any(x["node"] == victim for x in stages):
        return False
    cm = api.core.read_namespaced_config_map("bench-plan", NS)
    return victim not in cm.data["endpoints.json"]


SETUPS = {  # name -> (emulator, repeats)
    "separate process, no request history": ("process", REPEATS),
    "same process, no request history": ("thread", 1),
    "same process, unbounded (issue 5)": ("thread-unbounded", 1),
}


def _one_run(emulator: str = "process") -> tuple[float, float, float, int]:
    from kopf.testing import KopfRunner

    with _cluster(emulator, [_node(i) for i in range(NODES)]) as api:
        core, apps, custom = api.core, api.apps, api.custom

        # Baseline: one write + one read of a Deployment-sized object.
        body = {
            "metadata": {"name": "probe"},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        }
        t0 = time.perf_counter()
        apps.create_namespaced_deployment(NS, body)
        apps.read_namespaced_deployment("probe", NS)
        baseline = time.perf_counter() - t0
        apps.delete_namespaced_deployment("probe", NS)

        def applied() -> dict[str, Any] | None:
            st = _status(api)
            stages = st.get("plan", {}).get("stages")
            if not stages:
                return None
            names = {s.metadata.name for s in core.list_namespaced_service(NS).items}
            return st if "bench-router" in names and len(names) >= len(stages) + 1 else None

        with KopfRunner(OPERATOR_ARGS, timeout=30) as runner:
            time.sleep(0.5)  # let the operator start watching (not part of the figure)
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, CR)
            st = _wait(applied)
            create_s = time.perf_counter() - t0
            stages = len(st["plan"]["stages"])
            victim = st["plan"]["stages"][0]["node"]

            t0 = time.perf_counter()
            core.delete_node(victim)

            _wait(lambda: _replanned(api, victim))
            replan_s = time.perf_counter() - t0
        if runner.exception is not None:
            raise runner.exception
        return create_s, replan_s, baseline, stages


SCALE_NODES, SCALE_GPUS = 1000, 6


def _scale_node(i: int) -> dict[str, Any]:
    node = _node(i)
    node["metadata"]["name"] = f"gpu-{i:04d}"
    node["status"]["allocatable"] = {"nvidia.com/gpu": str(SCALE_GPUS)}
    return node


def _scale_run() -> tuple[float, float, int, float]:
    """(create s, node loss s, stages, peak RSS MB) at 1,000 nodes."""
    import resource

    import kubernetes
    from kopf.testing import KopfRunner

    with _cluster("process", [_scale_node(i) for i in range(SCALE_NODES)]) as api:
        apps, custom = api.apps, api.custom

        def deploying() -> dict[str, Any] | None:
            st = _status(api)
            if st.get("phase") != "Deploying" or not st.get("stages"):
                return None
            stages = [
                d
                for d in apps.list_namespaced_deployment(NS).items
                if (d.metadata.labels or {}).get("app.kubernetes.io/component") == "stage"
            ]
            return st if len(stages) == st["stages"] else None

        with KopfRunner(OPERATOR_ARGS, timeout=60) as runner:
            time.sleep(2.0)  # let the operator list the 1,000 nodes (not part of the figure)
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, CR)
            st = _wait(deploying, timeout_s=120)
            create_s = time.perf_counter() - t0
            stages = int(st["stages"])
            victim = st["plan"]["stages"][0]["node"]
            net = kubernetes.client.NetworkingV1Api()
            _wait(  # the pass is over: its last write is the router NetworkPolicy
                lambda: any(
                    p.metadata.name == "bench-router"
                    for p in net.list_namespaced_network_policy(NS).items
                ),
                timeout_s=120,
            )
            time.sleep(0.5)
            t0 = time.perf_counter()
            api.core.delete_node(victim)
            _wait(lambda: _replanned(api, victim), timeout_s=60)
            loss_s = time.perf_counter() - t0
        if runner.exception is not None:
            raise runner.exception
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return create_s, loss_s, stages, rss_mb


def _compute_only() -> tuple[float, int]:
    """Inventory + solve + build for the same pool, no API: the operator's own share."""
    from tessera.operator import inventory, manifests
    from tessera.operator.reconcile import parse_spec
    from tessera.placement import solve

    spec = parse_spec(CR["spec"])
    nodes = [_node(i) for i in range(NODES)]
    owner = manifests.Owner("bench", NS, "uid")
    images = manifests.Images("w", "r")
    t0 = time.perf_counter()
    inv = inventory.build(spec, nodes)
    plan = solve(inv.problem, spec.placement.solver)
    objs = [
        manifests.stage_deployment(owner, spec, inv.server(p.server), (p.start, p.end), images)
        for p in plan.placement
    ]
    objs += [manifests.stage_service(owner, p.server) for p in plan.placement]
    objs.append(manifests.plan_configmap(owner, inv.problem, plan))
    objs.append(manifests.router_deployment(owner, spec, images, "z", "zone-0"))
    objs.append(manifests.router_service(owner))
    objs.append(manifests.worker_token_secret(owner, "token"))
    objs.append(manifests.stage_network_policy(owner, spec))
    objs.append(manifests.router_network_policy(owner, spec))
    return time.perf_counter() - t0, len(objs)


def _quiet_logs() -> None:
    import logging

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf").setLevel(logging.WARNING)


def main() -> None:
    _quiet_logs()
    # A fresh process: ru_maxrss is a lifetime peak, and `make bench` runs the model-loading
    # benches first in this one.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=spawn, initializer=_quiet_logs
    ) as pool:
        create, loss, stages, rss = pool.submit(_scale_run).result()
    gpus = SCALE_NODES * SCALE_GPUS
    print(f"scale: {SCALE_NODES} nodes, {gpus} GPUs; {stages} stages planned (maxGPUs default)")
    print(f"{'figure':<44}{'value':>10}{'target':>10}{'met':>6}")
    for label, value, target in (
        ("CR -> all stage Deployments, Deploying (s)", create, 10.0),
        ("node lost -> new plan published (s)", loss, 2.0),
        ("peak RSS, operator + bench client (MB)", rss, 300.0),
    ):
        print(f"{label:<44}{value:>10.2f}{target:>10.1f}{'yes' if value < target else 'NO':>6}")
    print()
    results = {}
    for label, (emulator, repeats) in SETUPS.items():
        runs = [_one_run(emulator) for _ in range(repeats)]
        results[label] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
            runs[0][3],
            repeats,
        )
    compute = [_compute_only() for _ in range(REPEATS)]
    compute_s, writes = statistics.median(c[0] for c in compute), compute[0][1]
    head = next(iter(results))
    create, replan, base, stages, _ = results[head]
    print(f"pool: {NODES} nodes, {stages} stages planned (llama-70b, 16 concurrent)")
    print(f"emulator: {head}, median of {REPEATS}")
    print(f"{'figure':<34}{'seconds':>10}{'x API round trip':>18}{'target':>10}{'met':>6}")
    for label, value, target in (
        ("CR created -> all children applied", create, 2.0),
        ("node deleted -> re-plan applied", replan, 1.0),
    ):
        met = "yes" if value < target else "NO"
        print(f"{label:<34}{value:>10.3f}{value / base:>18.1f}{target:>10.1f}{met:>6}")
    print(f"{'baseline: Deployment POST+GET':<34}{base:>10.4f}{1.0:>18.1f}")
    print(f"{'operator compute only (no API)':<34}{compute_s:>10.3f}{compute_s / base:>18.1f}")
    print(f"objects written on create: {writes}; the rest of the create time is API round trips")
    print()
    print("the same figures with other emulator setups (same run; seconds, ratio to the headline)")
    print(f"{'emulator':<36}{'runs':>5}{'create':>9}{'ratio':>7}{'re-plan':>9}{'ratio':>7}")
    for label, (c, r, _, _, n) in results.items():
        print(f"{label:<36}{n:>5}{c:>9.3f}{c / create:>7.2f}{r:>9.3f}{r / replan:>7.2f}")


if __name__ == "__main__":
    main()
