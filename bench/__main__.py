"""`make bench`: run every benchmark module (or those named: `python -m bench placement sim`).

Each module under bench/ with a `main() -> None` prints its own table. Figures are ratios against
a baseline measured in the same run, because this machine is shared and noisy.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench

# Run only on their own: each builds the 3.4 GB vLLM venv first and takes its own options
# (`make bench-peer`, `make bench-vllm`); gpu needs a CUDA GPU (`python -m bench gpu` there).
OPT_IN = {"peer_vllm", "vllm_engine", "gpu"}


def main(names: list[str]) -> None:
    available = sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )
    chosen = names or [n for n in available if n not in OPT_IN]
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {available}")
    for name in chosen:
        print(f"\n=== bench/{name}.py ===", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"(bench/{name}.py took {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
