"""Shared test plumbing. Integration tests use the real Docker engine: under CI=true a
missing engine or image is a failure, never a skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def need(condition: bool, reason: str) -> None:
    """Skip locally when a real part is missing; fail in CI, where it must be there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing part is a failure)")
    pytest.skip(reason)


@pytest.fixture
def kit_tree(tmp_path: Path) -> Path:
    """A private copy of the kit's data (images/, envs/, kit.toml) to change in a test."""
    for name in ("images", "envs"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name)
    shutil.copy(REPO_ROOT / "kit.toml", tmp_path / "kit.toml")
    shutil.copy(REPO_ROOT / "uv.lock", tmp_path / "uv.lock")  # the base's uv is hash-pinned from it
    return tmp_path
