"""The PETALS baseline."""

from __future__ import annotations

import yaml

from tessera.placement import problem_from_dict, solve, validate
from tessera.placement.model import Problem, Server
from tessera.placement.petals import PetalsParams, choose_num_blocks, place


def paper_problem() -> Problem:
    with open("examples/problems/paper-clustered-9.yaml") as f:
        return problem_from_dict(yaml.safe_load(f))


def test_block_counts_match_the_paper_with_petals_memory() -> None:
    # The paper's PETALS runs use 86.13 GB (A100) and 9.1 GB (MIG) and put 53 and 4 blocks there.
    p = paper_problem()
    servers = tuple(
        Server(
            s.name,
            86_130_000_000 if s.name.startswith("a100") else 9_100_000_000,
            s.decode_s_per_block,
            s.prefill_s_per_block,
        )
        for s in p.servers
    )
    p2 = Problem(p.model, p.workload, servers, p.clients, p.links)
    counts = choose_num_blocks(p2, PetalsParams())
    assert counts[:2] == [53, 53]
    assert set(counts[2:]) == {4}


def test_seeded_join_order_is_deterministic_and_plans_validate() -> None:
    p = paper_problem()
    assert place(p, PetalsParams(seed=3)) == place(p, PetalsParams(seed=3))
    for seed in range(5):
        plan = solve(p, "petals", seed=seed)
        assert plan.feasible
        assert validate(p, plan) == []
        assert plan.stats["seed"] == seed


def test_weakest_window_first() -> None:
    # Join order given: the second identical server avoids the first one's blocks.
    p = paper_problem()
    m = [20, 20] + [0] * 7
    placed = {x.server: x.start for x in place(p, PetalsParams(), blocks=m, order=list(range(9)))}
    assert placed["a100-0"] == 0
    assert placed["a100-1"] == 20


def test_gqa_model_preset_sizes_the_pool_like_petals() -> None:
    # Llama-70B (8 KV groups): PETALS reserves 16384 tokens per block and 2 GiB x 8192/14336.
    from tessera.placement.petals import autograd_bytes, cache_bytes_per_block

    with open("examples/problems/mixed-llama70b.yaml") as f:
        p = problem_from_dict(yaml.safe_load(f))
    params = PetalsParams.for_problem(p)
    assert params.attn_cache_tokens == 16384 and params.d_model == 8192
    assert cache_bytes_per_block(p, params) == 4096 * 16384
    assert autograd_bytes(p, params) == int(2 * (1 << 30) * 8192 / 14336)
    # A multi-head model (BLOOM) keeps 4096 tokens.
    assert PetalsParams.for_problem(paper_problem().with_concurrency(1)).attn_cache_tokens == 4096
