"""mlsyskit: reproducible, layered, uv-locked Docker environments for ML-systems tutorials."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# MLSYSKIT_ROOT lets tests (and forks) point the kit at another tree of images/ and envs/.
REPO_ROOT = Path(os.environ.get("MLSYSKIT_ROOT") or Path(__file__).resolve().parent.parent)
IMAGE_PREFIX = "mlsyskit"
LABEL_PREFIX = "org.mlsyskit"
# pyproject.toml's version (a unit test keeps them equal); bundles record it, and `invoke load`
# refuses a bundle written by another version.
KIT_VERSION = "0.2.0"


def kit_cache(environ: Mapping[str, str] | None = None) -> Path:
    """The kit's own cache folder on this host: $XDG_CACHE_HOME/mlsyskit, else ~/.cache/mlsyskit
    (engine facts, GPU architectures, kernel caches, parsed TOML)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "mlsyskit"
