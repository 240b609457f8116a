"""`tessera up examples/local.yaml` as real processes on loopback, used with the official
`openai` client: answers equal single-process transformers, streaming, concurrency, every error
path with its OpenAI body, supervision of a killed stage, and a clean Ctrl-C.

The tests of this module share one process tree (module fixture `up`) and run in file order;
the last one stops it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shlex
import signal
import subprocess
import time

import httpx
import openai
import pytest
import torch
from datapath_procs import TESSERA, free_port

MODEL = "smollm2-135m-instruct"
NEW = 12


@pytest.fixture(scope="module")
def client(up):
    with openai.OpenAI(
        base_url=f"{up.base_url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as c:
        yield c


@pytest.fixture(scope="module")
def hf(smollm2_dir):
    """Single-process transformers: greedy continuation ids for a prompt's ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()

    def greedy(ids: list[int], n: int) -> str:
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        return tok.decode(out[0, len(ids) :], skip_special_tokens=True)

    def chat_ids(messages):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    greedy.model = model  # for the logprobs test
    return greedy, chat_ids, tok


def test_printed_curl_answers(up):
    curl = next(line for line in up.lines if line.startswith("curl "))
    out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60, check=True)
    body = json.loads(out.stdout)
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] >= 1


def test_chat_equals_single_process_transformers_and_names_the_chain(client, hf):
    greedy, chat_ids, _ = hf
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=NEW, temperature=0
    )
    chain = raw.headers["x-tessera-chain"].split(">")
    assert len(chain) >= 2 and chain[0] == "node-big"
    reply = raw.parse()
    assert reply.choices[0].message.content == greedy(chat_ids(messages), NEW)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == NEW
    assert reply.usage.prompt_tokens == len(chat_ids(messages))


def test_streamed_chat_equals_non_streamed_and_reports_usage(client):
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=NEW, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=NEW,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == NEW and chunks[-1].choices == []


def test_text_completion_streamed_and_not(client, hf):
    greedy, _, tok = hf
    prompt = "The sea is"
    done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=NEW, temperature=0)
    assert done.choices[0].text == greedy(tok(prompt)["input_ids"], NEW)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=NEW, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == done.choices[0].text


