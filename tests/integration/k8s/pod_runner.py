"""A test-only kubelet: runs the Deployments in the emulated API server as local processes.

It plays the parts of the cluster that the emulator lacks (Deployment controller, scheduler,
kubelet, cluster DNS and kube-proxy) for one namespace, with the manifests exactly as the
operator wrote them. Per Deployment, one pod (replicas 0 or 1):
- scheduled only onto an existing, Ready, schedulable Node that its `nodeSelector` and required
  node affinity (matchExpressions, matchFields on metadata.name) admit; else it stays Pending.
  GPU requests and taints are not counted;
- its container's `command` + `args` run with the environment of this test process's "image"
  (PATH, PYTHONPATH), then `env` (`value`, `secretKeyRef`, `configMapKeyRef`) and `envFrom`;
- volumes, each at its `mountPath` under the pod's own root directory: `emptyDir` (a fresh
  folder), `hostPath` (a symlink to that host folder), `secret` and `configMap` (files written
  as the kubelet does: a `..data` symlink swapped atomically when the object changes, `items`
  and `defaultMode` honoured). A missing Secret or ConfigMap keeps the pod from starting;
- path rewriting: an argument or env value that is a mountPath, or under one, gets the pod's
  root prepended (`/models` -> `<root>/models`); also after `--flag=`;
- networking: every pod shares 127.0.0.1, so each containerPort gets a free loopback port for
  the Deployment's life: `--port <containerPort>` becomes that port and `--host 0.0.0.0`
  becomes 127.0.0.1. Service names (`svc.ns.svc[.cluster.local]:port`) in args, env and
  ConfigMap files are resolved to `127.0.0.1:<port>` of the pod behind that Service (the
  stand-in for DNS plus kube-proxy);
- probes (httpGet only): the startup probe gates the others; the pod counts Ready only once its
  readiness probe answers 2xx/3xx, and stops being Ready after `failureThreshold` failures or at
  once when the process exits. Probes are polled at least every `probe_every_s` (a test
  speed-up), with the failure threshold scaled so that the time to give up is the manifest's;
  a failed liveness or startup probe restarts the container;
- `restartPolicy: Always`: an exited container is restarted at once, then after 10 s, 20 s, ...
  (at most 300 s), as the kubelet's back-off;
- a changed pod template replaces the pod (stop, then start; as `Recreate`);
- the Deployment's status (`replicas`, `readyReplicas`, `availableReplicas`,
  `observedGeneration`) is written through the status subresource when it changes.
Not emulated: security contexts and readOnly (processes run as this user), resource limits,
images (the container runs this checkout), exec/tcp probes, subPath, more than one replica.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes

BACKOFF_S = 10.0
BACKOFF_MAX_S = 300.0
STOP_GRACE_S = 10.0
SERVICE_HOST = re.compile(
    r"\b(?P<svc>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
    r"\.svc(?:\.cluster\.local)?:(?P<port>\d+)"
)


class PodFailed(RuntimeError):
    """The stand-in met something it cannot run (an unsupported volume, probe, field)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def this_image_env() -> dict[str, str]:
    """The "image": this checkout and its virtual environment (`tessera` on PATH)."""
    env = {
        "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def write_atomic(directory: pathlib.Path, files: Mapping[str, bytes], mode: int) -> None:
    """What the kubelet's AtomicWriter does: the files in a fresh `..<version>` folder, the
    `..data` symlink swapped to it in one rename, and each top-level name a symlink through
    `..data`, so that a reader sees the old set or the new one, never a mix."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    for rel, data in files.items():
        target = version / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    tmp = directory / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name)
    os.replace(tmp, directory / "..data")
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for old in directory.iterdir():
        if old.name.startswith("..") and old.name not in ("..data", version.name):
            shutil.rmtree(old, ignore_errors=True)
        elif not old.name.startswith("..") and old.name not in tops:
            old.unlink()


@dataclass
class Probe:
    kind: str
    path: str
    port: int  # the local port
    every_s: float
    threshold: int
    timeout_s: float
    failures: int = 0
    due: float = 0.0

    @classmethod
    def of(
        cls, kind: str, raw: Mapping[str, Any] | None, ports: Mapping[str, int], cap_s: float
    ) -> Probe | None:
        if raw is None:
            return None
        get = raw.get("httpGet")
        if get is None:
            raise PodFailed(f"{kind} probe: only httpGet is emulated, got {sorted(raw)}")
        period = float(raw.get("periodSeconds", 10))
        every = min(period, cap_s)
        threshold = math.ceil(int(raw.get("failureThreshold", 3)) * period / every)
        port = ports.get(str(get["port"]))
        if port is None:
            raise PodFailed(f"{kind} probe: port {get['port']} is not a containerPort")
        delay = float(raw.get("initialDelaySeconds", 0))
        return cls(
            kind,
            get.get("path", "/"),
            port,
            every,
            threshold,
            float(raw.get("timeoutSeconds", 1)),
            due=time.monotonic() + delay,
        )

    def check(self, now: float) -> bool | None:
        """True/False when the probe ran now (answered 2xx/3xx or not), None when not due."""
        if now < self.due:
            return None
        self.due = now + self.every_s
        url = f"http://127.0.0.1:{self.port}{self.path}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:  # noqa: S310 - loopback
                ok = bool(200 <= r.status < 400)
        except (urllib.error.URLError, OSError):
            ok = False
        self.failures = 0 if ok else self.failures + 1
        return ok


@dataclass
class Pod:
    name: str
    deployment: str
    template: dict[str, Any]
    hash: str
    node: str
    root: pathlib.Path
    ports: dict[str, int]  # containerPort (and its name) -> local port
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    ready: bool = False
    started: bool = False  # the startup probe passed (or there is none)
    restart_at: float | None = 0.0
    waiting: str = "ContainerCreating"
    volumes: dict[str, bytes] = field(default_factory=dict)  # rendered content, by volume
    refresh_at: float = 0.0
    probes: dict[str, Probe | None] = field(default_factory=dict)

    @property
    def container(self) -> dict[str, Any]:
        containers = self.template["spec"]["containers"]
        if len(containers) != 1:
            raise PodFailed(f"{self.name}: one container per pod is emulated")
        c: dict[str, Any] = containers[0]
        return c

    @property
    def log_path(self) -> pathlib.Path:
        return self.root / "container.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running() and self.proc is not None:
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after the grace period, as on pod deletion."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.ready = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Kubelet:
    """Runs the namespace's Deployments until the `with` block ends (see the module doc)."""

    def __init__(
        self,
        namespace: str,
        root: pathlib.Path,
        *,
        probe_every_s: float = 0.5,
        tick_s: float = 0.25,
        refresh_every_s: float = 1.0,
        image_env: Mapping[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.root = root
        self.probe_every_s = probe_every_s
        self.tick_s = tick_s
        self.refresh_every_s = refresh_every_s
        self.image_env = dict(image_env if image_env is not None else this_image_env())
        self.core = kubernetes.client.CoreV1Api()
        self.apps = kubernetes.client.AppsV1Api()
        self.pods: dict[str, Pod] = {}  # by Deployment name
        self.ports: dict[str, dict[str, int]] = {}  # by Deployment name, for its lifetime
        self.pending: dict[str, str] = {}  # Deployment -> why its pod is not scheduled
        self.status_log: dict[str, list[dict[str, Any]]] = {}  # every status written
        self._written: dict[str, dict[str, Any]] = {}
        self._deployments: dict[str, dict[str, Any]] = {}
        self._services: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self.error: BaseException | None = None

    # --- the test's handle ----------------------------------------------------------------------
    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            for pod in self.pods.values():
                pod.stop()
        self.check()

    def check(self) -> None:
        """Raise what broke the kubelet loop, if anything did."""
        if self.error is not None:
            raise PodFailed(f"the kubelet stand-in stopped: {self.error!r}") from self.error

    def pod(self, deployment: str) -> Pod | None:
        with self._lock:
            return self.pods.get(deployment)

    def kill(self, deployment: str, sig: int = signal.SIGKILL) -> None:
        with self._lock:
            pod = self.pods[deployment]
            if not pod.running():
                raise PodFailed(f"{pod.name} is not running")
            pod.signal(sig)

    def resolve(self, text: str) -> str:
        """`text` with every Service host:port replaced by the loopback address behind it."""
        with self._lock:
            return SERVICE_HOST.sub(self._resolve_one, text)

    def logs(self) -> str:
        with self._lock:
            return "\n".join(
                f"--- {p.name} (restarts {p.restarts}, ready {p.ready}) ---\n{p.log_tail()}"
                for p in self.pods.values()
            )

    # --- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.sync()
                self._stop.wait(self.tick_s)
        except BaseException as exc:  # kept for check(): the test fails with it
            self.error = exc

    def sync(self) -> None:
        deployments = {d["metadata"]["name"]: d for d in self._list("deployment")}
        services = self._list("service")
        nodes = {n["metadata"]["name"]: n for n in self._list("node")}
        now = time.monotonic()
        with self._lock:
            self._deployments, self._services = deployments, services
            for name in [n for n in self.pods if n not in deployments]:
                self.pods.pop(name).stop()
            for gone in (self.ports, self.pending, self._written):  # a new one starts afresh
                for name in [n for n in gone if n not in deployments]:
                    del gone[name]
            for name, dep in deployments.items():
                self._sync_deployment(name, dep, nodes, now)
        for name, dep in deployments.items():
            self._write_status(name, dep)

    def _list(self, kind: str) -> list[dict[str, Any]]:
        resp: Any  # the raw HTTP response: the objects as the API server wrote them
        if kind == "node":
            resp = self.core.list_node(_preload_content=False)
        elif kind == "service":
            resp = self.core.list_namespaced_service(self.namespace, _preload_content=False)
        else:
            resp = self.apps.list_namespaced_deployment(self.namespace, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items

    def _sync_deployment(
        self, name: str, dep: dict[str, Any], nodes: Mapping[str, Any], now: float
    ) -> None:
        spec = dep["spec"]
        replicas = int(spec.get("replicas", 1))
        if replicas > 1:
            raise PodFailed(f"deployment {name}: replicas {replicas}; one pod is emulated")
        template = spec["template"]
        pod = self.pods.get(name)
        if pod is not None and (replicas == 0 or pod.hash != template_hash(template)):
            pod.stop()
            del self.pods[name]
            pod = None
        if pod is not None and pod.node not in nodes:  # the pod GC deletes pods of gone nodes
            pod.stop()
            del self.pods[name]
            pod = None
        if replicas == 0:
            return
        if pod is None:
            node = next((n for n in sorted(nodes) if _schedulable(template, nodes[n])), None)
            if node is None:
                self.pending[name] = "0 nodes are available (node affinity, not Ready or cordoned)"
                return
            self.pending.pop(name, None)
            pod = self._new_pod(name, template, node)
            self.pods[name] = pod
        self._step(pod, now)

    def _new_pod(self, deployment: str, template: dict[str, Any], node: str) -> Pod:
        h = template_hash(template)
        pod_name = f"{deployment}-{h[:8]}-{secrets.token_hex(3)}"
        ports = self.ports.setdefault(deployment, {})
        containers = template["spec"]["containers"]
        for p in containers[0].get("ports") or []:
            local = ports.setdefault(str(p["containerPort"]), free_port())
            if p.get("name"):
                ports[p["name"]] = local
        root = self.root / pod_name
        root.mkdir(parents=True)
        return Pod(pod_name, deployment, template, h, node, root, ports)

    # --- one pod ---------------------------------------------------------------------------------
    def _step(self, pod: Pod, now: float) -> None:
        if pod.proc is not None and not pod.running() and pod.restart_at is None:
            code = pod.proc.returncode
            pod.exit_codes.append(code)
            pod.ready = pod.started = False
            delay = 0.0 if pod.restarts == 0 else BACKOFF_S * 2 ** (pod.restarts - 1)
            pod.restart_at = now + min(delay, BACKOFF_MAX_S)
            pod.waiting = "CrashLoopBackOff" if delay else "Restarting"
        if pod.restart_at is not None:
            if now < pod.restart_at:
                return
            if not self._start(pod):
                return
        if now >= pod.refresh_at:
            pod.refresh_at = now + self.refresh_every_s
            self._refresh_volumes(pod)
        self._probe(pod, now)

    def _start(self, pod: Pod) -> bool:
        """Mount, then run the container; False while a Secret or ConfigMap is missing."""
        c = pod.container
        try:
            mounts = self._mount(pod)
            env = self._env(pod, c, mounts)
        except _Missing as missing:
            pod.waiting = f"CreateContainerConfigError: {missing}"
            return False
        argv = [self._rewrite(a, pod, mounts) for a in [*c.get("command", []), *c.get("args", [])]]
        argv = _rebind(argv, pod.ports)
        exe = shutil.which(argv[0], path=env.get("PATH"))
        if exe is None:
            raise PodFailed(f"{pod.name}: {argv[0]!r} is not on the image's PATH")
        pod.probes = {
            kind: Probe.of(kind, c.get(f"{kind}Probe"), pod.ports, self.probe_every_s)
            for kind in ("startup", "readiness", "liveness")
        }
        if pod.proc is not None:
            pod.restarts += 1
        with open(pod.log_path, "ab") as log:
            pod.proc = subprocess.Popen(
                [exe, *argv[1:]],
                env=env,
                cwd=pod.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.started = pod.probes["startup"] is None
        pod.restart_at = None
        pod.waiting = ""
        return True

    def _probe(self, pod: Pod, now: float) -> None:
        probes = pod.probes
        if not pod.started:
            startup = probes["startup"]
            result = startup.check(now) if startup else None
            if result:
                pod.started = True
            elif startup is not None and startup.failures >= startup.threshold:
                pod.signal(signal.SIGKILL)  # the kubelet kills it; the restart follows
            return
        readiness = probes["readiness"]
        if readiness is None:
            pod.ready = True
        elif (result := readiness.check(now)) is not None:
            if result:
                pod.ready = True
            elif readiness.failures >= readiness.threshold:
                pod.ready = False
        liveness = probes["liveness"]
        if liveness is not None and liveness.check(now) is False:
            if liveness.failures >= liveness.threshold:
                pod.ready = False
                pod.signal(signal.SIGKILL)

    # --- volumes, env, args -----------------------------------------------------------------------
    def _volume_dir(self, pod: Pod, name: str) -> pathlib.Path:
        return pod.root / ".volumes" / name

    def _render(self, pod: Pod, vol: Mapping[str, Any]) -> tuple[dict[str, bytes], int] | None:
        """A Secret or ConfigMap volume's files and mode; None for the other kinds."""
        if "secret" in vol:
            src, kind, obj_name = vol["secret"], "secret", vol["secret"]["secretName"]
        elif "configMap" in vol:
            src, kind, obj_name = vol["configMap"], "configmap", vol["configMap"]["name"]
        else:
            return None
        data = self._data(kind, obj_name, optional=bool(src.get("optional")))
        items = src.get("items")
        wanted = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        files = {}
        for key, path in wanted.items():
            if key not in data:
                raise _Missing(f'{kind} "{obj_name}" has no key {key!r}')
            files[path] = data[key]
        if kind == "configmap":  # cluster DNS: Service names as loopback addresses
            files = {p: self.resolve(b.decode()).encode() for p, b in files.items()}
        return files, int(src.get("defaultMode", 0o644))

    def _mount(self, pod: Pod) -> dict[str, pathlib.Path]:
        """Materialize the volumes and link each mountPath under the pod root to its folder."""
        volumes = {v["name"]: v for v in pod.template["spec"].get("volumes") or []}
        sources: dict[str, pathlib.Path] = {}
        for name, vol in volumes.items():
            rendered = self._render(pod, vol)
            if rendered is not None:
                files, mode = rendered
                write_atomic(self._volume_dir(pod, name), files, mode)
                pod.volumes[name] = json.dumps(
                    {p: base64.b64encode(b).decode() for p, b in files.items()}, sort_keys=True
                ).encode()
                sources[name] = self._volume_dir(pod, name)
            elif "emptyDir" in vol:
                sources[name] = self._volume_dir(pod, name)
                sources[name].mkdir(parents=True, exist_ok=True)
            elif "hostPath" in vol:
                host = pathlib.Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "Directory" and not host.is_dir():
                    raise _Missing(f"hostPath {host} is not a directory")
                sources[name] = host
            else:
                raise PodFailed(f"{pod.name}: volume {name}: kind {sorted(vol)} not emulated")
        mounts: dict[str, pathlib.Path] = {}
        for m in pod.container.get("volumeMounts") or []:
            if m.get("subPath"):
                raise PodFailed(f"{pod.name}: subPath is not emulated")
            link = pod.root / m["mountPath"].lstrip("/")
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(sources[m["name"]])
            mounts[m["mountPath"].rstrip("/") or "/"] = link
        return mounts

    def _refresh_volumes(self, pod: Pod) -> None:
        """Projected updates: a changed Secret or ConfigMap (or Service) reaches the files."""
        for vol in pod.template["spec"].get("volumes") or []:
            try:
                rendered = self._render(pod, vol)
            except _Missing:
                continue  # the kubelet keeps the last files
            if rendered is None:
                continue
            files, mode = rendered
            content = json.dumps(
                {p: base64.b64encode(b).decode() for p, b in files.items()}, sort_keys=True
            ).encode()
            if pod.volumes.get(vol["name"]) != content:
                write_atomic(self._volume_dir(pod, vol["name"]), files, mode)
                pod.volumes[vol["name"]] = content

    def _env(
        self, pod: Pod, c: Mapping[str, Any], mounts: Mapping[str, pathlib.Path]
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                ref, kind = src["secretRef"], "secret"
            else:
                ref, kind = src["configMapRef"], "configmap"
            data = self._data(kind, ref["name"], optional=bool(ref.get("optional")))
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in c.get("env") or []:
            if "value" in var:
                value = var["value"]
            elif "valueFrom" in var:
                value = self._value_from(pod, var["valueFrom"])
                if value is None:
                    continue
            else:
                value = ""
            env[var["name"]] = value
        # Only the manifest's values name paths inside the pod: the image's own (PATH to this
        # venv) must not be rewritten, even when the checkout sits under a mount path such as
        # /tmp (a CI clone in /tmp/ci lost `tessera` from PATH that way).
        container = {k: self._rewrite(v, pod, mounts) for k, v in env.items()}
        return {**self.image_env, "HOSTNAME": pod.name, **container}

    def _value_from(self, pod: Pod, src: Mapping[str, Any]) -> str | None:
        for key, kind in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
            if key in src:
                ref = src[key]
                optional = bool(ref.get("optional"))
                data = self._data(kind, ref["name"], optional=optional)
                if ref["key"] not in data:
                    if optional:
                        return None
                    raise _Missing(f'{kind} "{ref["name"]}" has no key {ref["key"]!r}')
                return data[ref["key"]].decode()
        raise PodFailed(f"{pod.name}: env valueFrom {sorted(src)} is not emulated")

    def _data(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            if kind == "secret":
                obj = self.core.read_namespaced_secret(name, self.namespace)
                return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
            cm = self.core.read_namespaced_config_map(name, self.namespace)
            return {k: v.encode() for k, v in (cm.data or {}).items()}
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            if optional:
                return {}
            raise _Missing(f'{kind} "{name}" not found') from None

    def _rewrite(self, value: str, pod: Pod, mounts: Mapping[str, pathlib.Path]) -> str:
        flag, eq, rest = value.partition("=")
        if eq and flag.startswith("-"):
            return f"{flag}={self._rewrite(rest, pod, mounts)}"
        for mount in sorted(mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount + "/"):
                return str(pod.root) + value
        return self.resolve(value)

    def _resolve_one(self, m: re.Match[str]) -> str:
        if m["ns"] != self.namespace:
            return m[0]
        svc = next((s for s in self._services if s["metadata"]["name"] == m["svc"]), None)
        if svc is None:
            return m[0]
        port = next((p for p in svc["spec"]["ports"] if str(p["port"]) == m["port"]), None)
        selector = svc["spec"].get("selector") or {}
        for name, dep in self._deployments.items():
            labels = dep["spec"]["template"]["metadata"].get("labels") or {}
            if port is not None and selector and selector.items() <= labels.items():
                local = self.ports.get(name, {}).get(str(port.get("targetPort", port["port"])))
                if local is not None:
                    return f"127.0.0.1:{local}"
        return m[0]

    # --- status -----------------------------------------------------------------------------------
    def _write_status(self, name: str, dep: Mapping[str, Any]) -> None:
        with self._lock:
            pod = self.pods.get(name)
            n = 0 if pod is None else 1
            ready = int(pod is not None and pod.ready and pod.running())
        st = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": n - ready,
        }
        if self._written.get(name) == st:
            return
        try:
            self.apps.patch_namespaced_deployment_status(name, self.namespace, {"status": st})
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:  # deleted since the list
                return
            raise
        self._written[name] = st
        self.status_log.setdefault(name, []).append(st)


class _Missing(Exception):
    """A Secret, ConfigMap, key or host folder the pod needs is not there (yet)."""


def _rebind(argv: list[str], ports: Mapping[str, int]) -> list[str]:
    """`--host 0.0.0.0` -> 127.0.0.1 and `--port <containerPort>` -> its loopback port."""
    out: list[str] = []
    it: Iterator[str] = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in ("--host", "--port"):
            if not eq:
                out.append(flag)
                value = next(it, "")
            else:
                out.append(flag)
            if flag == "--host" and value == "0.0.0.0":  # noqa: S104 - rewritten to loopback
                value = "127.0.0.1"
            elif flag == "--port":
                value = str(ports.get(value, value))
            out.append(value)
        else:
            out.append(arg)
    return out


def _schedulable(template: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """The scheduler's filters that matter here: Ready, not cordoned, nodeSelector, and the
    required node affinity."""
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return False
    spec = template.get("spec", {})
    labels = node.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms")
    if not required:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    return any(
        all(_match(r, labels) for r in term.get("matchExpressions") or [])
        and all(_match(r, fields) for r in term.get("matchFields") or [])
        for term in required
    )


def _match(req: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    op, key, wanted = req["operator"], req["key"], req.get("values") or []
    checks: dict[str, Callable[[], bool]] = {
        "In": lambda: values.get(key) in wanted,
        "NotIn": lambda: values.get(key) not in wanted,
        "Exists": lambda: key in values,
        "DoesNotExist": lambda: key not in values,
    }
    if op not in checks:
        raise PodFailed(f"node selector operator {op} is not emulated")
    return checks[op]()
