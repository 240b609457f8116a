"""The router and the operator never load a MILP solver: pulp is imported only when the MILP solves."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import tessera.operator
import tessera.router


def _modules(package: object) -> list[str]:
    name = package.__name__  # type: ignore[attr-defined]
    paths = package.__path__  # type: ignore[attr-defined]
    return [name] + [f"{name}.{m.name}" for m in pkgutil.iter_modules(paths)]


def test_importing_the_router_and_the_operator_does_not_load_pulp() -> None:
    modules = _modules(tessera.router) + _modules(tessera.operator)
    assert "tessera.router.app" in modules and "tessera.operator.reconcile" in modules
    code = "import importlib, sys\n"
    code += "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "loaded = sorted(m for m in sys.modules if m == 'pulp' or m.startswith('pulp.'))\n"
    code += "print(loaded)\nsys.exit(1 if loaded else 0)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_placement_itself_does_not_load_pulp_until_the_milp_solves() -> None:
    code = "import sys, tessera.placement\nsys.exit(1 if 'pulp' in sys.modules else 0)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