def test_logprobs_equal_single_process_transformers_streamed_and_not(client, hf):
    greedy, chat_ids, tok = hf
    messages = [{"role": "user", "content": "Name a fruit."}]
    ask = dict(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    reply = client.chat.completions.create(**ask, logprobs=True, top_logprobs=5)
    content = reply.choices[0].logprobs.content
    ids = chat_ids(messages)
    new = tok(reply.choices[0].message.content, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = greedy.model(torch.tensor([ids + new])).logits[0].float()
    expected = torch.log_softmax(logits[len(ids) - 1 : len(ids) - 1 + len(content)], dim=-1)
    for entry, row in zip(content, expected, strict=True):
        values, top_ids = torch.topk(row, 5)
        assert [t.token for t in entry.top_logprobs] == [tok.decode([int(i)]) for i in top_ids]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-3)
        assert entry.logprob == pytest.approx(values[0].item(), abs=1e-3)  # greedy: the top one
    streamed = [
        e
        for c in client.chat.completions.create(**ask, logprobs=True, top_logprobs=5, stream=True)
        for ch in c.choices
        if ch.logprobs
        for e in ch.logprobs.content
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    text = client.completions.create(model=MODEL, prompt="The sea is", max_tokens=4, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(len(t) <= 3 for t in lp.top_logprobs)


def test_unsupported_parameters_and_a_top_p_of_0_are_400s_naming_them(up):
    for body, param in (
        (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (_chat(response_format={"type": "json_object"}), "response_format"),
        (_chat(top_p=0), "top_p"),
    ):
        r = httpx.post(f"{up.base_url}/v1/chat/completions", json=body)
        _error(r, 400, param=param)


def test_models_list(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_stop_sequence_and_seeded_sampling_are_reproducible(client):
    kwargs = dict(model=MODEL, prompt="One, two, three,", max_tokens=NEW, temperature=0)
    full = client.completions.create(**kwargs).choices[0].text
    stop = full.strip().split(" ")[1]  # a word from the middle
    cut = client.completions.create(**kwargs, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and full.startswith(cut.text)
    seeded = dict(kwargs, temperature=0.9, top_p=0.9, seed=1234)
    assert (
        client.completions.create(**seeded).choices[0].text
        == client.completions.create(**seeded).choices[0].text
    )


def test_four_concurrent_requests_each_equal_their_answer_alone(client):
    prompts = ["Say hello.", "What is 2+2?", "Name a fruit.", "Describe the moon."]

    def ask(p):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=NEW, temperature=0
        )
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


# --- error paths: status code and OpenAI error body ---------------------------------------------


def _error(response: httpx.Response, status: int, param=None, code=None):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def _chat(**overrides):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_chat(temperature=5), "temperature"),
        (_chat(top_p=0), "top_p"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(n=2), "n"),
        (_chat(messages=[]), "messages"),
        (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (_chat(max_tokens=100000), "max_tokens"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(up, body, param):
    _error(httpx.post(f"{up.base_url}/v1/chat/completions", json=body), 400, param=param)


def test_malformed_json_and_missing_fields_are_400(up):
    r = httpx.post(
        f"{up.base_url}/v1/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    _error(r, 400)
    _error(httpx.post(f"{up.base_url}/v1/completions", json={"model": MODEL}), 400, param="prompt")


def test_unknown_model_is_404(up):
    _error(
        httpx.post(f"{up.base_url}/v1/chat/completions", json=_chat(model="gpt-9")),
        404,
        "model",
        "model_not_found",
    )


def test_prompt_longer_than_the_deployment_allows_is_400(up):
    body = {"model": MODEL, "prompt": "word " * 1100, "max_tokens": 2}
    _error(
        httpx.post(f"{up.base_url}/v1/completions", json=body),
        400,
        "prompt",
        "context_length_exceeded",
    )


def test_full_chains_give_429_with_retry_after(up, smollm2_dir):
    """Fill the only stage holding the last blocks through the stage protocol, then ask a
    second router (started with --max-wait-s 0, as a pod would run it) for an answer."""
    endpoints = json.loads((up.run_dir / "endpoints.json").read_text())
    small = endpoints["node-small"]
    token = (up.run_dir / "worker-token").read_text().strip()
    stage = httpx.Client(headers={"authorization": f"Bearer {token}"})  # the deployment token
    state = stage.get(f"{small}/state").json()
    held: list[str] = []
    for tokens in (1024, state["page_tokens"]):  # big sessions, then one page a block to the brim
        while True:
            r = stage.post(
                f"{small}/v1/sessions",
                json={
                    "session_id": f"filler-{len(held)}",
                    "start_block": state["start_block"],
                    "end_block": 30,
                    "max_length": tokens,
                },
            )
            if r.status_code == 429:
                break
            assert r.status_code == 200 and len(held) < 200
            held.append(f"filler-{len(held)}")
    assert stage.get(f"{small}/state").json()["free_slots"] < 30 - state["start_block"]
    port = free_port()
    router = subprocess.Popen(
        [
            *TESSERA,
            "router",
            f"--plan={up.run_dir / 'plan.json'}",
            f"--problem={up.run_dir / 'problem.json'}",
            f"--endpoints={up.run_dir / 'endpoints.json'}",
            f"--model-name={MODEL}",
            f"--tokenizer={smollm2_dir}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--max-wait-s=0",
            f"--worker-token-file={up.run_dir / 'worker-token'}",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/health")
        r = httpx.post(f"{base}/v1/chat/completions", json=_chat())
        err = _error(r, 429, code="no_capacity")
        assert int(r.headers["retry-after"]) >= 1 and "room" in err["message"]
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(timeout=15)
        for sid in held:
            stage.post(f"{small}/v1/sessions/{sid}/close")
        stage.close()


def test_no_complete_chain_is_503(up, smollm2_dir):
    from fastapi.testclient import TestClient

    from tessera.placement import plan_from_dict, problem_from_dict
    from tessera.router.app import RouterConfig, build_app
    from tessera.router.tokenizer import Tokenizer

    problem = problem_from_dict(json.loads((up.run_dir / "problem.json").read_text()))
    plan = plan_from_dict(json.loads((up.run_dir / "plan.json").read_text()))
    dead = {p.server: f"http://127.0.0.1:{free_port()}" for p in plan.placement}
    config = RouterConfig(problem, plan, dead, MODEL, Tokenizer(smollm2_dir), max_wait_s=0.5)
    with TestClient(build_app(config)) as c:
        assert c.get("/health").status_code == 503 and c.get("/readyz").status_code == 503
        assert c.get("/v1/models").json()["data"] == []  # not listed until it can be served
        _error(c.post("/v1/chat/completions", json=_chat()), 503, code="no_chain")


def test_router_metrics_have_the_documented_names(up):
    text = httpx.get(f"{up.base_url}/metrics").text
    for name in (
        "tessera_requests_total",
        "tessera_time_to_first_token_seconds",
        "tessera_time_per_output_token_seconds",
        "tessera_request_latency_seconds",
        "tessera_route_cost_seconds",
        "tessera_failovers_total",
        "tessera_stage_hop_seconds",
    ):
        assert name in text
    assert 'status="404"' in text and 'status="200"' in text


# --- supervision and shutdown (last: they change the process tree) --------------------------------


def test_a_killed_stage_is_restarted_and_serving_resumes(up, client):
    endpoints = json.loads((up.run_dir / "endpoints.json").read_text())
    port = endpoints["node-mid"].rsplit(":", 1)[1]
    pid = _pid_of(f"--port={port}")
    os.kill(pid, signal.SIGKILL)
    up.wait_for("tessera: node-mid exited", timeout_s=10)
    _wait_http(f"{endpoints['node-mid']}/readyz", timeout_s=90)
    _wait_http(f"{up.base_url}/health", timeout_s=10)
    deadline = time.monotonic() + 10
    while True:  # the router sees the stage again on its next poll
        try:
            r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
            break
        except openai.APIStatusError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert r.choices[0].text


def test_ctrl_c_stops_everything_cleanly(up):
    endpoints = json.loads((up.run_dir / "endpoints.json").read_text())
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=30) == 0
    for url in [*endpoints.values(), up.base_url]:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)


def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout_s} s")


def _pid_of(arg: str) -> int:
    """The process whose command line has `arg` (the launcher's child)."""
    for proc in pathlib.Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv and b"worker" in argv:
            return int(proc.name)
    raise AssertionError(f"no process with {arg}")
