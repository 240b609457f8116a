"""`tessera plan`: output formats and exit codes."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from tessera.cli import main
from tessera.placement import plan_from_dict, problem_from_dict, validate

PAPER = "examples/problems/paper-clustered-9.yaml"


def test_json_plan_of_the_paper_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", PAPER, "--solver", "cg-bprr", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    problem = problem_from_dict(yaml.safe_load(pathlib.Path(PAPER).read_text()))
    assert data["feasible"] is True and data["solver"] == "cg-bprr"
    assert validate(problem, plan_from_dict(data)) == []
    assert data["predicted"]["per_token_s"] <= data["predicted"]["bound_per_token_s"]


@pytest.mark.parametrize("path", sorted(pathlib.Path("examples/problems").glob("*.yaml")))
@pytest.mark.parametrize("solver", ["cg-bprr", "petals"])
def test_every_example_plans(
    path: pathlib.Path, solver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(path), "--solver", solver, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["feasible"] is True


def test_table_shows_bars_chains_times_bound_and_petals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", PAPER]) == 0
    out = capsys.readouterr().out
    assert "a100-0" in out and "#" in out
    assert "c0: a100-0 > a100-1" in out
    assert "predicted per-token time" in out and "Theorem 2 bound" in out
    assert "PETALS on the same pool" in out


def test_invalid_input_exits_2_naming_the_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(pathlib.Path(PAPER).read_text())
    data["servers"][3]["memory_bytes"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["plan", str(bad)]) == 2
    assert "servers[3](mig-1).memory_bytes" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    assert main(["plan", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2
    assert main(["plan", PAPER, "--time-limit", "-3"]) == 2


def test_infeasible_exits_3_with_reason(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(pathlib.Path(PAPER).read_text())
    data["workload"]["concurrent_requests"] = 5000
    f = tmp_path / "big.yaml"
    f.write_text(yaml.safe_dump(data))
    assert main(["plan", str(f), "--format", "json"]) == 3
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["feasible"] is False
    assert "memory" in out["reason"] and "largest concurrency that fits is" in out["reason"]
    assert "infeasible" in captured.err
