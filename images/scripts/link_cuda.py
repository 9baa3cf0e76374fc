"""Point /usr/local/cuda at the CUDA toolkit that NVIDIA's PyPI wheels installed.

JIT compilers (flashinfer, triton, torch.utils.cpp_extension) look for CUDA_HOME or
/usr/local/cuda. On the `pypi` base CUDA exists only inside the venv's nvidia wheels, so
link it there once instead of installing a second copy. A real /usr/local/cuda (the
`nvidia` base) is left alone.
"""

import os
import site
import sys
from pathlib import Path

LINK = Path("/usr/local/cuda")


def wheel_cuda_root() -> Path | None:
    for packages in site.getsitepackages():
        for nvcc in sorted(Path(packages, "nvidia").glob("*/bin/nvcc")):
            return nvcc.parent.parent
    return None


def main() -> int:
    if LINK.exists() or LINK.is_symlink():
        return 0
    root = wheel_cuda_root()
    if root is None:
        return 0  # this layer has no nvcc wheel; nothing to link
    os.symlink(root, LINK)
    print(f"linked {LINK} -> {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
