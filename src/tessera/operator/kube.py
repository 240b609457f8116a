"""The Kubernetes API as the reconcile needs it: raw dicts in and out, create-or-patch.

Objects are read with `_preload_content=False` (plain JSON, no model classes) and written with
JSON merge patches, so lists (containers, args) become exactly what the builders produced.
Label selectors are sent to the server and also re-checked here.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from tessera.api.crd import GROUP, PLURAL, VERSION
from tessera.errors import InvalidInput

from . import peering
from .manifests import DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from .plan import drifted, needs_write

__all__ = ["Kube", "Rejected", "drifted", "rejected"]  # drifted: judged in plan.py

MERGE = "application/merge-patch+json"
EVENT_SOURCE = "tessera-operator"


def _json(response: Any) -> Any:
    return json.loads(response.data)


def _drain(response: Any) -> None:
    """Read the body so that the connection goes back to the pool instead of being dropped."""
    _ = response.data


REJECTED = (400, 413, 422)


class Rejected(InvalidInput):
    """The API server refused an object built from the spec; `field` names the object and the
    server's field, the message is the server's."""


def rejected(exc: ApiException, obj: Mapping[str, Any]) -> Rejected:
    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    causes = (body.get("details") or {}).get("causes") or []
    fields = [str(c["field"]) for c in causes if c.get("field")]
    message = str(body.get("message") or exc.reason or f"HTTP {exc.status}")
    field = f"{where}: {fields[0]}" if fields else where
    return Rejected(field, f"the API server answered {exc.status}: {message}")


def _has_labels(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    got = obj.get("metadata", {}).get("labels") or {}
    return all(got.get(k) == v for k, v in wanted.items())


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = api_client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.net = kubernetes.client.NetworkingV1Api(self.client)

    # ---- reads ----
    def list_nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = _json(self.core.list_node(_preload_content=False))["items"]
        return items

    def get_llmd(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        body: dict[str, Any] = _json(resp)
        return body

    def list_llmds(self) -> list[dict[str, Any]]:
        resp = self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, _preload_content=False
        )
        items: list[dict[str, Any]] = _json(resp)["items"]
        return items

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The data keys of a Secret (never its values), or None when it does not exist."""
        try:
            resp = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        body = _json(resp)
        return frozenset((body.get("data") or {}) | (body.get("stringData") or {}))

    def children(self, namespace: str, owner: str) -> dict[str, list[dict[str, Any]]]:
        """Deployments, Services, ConfigMaps and NetworkPolicies labelled as this LLMDeployment's.
        (Secrets are not listed: that would need the right to read every Secret's data.)"""
        wanted = {DEPLOYMENT_LABEL: owner}
        selector = f"{DEPLOYMENT_LABEL}={owner}"
        calls = {
            "Deployment": self.apps.list_namespaced_deployment,
            "Service": self.core.list_namespaced_service,
            "ConfigMap": self.core.list_namespaced_config_map,
            "NetworkPolicy": self.net.list_namespaced_network_policy,
        }
        out: dict[str, list[dict[str, Any]]] = {}
        for kind, call in calls.items():
            items = _json(call(namespace, label_selector=selector, _preload_content=False))["items"]
            out[kind] = [o for o in items if _has_labels(o, wanted)]
        return out

    def gpu_holders(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every tessera-managed Deployment and every live pod, cluster-wide: what
        inventory.claimed needs to see GPUs that other deployments hold."""
        deps = _json(
            self.apps.list_deployment_for_all_namespaces(
                label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}", _preload_content=False
            )
        )["items"]
        pods = _json(
            self.core.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
                _preload_content=False,
            )
        )["items"]
        return deps, pods

    def unschedulable(self, namespace: str, owner: str) -> list[tuple[str, str]]:
        """(pod, the scheduler's message) for this LLMDeployment's pods that cannot be placed."""
        resp = self.core.list_namespaced_pod(
            namespace, label_selector=f"{DEPLOYMENT_LABEL}={owner}", _preload_content=False
        )
        out = []
        for pod in _json(resp)["items"]:
            if not _has_labels(pod, {DEPLOYMENT_LABEL: owner}):
                continue
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    why = c.get("message") or c.get("reason") or "not scheduled"
                    out.append((str(pod["metadata"]["name"]), str(why)))
        return sorted(out)

    def peering_status(self, name: str, namespace: str | None) -> dict[str, Any]:
        """The peer records of kopf's peering object (empty when it does not exist)."""
        try:
            if namespace is None:
                resp = self.custom.get_cluster_custom_object(
                    peering.GROUP,
                    peering.VERSION,
                    peering.CLUSTER_PLURAL,
                    name,
                    _preload_content=False,
                )
            else:
                resp = self.custom.get_namespaced_custom_object(
                    peering.GROUP,
                    peering.VERSION,
                    namespace,
                    peering.NAMESPACED_PLURAL,
                    name,
                    _preload_content=False,
                )
        except ApiException as exc:
            if exc.status == 404:
                return {}
            raise
        status: dict[str, Any] = _json(resp).get("status") or {}
        return status

    # ---- writes ----
    def apply(self, obj: dict[str, Any], existing: Mapping[str, Any] | None) -> bool:
        """Create, or patch when the object on the server differs from `obj` in anything `obj`
        sets (a hand edit of image, args, replicas, env, affinity, ... included). Returns
        whether anything was written. A rejection (400, 413, 422) raises Rejected."""
        try:
            return self._apply(obj, existing)
        except ApiException as exc:
            if exc.status in REJECTED:
                raise rejected(exc, obj) from None
            raise

    def _apply(self, obj: dict[str, Any], existing: Mapping[str, Any] | None) -> bool:
        if not needs_write(obj, existing):
            return False
        kind = obj["kind"]
        ns = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        if existing is None:
            try:
                self._create(kind, ns, obj)
                return True
            except ApiException as exc:
                if exc.status != 409:  # created meanwhile (e.g. by a previous operator run)
                    raise
        self._patch(kind, ns, name, obj)
        return True

    def create_once(self, obj: dict[str, Any]) -> bool:
        """Create an object that is never rewritten (the worker token). False: it existed."""
        try:
            self._create(obj["kind"], obj["metadata"]["namespace"], obj)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _create(self, kind: str, ns: str, obj: dict[str, Any]) -> None:
        resp: Any
        if kind == "Deployment":
            resp = self.apps.create_namespaced_deployment(ns, obj, _preload_content=False)  # type: ignore[arg-type]
        elif kind == "Service":
            resp = self.core.create_namespaced_service(ns, obj, _preload_content=False)  # type: ignore[arg-type]
        elif kind == "ConfigMap":
            resp = self.core.create_namespaced_config_map(ns, obj, _preload_content=False)  # type: ignore[arg-type]
        elif kind == "NetworkPolicy":
            resp = self.net.create_namespaced_network_policy(ns, obj, _preload_content=False)  # type: ignore[arg-type]
        elif kind == "Secret":
            resp = self.core.create_namespaced_secret(ns, obj, _preload_content=False)  # type: ignore[arg-type]
        else:
            raise ValueError(f"cannot create {kind}")
        _drain(resp)

    def _patch(self, kind: str, ns: str, name: str, obj: dict[str, Any]) -> None:
        kw: dict[str, Any] = {"_content_type": MERGE, "_preload_content": False}
        resp: Any
        if kind == "Deployment":
            resp = self.apps.patch_namespaced_deployment(name, ns, obj, **kw)
        elif kind == "Service":
            resp = self.core.patch_namespaced_service(name, ns, obj, **kw)
        elif kind == "ConfigMap":
            resp = self.core.patch_namespaced_config_map(name, ns, obj, **kw)
        elif kind == "NetworkPolicy":
            resp = self.net.patch_namespaced_network_policy(name, ns, obj, **kw)
        else:
            raise ValueError(f"cannot patch {kind}")
        _drain(resp)

    def delete(self, kind: str, ns: str, name: str) -> None:
        calls = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "NetworkPolicy": self.net.delete_namespaced_network_policy,
        }
        try:
            _drain(calls[kind](name, ns, _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def event(self, regarding: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about an object (posted here, not by kopf: this also works from the
        resync loop, outside any kopf handler)."""
        md = regarding["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {
                "name": f"{md['name']}.{secrets.token_hex(8)}",
                "namespace": md["namespace"],
            },
            "involvedObject": {
                "apiVersion": regarding.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": regarding.get("kind", "LLMDeployment"),
                "name": md["name"],
                "namespace": md["namespace"],
                "uid": md.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1000],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
        }
        _drain(self.core.create_namespaced_event(md["namespace"], body, _preload_content=False))  # type: ignore[arg-type]

    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        resp = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            {"status": status},
            _content_type=MERGE,
            _preload_content=False,
        )
        _drain(resp)
