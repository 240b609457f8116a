"""Helpers for the reliability tests: the HA pool as seen by a test (router, stages, token)."""

from __future__ import annotations

import json
import pathlib
import sys
import time

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "datapath"))
from datapath_procs import REPO, Up, free_port  # noqa: E402, F401

KEY = "sk-test-reliability-1"
STAGES = ("a", "b", "c", "a2", "c2")


class Pool:
    def __init__(self, up: Up, keys_file: pathlib.Path) -> None:
        self.up = up
        self.keys_file = keys_file
        self.base_url = up.base_url
        self.endpoints: dict[str, str] = json.loads((up.run_dir / "endpoints.json").read_text())
        self.token = (up.run_dir / "worker-token").read_text().strip()
        self.http = httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=60)

    def stage_state(self, name: str) -> dict:
        auth = {"authorization": f"Bearer {self.token}"}
        return httpx.get(f"{self.endpoints[name]}/state", headers=auth, timeout=5).json()

    def wait_all_up(self, timeout_s: float = 120) -> None:
        """Until the router routes to every stage again (killed ones are restarted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                up = httpx.get(f"{self.base_url}/health", timeout=2).json().get("stages_up", [])
            except (httpx.TransportError, ValueError):
                up = []
            if set(up) == set(STAGES):
                return
            time.sleep(0.3)
        raise AssertionError(f"not all stages up after {timeout_s} s: {up}")
