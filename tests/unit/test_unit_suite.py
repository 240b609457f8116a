"""tests/unit stays fast: none of its modules loads torch (tests that run a model belong under
tests/integration/worker). Checked in a fresh interpreter, since this one may have loaded torch
for other tests already."""

from __future__ import annotations

import pathlib
import subprocess
import sys

UNIT = pathlib.Path(__file__).resolve().parent


def test_no_unit_test_module_imports_torch():
    modules = sorted(f"tests.unit.{p.stem}" for p in UNIT.glob("test_*.py"))
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=UNIT.parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"loads torch, or fails to import: {result.stderr.strip()}"
