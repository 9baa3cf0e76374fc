"""The linter and the type checker, as CI runs them: a regression in either fails the suite.
ruff (pyproject.toml's [tool.ruff]) over the whole checkout; mypy --strict over mlsyskit/
and tasks.py ([tool.mypy])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
