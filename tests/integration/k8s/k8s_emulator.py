"""An emulated Kubernetes API server for the operator tests (kmock 0.8 + fixes).

From reference/k8s-testing.md (appendix), plus what the operator tests and bench need:
- metadata.generation grows when a patch touches `spec` (readiness is judged against it);
- a cascading garbage collector: deleting an object deletes every object whose
  ownerReferences name its uid, as kube-controller-manager does. The operator adds no finalizer
  and relies on this, so the tests check that owner references are right;
- no request history (kmock scans all past requests on every request);
- `EmulatorProcess`: the emulator in a child process (`python k8s_emulator.py`), so that the
  operator under test does not share its GIL.
Relies on kmock internals; re-check on any kmock upgrade.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import secrets
import threading
import uuid
from typing import Any

import jsonpatch
import kmock
from kmock import action


class Emulator(kmock.KubernetesEmulator):
    _counter = itertools.count(1)
    _last_rv = 0
    forget_served: bool = True  # False: kmock's unbounded history (only to compare, in bench)

    async def _handle(self, request: Any) -> Any:
        # kmock keeps every request and scans that history on each new one (O(requests served)).
        # Keep only the requests in flight (kmock matches a request against them), so a request
        # costs the same at the 10,000th as at the first, as on a real API server.
        try:
            return await self._handle_in_flight(request)
        finally:
            if self.forget_served:
                served = next((i for i, r in enumerate(self._requests) if r is request), None)
                if served is not None:
                    del self._requests[served]

    async def _handle_in_flight(self, request: Any) -> Any:
        res = request.resource
        if res is not None and request.action in (action.CREATE, action.UPDATE):
            rv = str(next(self._counter))
            type(self)._last_rv = int(rv)
            data = request.data
            if request.action == action.CREATE and isinstance(data, dict):
                md = data.setdefault("metadata", {})
                if not md.get("name") and md.get("generateName"):
                    md["name"] = md["generateName"] + secrets.token_hex(3)
                if request.namespace:
                    md.setdefault("namespace", request.namespace)
                md.setdefault("uid", str(uuid.uuid4()))
                md.setdefault("generation", 1)
                md.setdefault(
                    "creationTimestamp",
                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
                md["resourceVersion"] = rv
                if res.plural == "customresourcedefinitions":
                    self._register_crd(data)
            elif isinstance(data, list):  # JSON-patch (kopf's finalizers etc.)
                data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": rv})
            elif isinstance(data, dict):  # merge-patch
                data["metadata"] = data.get("metadata") or {}
                data["metadata"]["resourceVersion"] = rv
                if "spec" in data and request.subresource is None:
                    current = self._current(res, request.namespace, request.name)
                    if current is not None:
                        old = current.get("metadata", {}).get("generation", 1)
                        data["metadata"]["generation"] = old + 1
        orphan = None
        if res is not None and request.action == action.CREATE and isinstance(request.data, dict):
            refs = request.data.get("metadata", {}).get("ownerReferences") or []
            if refs and not any(self._uid_exists(r.get("uid")) for r in refs):
                orphan = request.data["metadata"]["uid"]  # the owner is gone: GC deletes it
        owner_uid = None
        if (
            res is not None
            and request.action in (action.DELETE, action.UPDATE)
            and request.name is not None
        ):
            current = self._current(res, request.namespace, request.name)
            owner_uid = current.get("metadata", {}).get("uid") if current else None
        try:
            result = await super()._handle(request)
        except jsonpatch.JsonPatchException as e:  # the real apiserver answers 422
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(e)) from None
        # Background cascading deletion: once the owner is really gone (a DELETE, or the patch
        # that removes its last finalizer), its dependents go.
        if owner_uid is not None and self._current(res, request.namespace, request.name) is None:
            await self._collect_garbage(owner_uid)
        if orphan is not None:
            await self._collect(lambda raw: raw.get("metadata", {}).get("uid") == orphan)
        return result

    def _uid_exists(self, uid: str | None) -> bool:
        return any(
            not o.deleted and o.raw.get("metadata", {}).get("uid") == uid
            for o in self._objects.values()
        )

    def _current(self, res: Any, namespace: str | None, name: str | None) -> dict[str, Any] | None:
        key = (res, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        raw: dict[str, Any] = self._objects[key].raw
        return raw

    async def _collect_garbage(self, uid: str) -> None:
        """Delete dependents whose ownerReferences point at `uid`, recursively."""

        def owned(raw: dict[str, Any]) -> bool:
            refs = raw.get("metadata", {}).get("ownerReferences") or []
            return any(r.get("uid") == uid for r in refs)

        await self._collect(owned)

    async def _collect(self, doomed_if: Any) -> None:
        doomed = []
        async with self._lock:
            for key, obj in list(self._objects.items()):
                if not obj.deleted and doomed_if(obj.raw):
                    doomed.append((key, obj.raw.get("metadata", {}).get("uid")))
            for key, _ in doomed:
                raw = self._objects[key].raw
                self._objects[key].delete()
                await self._buses[key[0]].put({"type": "DELETED", "object": raw})
        for _, child_uid in doomed:
            if child_uid:
                await self._collect_garbage(child_uid)

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for v in spec.get("versions", []):
            self.resources[f"{spec['group']}/{v['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names.get("kind"),
                singular=names.get("singular"),
                namespaced=spec.get("scope") == "Namespaced",
                shortnames=set(names.get("shortNames", [])),
                verbs={
                    "create",
                    "delete",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                    "deletecollection",
                },
                subresources={"status"} if "status" in (v.get("subresources") or {}) else set(),
            )

    async def _serve_list(self, request: Any) -> Any:
        result = await super()._serve_list(request)
        res = request.resource
        info = self.resources[res] if res in self.resources else None
        result["metadata"]["resourceVersion"] = str(self._last_rv)
        kind = info.kind if info and info.kind else res.plural.capitalize()
        result["kind"] = f"{kind}List"
        result["apiVersion"] = f"{res.group}/{res.version}" if res.group else res.version
        return result

    async def _serve_watch(self, request: Any) -> Any:
        # Subscribe first, then replay objects newer than ?resourceVersion (no lost events).
        yield b""
        bus = self._buses[request.resource]
        marker = await bus.mark()
        try:
            since_raw = request.params.get("resourceVersion", "")
            since = int(since_raw) if since_raw.isdigit() else 0
            async with self._lock:
                objs = self._KubernetesEmulator__get_objs(request, strict=False)
                events = [
                    {"type": "ADDED", "object": o.raw}
                    for o in objs
                    if not o.deleted
                    and int(o.raw.get("metadata", {}).get("resourceVersion", 0)) > since
                ]
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                md = event.get("object", {}).get("metadata", {})
                if self._KubernetesEmulator__check(
                    request, request.resource, md.get("namespace"), md.get("name"), strict=False
                ):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _serve_version(self, request: Any) -> Any:
        result = await super()._serve_version(request)
        result["groupVersion"] = result["groupVersion"].lstrip("/")
        return result


class EmulatorThread:
    """The emulator on its own loop and thread, for the sync KopfRunner and kubernetes client."""

    def __init__(self, forget_served: bool = True) -> None:
        self.forget_served = forget_served

    def __enter__(self) -> EmulatorThread:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(self._main()), daemon=True
        )
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the emulated API server did not start")
        return self

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        emulator = Emulator()
        emulator.forget_served = self.forget_served
        async with emulator as k, kmock.Server(k) as srv:
            k.resources.load_bundled()
            self.kmock, self.url = k, str(srv.url).rstrip("/")
            self.ready.set()
            await self.stop.wait()

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()  # its selector and self-pipe, else ResourceWarnings (errors)


def _serve_until_stdin_closes() -> None:
    """`python k8s_emulator.py`: print the URL, serve until stdin closes (the parent is done)."""
    import logging
    import sys

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    with EmulatorThread() as srv:
        print(srv.url, flush=True)
        sys.stdin.read()


class EmulatorProcess:
    """The emulator in its own process, so that it does not share a GIL with the operator
    under test (as a real API server would not). Same `url` as EmulatorThread."""

    def __enter__(self) -> EmulatorProcess:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout is None:
            raise RuntimeError("no pipe to the emulated API server")
        self.url: str = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.proc.kill()
            raise RuntimeError("the emulated API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            raise


def write_kubeconfig(path: Any, url: str) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "{url}"}}}}]
users: [{{name: emu, user: {{token: fake}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: emu, namespace: default}}}}]
current-context: emu
"""
    )


if __name__ == "__main__":
    _serve_until_stdin_closes()
