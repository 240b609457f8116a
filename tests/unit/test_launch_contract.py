"""The launch contract (tessera.api.launch) and the plan set (tessera.placement.planset): what the
operator and `tessera up` render is what the deployables' own CLIs read back, field by field.

`_every_field_set` sets each field of a launch away from its default, so a field added to the
contract is rendered and parsed here without a change to this file (a field of a new type makes
it fail until the type is taught below)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Any

import pytest
import yaml

from tessera.api.launch import RouterLaunch, WorkerLaunch
from tessera.cli import EXIT_INVALID, build_parser, main
from tessera.cli import router as router_cli
from tessera.cli import worker as worker_cli
from tessera.local.config import build_problem, parse_config
from tessera.local.launcher import Launcher
from tessera.operator import inventory, manifests
from tessera.placement import solve
from tessera.placement.planset import (
    ENDPOINTS_FILE,
    PLAN_FILE,
    PROBLEM_FILE,
    PlanFiles,
    PlanSet,
    parse_plan_set,
)
from tessera.router.reload import read_plan_set

from .k8s_samples import node, spec
from .test_local_launcher import SMOLLM2

REPO = pathlib.Path(__file__).resolve().parents[2]
OWNER = manifests.Owner("llama", "prod", "uid-1")
IMAGES = manifests.Images("reg/worker:1", "reg/router:1")
Launch = WorkerLaunch | RouterLaunch


def _parse(argv: list[str]) -> Launch:
    """What the deployable makes of its command line (argv[0]: the subcommand)."""
    args = build_parser().parse_args(argv)
    if argv[0] == "worker":
        return worker_cli.launch_of(args)
    return router_cli.launch_of(args)


def _other_value(cls: type[Launch], f: dataclasses.Field[Any]) -> Any:
    """A value of field `f` that is not its default (nor the CLI's)."""
    hint = typing.get_type_hints(cls)[f.name]
    choices = f.metadata["flag"].choices
    if choices:
        return choices[-1]
    if hint is bool:
        return True
    if hint == tuple[int, int]:
        return (3, 9)
    if hint == tuple[tuple[str, str], ...]:
        return (("far", "int8-outlier"), ("near", "float16"))
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    by_type: dict[Any, Any] = {str: f"x-{f.name}", int: 7, float: 2.5}
    if base not in by_type:
        raise AssertionError(f"{cls.__name__}.{f.name}: teach this test the type {hint}")
    return by_type[base]


def _every_field_set(cls: type[Launch]) -> Any:
    values = {f.name: _other_value(cls, f) for f in dataclasses.fields(cls)}
    launch = cls(**values)
    for f in dataclasses.fields(cls):
        assert values[f.name] not in (f.default, f.metadata["flag"].cli_default), f.name
    return launch


@pytest.mark.parametrize("cls", [WorkerLaunch, RouterLaunch])
@pytest.mark.parametrize("joined", [False, True], ids=["k8s-args", "joined"])
def test_every_field_reaches_the_cli_and_comes_back(cls: type[Launch], joined: bool) -> None:
    launch = _every_field_set(cls)
    argv = launch.argv(joined=joined)
    assert argv[0] == cls.COMMAND
    for f in dataclasses.fields(cls):
        name = "--" + f.name.replace("_", "-")
        assert any(a == name or a.startswith(name + "=") for a in argv), name
    assert _parse(argv) == launch


def test_defaults_are_left_out_and_what_a_launcher_decides_is_always_said() -> None:
    launch = WorkerLaunch(
        model="/m",
        blocks=(0, 4),
        memory_bytes=1000,
        name="",
        host="127.0.0.1",
        port=8001,
        max_length=2048,
        dtype="float32",
        max_batch_tokens=256,
        token_file=None,
    )
    assert launch.argv() == [
        "worker", "--model", "/m", "--blocks", "0:4", "--memory-bytes", "1000", "--name", "",
        "--host", "127.0.0.1", "--port", "8001", "--max-length", "2048", "--dtype", "float32",
        "--max-batch-tokens", "256",
    ]  # fmt: skip
    assert _parse(launch.argv()) == launch
    assert _parse(launch.argv(joined=True)) == launch


def test_a_byte_size_with_a_suffix_and_bad_blocks_are_read_at_the_cli_edge(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["worker", "--model", "/m", "--blocks", "2:5", "--memory-bytes", "2Gi"]
    assert _parse(argv).memory_bytes == 2 * 2**30  # type: ignore[union-attr]
    assert main(["worker", "--model", "/m", "--blocks", "5:2", "--memory-bytes", "1G"]) == 2
    assert "--blocks" in capsys.readouterr().err
    bad = ["router", "--plan", "p", "--problem", "q", "--endpoints", "e", "--model-name", "m"]
    code = main([*bad, "--tokenizer", "t", "--wire-dtypes", '{"a": "int3"}'])
    assert code == EXIT_INVALID and "--wire-dtypes" in capsys.readouterr().err


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_the_operators_pods_run_launches_the_cli_reads_back(batch_invariant: bool) -> None:
    s = spec(stages={"batchInvariant": batch_invariant}, router={"apiKeySecret": "keys"})
    inv = inventory.build(s, [node("n1", gpus=2)])
    info = inv.servers[1]
    dep = manifests.stage_deployment(OWNER, s, info, (10, 45), IMAGES)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    worker = _parse(args)
    assert worker == manifests.worker_launch(s, info, 10, 45)
    assert worker.argv() == args
    router_dep = manifests.router_deployment(OWNER, s, IMAGES, "zone", "a")
    rargs = router_dep["spec"]["template"]["spec"]["containers"][0]["args"]
    router = _parse(rargs)
    assert isinstance(router, RouterLaunch) and router.argv() == rargs
    assert router.api_keys_file == manifests.API_KEYS_FILE
    mount = manifests.PLAN_MOUNT
    assert PlanFiles.in_dir(pathlib.Path(mount)) == PlanFiles(
        pathlib.Path(router.plan), pathlib.Path(router.problem), pathlib.Path(router.endpoints)
    )


def test_tessera_up_runs_launches_the_cli_reads_back_over_the_plan_set_it_wrote(
    tmp_path: pathlib.Path,
) -> None:
    data = yaml.safe_load((REPO / "examples/local.yaml").read_text())
    data["nodes"][2]["bandwidth_mbit_s"] = 10  # a slow link: a wire dtype for the router
    cfg = parse_config(data)
    problem = build_problem(cfg, SMOLLM2)
    plan = solve(problem, cfg.solver)
    up = Launcher(cfg, tmp_path / "model", port=18000, run_dir=tmp_path / "run", out=print)
    up.choose_wires(problem, plan, SMOLLM2.hidden_size)
    up.build_children(problem, plan)
    launches = {}
    for child in up.children:
        argv = child.argv[3:]  # after `python -c "...main()"`
        launches[child.name] = launch = _parse(argv)
        assert launch.argv(joined=True) == argv
    router = launches.pop("router")
    assert isinstance(router, RouterLaunch)
    assert dict(router.wire_dtypes) == up.wire_dtypes != {}
    workers = {name: w for name, w in launches.items() if isinstance(w, WorkerLaunch)}
    assert {(w.name, w.blocks) for w in workers.values()} == {
        (p.server, (p.start, p.end)) for p in plan.placement
    }
    files = PlanFiles(
        pathlib.Path(router.plan), pathlib.Path(router.problem), pathlib.Path(router.endpoints)
    )
    assert files == PlanFiles.in_dir(up.run_dir)
    read = read_plan_set(files)
    assert read.problem == problem and read.plan == plan
    assert read.endpoints == {w.name: f"http://127.0.0.1:{w.port}" for w in workers.values()}


def test_the_plan_set_texts_parse_back_in_both_layouts() -> None:
    s = spec()
    inv = inventory.build(s, [node("gpu-a"), node("gpu-b", gpus=2)])
    plan = solve(inv.problem)
    urls = manifests.endpoints_map(OWNER, plan)
    plan_set = PlanSet(inv.problem, plan, urls)
    compact, indented = plan_set.texts(compact=True), plan_set.texts(compact=False)
    assert list(compact) == list(indented) == [PLAN_FILE, PROBLEM_FILE, ENDPOINTS_FILE]
    assert all("\n" not in t for t in compact.values())
    assert all("\n" in t for t in indented.values())
    for texts in (compact, indented):
        docs = {name: json.loads(text) for name, text in texts.items()}
        again = parse_plan_set(docs[PROBLEM_FILE], docs[PLAN_FILE], docs[ENDPOINTS_FILE])
        assert again == plan_set
    assert manifests.plan_configmap(OWNER, inv.problem, plan)["data"] == compact
