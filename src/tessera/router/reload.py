"""Plan reload: re-read the plan set (`placement.planset`) when it changes, without a restart.

Kubernetes updates a ConfigMap volume by swapping its `..data` symlink, so the files are watched
by polling: the (inode, mtime, size) of each resolved file, and on a change their content. The
three are parsed and validated together; a set that does not parse, does not fit or cannot be
routed is logged once and ignored (the old plan stays). A good set goes to `LiveChains.replace`:
new requests use it, running requests keep their chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from tessera.errors import InvalidInput, TesseraError
from tessera.placement.planset import PlanFiles, PlanSet, parse_plan_set

from .directory import StageDirectory
from .stage_client import StageClient

__all__ = ["PlanFiles", "PlanReloader", "PlanSet", "load_mapping", "read_plan_set"]

log = logging.getLogger("tessera.router")


def load_mapping(path: pathlib.Path) -> Any:
    """JSON if the name ends in .json, else YAML; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidInput(str(path), f"not valid JSON or YAML: {exc}") from None


def read_plan_set(files: PlanFiles) -> PlanSet:
    """The plan set from its files (the router's start and every reload)."""
    return parse_plan_set(
        load_mapping(files.problem), load_mapping(files.plan), load_mapping(files.endpoints)
    )


def fingerprint(files: PlanFiles) -> tuple[tuple[int, int, int], ...]:
    """(inode, mtime, size) of each file, symlinks followed; a missing file counts as zeros."""
    out = []
    for path in files.paths():
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _contents(files: PlanFiles) -> tuple[bytes, ...]:
    out = []
    for path in files.paths():
        try:
            out.append(path.read_bytes())
        except OSError:
            out.append(b"")  # mid-swap or removed: compares unequal, then fails to parse
    return tuple(out)


class PlanReloader:
    """Owns the stage clients made from the endpoints file; `check` applies a changed set."""

    def __init__(
        self,
        files: PlanFiles,
        directory: StageDirectory,
        clients: Mapping[str, StageClient],
        endpoints: Mapping[str, str],
        make_client: Callable[[str, str], StageClient],
        client_name: str | None,
        on_apply: Callable[[PlanSet], None] | None = None,
    ) -> None:
        self.files = files
        self.directory = directory
        self.make_client = make_client
        self.client_name = client_name
        self.on_apply = on_apply  # e.g. the request limits taken from the problem's workload
        self._clients = dict(clients)
        self._endpoints = dict(endpoints)
        self._stat = fingerprint(files)
        self._seen = _contents(files)  # the last content looked at, applied or refused
        self.reloads = 0  # plans applied
        self.rejected = 0  # changed sets refused

    async def check(self) -> bool:
        """Apply the files if they changed and are valid; True if a new plan was applied."""
        stat = fingerprint(self.files)
        if stat == self._stat:
            return False
        self._stat = stat
        contents = _contents(self.files)
        if contents == self._seen:
            return False  # touched or re-linked, same bytes
        self._seen = contents
        try:
            new = read_plan_set(self.files)
            clients = self._clients_for(new.endpoints)
            names = [c.name for c in new.problem.clients]
            index = names.index(self.client_name) if self.client_name in names else 0
            await self.directory.replace(new.problem, new.plan, clients, client_index=index)
        except TesseraError as exc:
            # Logged before it is counted: whoever waits on the count then finds the reason.
            log.error("plan files changed but are not usable, keeping the old plan: %s", exc)
            self.rejected += 1
            return False
        self._clients, self._endpoints = clients, dict(new.endpoints)
        if self.on_apply is not None:
            self.on_apply(new)
        self.reloads += 1
        log.warning(
            "plan reloaded: %d stages, route %s",
            len(new.plan.placement),
            ">".join(self.directory.plan.routes.get(names[index], ())) if names else "",
        )
        return True

    def _clients_for(self, endpoints: Mapping[str, str]) -> dict[str, StageClient]:
        """Keep the client of a server whose URL is unchanged (its load and sessions carry on).
        New clients open their connection pool on first use: dropping one unused leaks nothing."""
        out: dict[str, StageClient] = {}
        for name, url in endpoints.items():
            same = self._endpoints.get(name) == url and name in self._clients
            out[name] = self._clients[name] if same else self.make_client(name, url)
        return out

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:  # a bug here must not stop the watch nor the router: say it, go on
                log.exception("checking the plan files failed")
