"""Issue 12 acceptance: a pool where every block has ONE holder (no replica) keeps an answer
whose stage is killed mid-stream: `tessera up` restarts the stage, the router's probe sees it
ready (the down mark ends there, not after a fixed time), the failover (which waits long enough
for a restart) re-opens the sessions and replays the answer so far on the restarted stage, and
the text equals the undisturbed greedy answer."""

from __future__ import annotations

import os
import signal

import pytest
import yaml
from reliability_procs import KEY, REPO, Pool, Up, metric, stream_chat, worker_pid

PROMPT = "Tell me a short story about a lighthouse keeper and a dragon."
NEW = 16
SINGLE = ("a", "b", "c")


@pytest.fixture(scope="module")
def single_pool(smollm2_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    cfg = yaml.safe_load((REPO / "examples" / "local-ha.yaml").read_text())
    cfg["nodes"] = [n for n in cfg["nodes"] if n["name"] in SINGLE]
    keys = d / "keys"
    keys.write_text(f"{KEY}\n")
    cfg["router"].update(api_keys_file=str(keys), down_s=0, failover_timeout_s=60)
    (d / "pool.yaml").write_text(yaml.safe_dump(cfg))
    up = Up(d / "pool.yaml", d / "run")
    try:
        up.wait_ready()
        p = Pool(up, keys, SINGLE)
        with p.http:  # its kept-alive connections closed after the module
            p.wait_all_up()
            yield p
    finally:
        up.stop()


@pytest.mark.parametrize("hop", [1], ids=["middle"])
def test_a_killed_single_holder_is_restarted_and_finishes_the_answer(single_pool, hop):
    reference, chain, errors = stream_chat(single_pool, PROMPT, NEW)
    assert chain == list(SINGLE) and not errors and reference
    before = metric(single_pool, "tessera_failovers_total")
    killed: list[int] = []

    def kill(chain, n_tokens):
        if n_tokens < 4:
            return False
        pid = worker_pid(single_pool.endpoints[chain[hop]])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return True

    text, chain, errors = stream_chat(single_pool, PROMPT, NEW, kill)
    assert killed and not errors
    assert text == reference
    assert chain == list(SINGLE)  # the only chain there is: the restarted stage finished it
    assert worker_pid(single_pool.endpoints[SINGLE[hop]]) != killed[0]  # a new process
    assert metric(single_pool, "tessera_failovers_total") == before + 1
