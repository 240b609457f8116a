"""The images cannot be built here (no Docker engine): check what the Dockerfiles promise."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = {"worker": "worker", "router": "router", "operator": "operator"}  # file -> extra
PINNED = re.compile(r"^[\w.\-/]+(:\d[\w.\-]*|@sha256:[a-f0-9]{64})$")


def _instructions(name: str) -> list[tuple[str, str]]:
    text = (ROOT / f"Dockerfile.{name}").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_base_images_are_pinned(name: str) -> None:
    stages: set[str] = set()
    froms = [rest for word, rest in _instructions(name) if word == "FROM"]
    assert froms
    for rest in froms:
        parts = rest.split()
        image = parts[0]
        if image not in stages:
            assert PINNED.match(image), f"{image} is not pinned to a version tag or digest"
            assert "latest" not in image
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_a_non_root_user(name: str) -> None:
    users = [rest for word, rest in _instructions(name) if word == "USER"]
    assert users, "no USER"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")
    assert final.isdigit(), "a numeric UID lets runAsNonRoot verify it"
    # the USER comes after the last install step
    words = [w for w, _ in _instructions(name)]
    assert max(i for i, w in enumerate(words) if w == "RUN") < max(
        i for i, w in enumerate(words) if w == "USER"
    )


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_installs_only_its_own_extra_with_pinned_tools(name: str) -> None:
    runs = " && ".join(rest for word, rest in _instructions(name) if word == "RUN")
    extras = re.findall(r"\[([a-z,]+)\]\"", runs)
    assert extras == [IMAGES[name]], extras
    assert "-c /tmp/constraints.txt" in runs, "dependency versions come from docker/constraints.txt"
    for segment in re.findall(r"pip install([^&]*)", runs):
        tokens = segment.split()
        for i, tok in enumerate(tokens):
            if tok.startswith("-") or (i and tokens[i - 1] == "-c") or re.search(r"[/$\"]", tok):
                continue
            assert re.match(r"^[\w.\-]+==[\w.]+$", tok), f"{tok} is not pinned"
    if name != "worker":
        assert "torch" not in runs


def test_constraints_pin_exact_versions() -> None:
    lines = [
        ln
        for ln in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert lines and all(re.match(r"^[A-Za-z0-9_.\-]+==[\w.]+$", ln) for ln in lines), lines[:3]
    assert not any(ln.startswith("tessera==") for ln in lines)


def test_extras_exist_and_keep_torch_out_of_router_and_operator() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in IMAGES.values():
        assert extra in extras
    for extra in ("router", "operator"):
        assert not any(dep.startswith("torch") for dep in extras[extra])
