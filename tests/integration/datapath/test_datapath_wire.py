"""`tessera up` with a slow node link: the placement gives it outlier-aware int8, the worker
emulates the bandwidth, and the answer still equals single-process transformers (one of the
20 prompts of docs/wire.md), while the router's /metrics shows the smaller bytes."""

from __future__ import annotations

import re

import httpx
import pytest
import torch
import yaml
from datapath_procs import REPO, Up

MODEL = "smollm2-135m-instruct"
NEW = 12
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def slow_pool(smollm2_dir, tmp_path_factory):
    data = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    data["workload"]["concurrent_requests"] = 2
    data["nodes"] = [
        {"name": "node-big", "memory_bytes": "800Mi", "blocks": "0:15"},
        {"name": "node-far", "memory_bytes": "800Mi", "blocks": "15:30", "bandwidth_mbit_s": 10},
    ]
    data["lossy_wire"] = True
    run = tmp_path_factory.mktemp("wire")
    (run / "pool.yaml").write_text(yaml.safe_dump(data))
    pool = Up(run / "pool.yaml", run / "run")
    try:
        pool.wait_ready()
        yield pool
    finally:
        pool.stop()


def _transformers_greedy(smollm2_dir) -> tuple[str, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False)
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True), len(ids)


def test_a_slow_link_gets_int8_outlier_and_the_answer_is_unchanged(slow_pool, smollm2_dir):
    line = next(x for x in slow_pool.lines if x.startswith("wire to node-far"))
    assert "int8-outlier" in line
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": NEW, "temperature": 0}
    r = httpx.post(f"{slow_pool.base_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.headers["x-tessera-chain"] == "node-big>node-far"
    expected, prompt_tokens = _transformers_greedy(smollm2_dir)
    assert r.json()["choices"][0]["message"]["content"] == expected
    metrics = httpx.get(f"{slow_pool.base_url}/metrics").text
    found = re.search(
        r'tessera_wire_bytes_total\{direction="received",server="node-big"\} (\S+)', metrics
    )
    assert found is not None
    # node-big sent the hidden states of the prompt and of NEW - 1 decode steps: in float16
    # they would take 2 bytes per value, framing aside; outlier int8 takes about 1.09.
    hidden_values = (prompt_tokens + NEW - 1) * 576
    assert 0 < float(found.group(1)) < 2 * hidden_values
