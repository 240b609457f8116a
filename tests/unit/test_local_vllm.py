"""`tessera up` with an `engine: vllm` node (examples/local-vllm.yaml), without processes: the
plan (a full replica beside a split chain), the children and the router's endpoints."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from tessera.api.vllm import MODULE
from tessera.errors import Infeasible, InvalidInput
from tessera.local import launcher as launcher_mod
from tessera.local.config import parse_config
from tessera.local.launcher import Launcher
from tessera.modelfiles import ModelSizes

REPO = pathlib.Path(__file__).resolve().parents[2]
SMOLLM2 = ModelSizes(30, 576, 14_160_384, 1536, 113_246_208, True)  # fp32, as in the package


def _raw() -> dict:
    return yaml.safe_load((REPO / "examples/local-vllm.yaml").read_text())


def _launcher(raw: dict, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Launcher:
    monkeypatch.setattr(launcher_mod, "read_config", lambda _d: {})
    monkeypatch.setattr(launcher_mod, "sizes", lambda _c, _dtype: SMOLLM2)
    python = tmp_path / "venv-vllm" / "python"
    python.parent.mkdir()
    python.touch()
    raw["vllm"]["python"] = str(python)
    return Launcher(parse_config(raw), tmp_path / "model", port=18000, run_dir=tmp_path / "run")


def test_the_vllm_node_is_a_full_replica_beside_a_split_chain(tmp_path, monkeypatch) -> None:
    up = _launcher(_raw(), tmp_path, monkeypatch)
    problem, plan = up.plan()
    ranges = {p.server: (p.start, p.end) for p in plan.placement}
    assert ranges["node-big"] == (0, 30)
    assert ranges["node-a"][0] == 0 and ranges["node-b"][1] == 30  # a chain without node-big
    assert ranges["node-a"][1] >= ranges["node-b"][0]
    up.build_children(problem, plan)
    endpoints = json.loads((tmp_path / "run" / "endpoints.json").read_text())
    assert endpoints["node-big"].startswith("vllm+http://127.0.0.1:")
    assert endpoints["node-a"].startswith("http://127.0.0.1:")
    big = next(c for c in up.children if c.name == "node-big")
    assert big.argv[1:3] == ["-m", MODULE]
    assert big.argv[big.argv.index("--max-model-len") + 1] == "1280"
    assert big.health_url == endpoints["node-big"].removeprefix("vllm+") + "/health"
    token = (tmp_path / "run" / "worker-token").read_text().strip()
    assert big.env is not None and big.env["VLLM_API_KEY"] == token
    assert big.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_a_vllm_node_without_room_for_its_share_is_refused(tmp_path, monkeypatch) -> None:
    raw = _raw()
    raw["nodes"][0]["memory_bytes"] = "600Mi"  # the weights fit, four sessions do not
    with pytest.raises(Infeasible, match="node-big"):
        _launcher(raw, tmp_path, monkeypatch).plan()


def test_vllm_nodes_are_not_pinned_and_need_their_venv(tmp_path, monkeypatch) -> None:
    raw = _raw()
    raw["nodes"][0]["blocks"] = "0:30"
    with pytest.raises(InvalidInput, match="blocks"):
        parse_config(raw)
    up = _launcher(_raw(), tmp_path, monkeypatch)
    up.cfg = up.cfg.model_copy(
        update={"vllm": up.cfg.vllm.model_copy(update={"python": str(tmp_path / "none")})}
    )
    problem, plan = up.plan()
    with pytest.raises(InvalidInput, match="make vllm-venv"):
        up.build_children(problem, plan)


def test_a_pool_of_vllm_nodes_only(tmp_path, monkeypatch) -> None:
    raw = _raw()
    raw["nodes"] = [raw["nodes"][0]]
    up = _launcher(raw, tmp_path, monkeypatch)
    _problem, plan = up.plan()
    assert [(p.server, p.start, p.end) for p in plan.placement] == [("node-big", 0, 30)]
    assert dict(plan.routes) == {"router": ("node-big",)}
