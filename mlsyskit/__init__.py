"""mlsyskit: reproducible, layered, uv-locked Docker environments for ML-systems tutorials."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_PREFIX = "mlsyskit"
LABEL_PREFIX = "org.mlsyskit"
