"""`tessera simulate` end to end on the committed example scenarios."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import matplotlib.image
import pytest

from tessera.cli import main
from tessera.sim import POLICIES

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "examples" / "scenarios"
KEYS = {
    "per_token_s",
    "first_token_s",
    "remaining_token_s",
    "p50_per_token_s",
    "p95_per_token_s",
    "p99_per_token_s",
    "mean_wait_s",
    "completed",
    "concurrent_requests",
    "simulated_s",
    "wall_s",
}


def test_clustered_example_prints_every_policys_figures_and_plots(tmp_path: pathlib.Path) -> None:
    png = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tessera.cli import main; sys.exit(main())",
            "simulate",
            str(SCENARIOS / "paper-clustered-9.yaml"),
            "--format",
            "json",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)["policies"]
    assert set(figures) == set(POLICIES)
    for name, fig in figures.items():
        assert set(fig) == KEYS, name
        assert fig["completed"] == 100
        assert fig["per_token_s"] > 0
        assert fig["p50_per_token_s"] <= fig["p95_per_token_s"] <= fig["p99_per_token_s"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    image = matplotlib.image.imread(str(png))
    assert image.shape[0] > 400 and image.shape[1] > 800


@pytest.mark.parametrize("name", ["paper-abovenet", "mixed-llama70b"])
def test_other_examples_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["simulate", str(SCENARIOS / f"{name}.yaml"), "--policy", "cg-bprr", "--policy", "petals"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "cg-bprr" in out and "petals" in out and "s/token" in out


def test_sweep_prints_one_cell_per_value_and_plots_lines(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "sweep.png"
    code = main(
        [
            "simulate",
            str(SCENARIOS / "paper-abovenet.yaml"),
            "--sweep",
            "servers=8,12",
            "--policy",
            "cg-bprr",
            "--policy",
            "petals",
            "--format",
            "json",
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    cells = json.loads(capsys.readouterr().out)
    assert [c["value"] for c in cells] == [8, 12]
    for c in cells:
        assert c["parameter"] == "servers"
        assert set(c["policies"]) == {"cg-bprr", "petals"}
        assert KEYS <= set(c["policies"]["cg-bprr"])
    assert matplotlib.image.imread(str(png)).shape[1] > 600


def test_invalid_scenario_exits_2_naming_the_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("problem: ../nowhere.yaml\narrivals: {rate: 0.5, count: 10, speed: 3}\n")
    assert main(["simulate", str(bad)]) == 2
    assert "arrivals.speed" in capsys.readouterr().err


def test_trace_scenario(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.csv").write_text(
        "arrival_s,client,input_tokens,output_tokens\n0,c0,20,128\n1.5,c1,10,64\n3,c2,20,32\n"
    )
    problem = (ROOT / "examples" / "problems" / "paper-clustered-9.yaml").resolve()
    (tmp_path / "s.yaml").write_text(
        f"problem: {problem}\narrivals: {{trace: t.csv}}\npolicies: [cg-bprr]\n"
    )
    assert main(["simulate", str(tmp_path / "s.yaml"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["policies"]["cg-bprr"]["completed"] == 3
