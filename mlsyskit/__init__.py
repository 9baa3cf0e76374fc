"""mlsyskit: reproducible, layered, uv-locked Docker environments for ML-systems tutorials."""

import os
from pathlib import Path

# MLSYSKIT_ROOT lets tests (and forks) point the kit at another tree of images/ and envs/.
REPO_ROOT = Path(os.environ.get("MLSYSKIT_ROOT") or Path(__file__).resolve().parent.parent)
IMAGE_PREFIX = "mlsyskit"
LABEL_PREFIX = "org.mlsyskit"
# pyproject.toml's version (a unit test keeps them equal); bundles record it, and `invoke load`
# refuses a bundle written by another version.
KIT_VERSION = "0.2.0"
