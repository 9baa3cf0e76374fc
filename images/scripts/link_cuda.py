"""Make /usr/local/cuda a CUDA toolkit built from NVIDIA's PyPI wheels.

JIT compilers (flashinfer, triton, torch.utils.cpp_extension) look for CUDA_HOME or
/usr/local/cuda. On the `pypi` base CUDA exists only inside the venv's nvidia wheels
(`site-packages/nvidia/cu13/{bin,include,lib,nvvm}`), which is not the layout they expect:
torch links `-L$CUDA_HOME/lib64 -lcudart`, and the wheels have `lib/` and only the
versioned `libcudart.so.13` (the unversioned name is what the linker looks for). So the
toolkit is a folder of links into the wheels, nothing copied:

    /usr/local/cuda/bin, include, nvvm -> the wheels' folders
    /usr/local/cuda/lib64/ (and lib -> lib64): a link per library, plus `libX.so -> libX.so.N`
    /usr/local/cuda/lib64/stubs/libcuda.so: what a toolkit's stubs/ holds for linking `-lcuda`

The driver library (libcuda) comes with the driver, not with a toolkit; a toolkit ships a
stub so that programs link where no driver is (CI, image builds). flashinfer's JIT links
`-L$CUDA_HOME/lib64/stubs -lcuda`, and the wheels have no stub, so one is made here: an
empty library whose soname is libcuda.so.1. The linker only records that name (Debian's
linker does not drop it: no --as-needed), and at run time the driver's libcuda.so.1,
which the NVIDIA container toolkit puts in the container, is the one loaded.

A real /usr/local/cuda (the `nvidia` base) is left alone.

The wheels' library folders (`nvidia/*/lib`) also go on the dynamic loader's path
(/etc/ld.so.conf.d/mlsyskit-cuda-wheels.conf, then ldconfig), in every layer that adds
some: torch finds them through its RPATH, but a library loaded before torch, or by a
process that is not Python (SGLang's scheduler preloads torch_memory_saver's hook, which
needs libcudart.so.13), finds nothing else. The NVIDIA container toolkit runs ldconfig
again when it adds the driver, which keeps these entries.

    python3 link_cuda.py [PREFIX]    # default /usr/local/cuda; e.g. /tmp/cuda outside images
"""

import os
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_PREFIX = Path("/usr/local/cuda")
#: A shared library's versioned name: libcudart.so.13, libnvrtc.so.13.0.88, ...
VERSIONED_SO = re.compile(r"^(?P<base>lib[^/]+\.so)\.\d+(\.\d+)*$")


def wheel_cuda_root() -> Path | None:
    """The wheels' toolkit root: the folder whose bin/ holds nvcc (searched on sys.path,
    so a `pip install --target` folder on PYTHONPATH is found too)."""
    for entry in sys.path:
        for nvcc in sorted(Path(entry or ".", "nvidia").glob("*/bin/nvcc")):
            return nvcc.parent.parent.resolve()
    return None


def link_toolkit(root: Path, prefix: Path) -> list[str]:
    """Fill ``prefix`` with links into ``root``; the unversioned library names made."""
    prefix.mkdir(parents=True)
    for name in ("bin", "include", "nvvm"):
        if (root / name).is_dir():
            os.symlink(root / name, prefix / name)
    lib64 = prefix / "lib64"
    lib64.mkdir()
    os.symlink("lib64", prefix / "lib")
    libs = sorted(p for p in (root / "lib").iterdir()) if (root / "lib").is_dir() else []
    for path in libs:
        os.symlink(path, lib64 / path.name)
    made = []
    for path in libs:
        match = VERSIONED_SO.match(path.name)
        if match and not (lib64 / match["base"]).exists():
            # the shortest versioned name wins: libcudart.so -> libcudart.so.13
            os.symlink(path.name, lib64 / match["base"])
            made.append(match["base"])
    return made


def make_driver_stub(stubs: Path) -> bool:
    """An empty libcuda.so with the driver's soname, built with the base's C compiler."""
    stubs.mkdir(exist_ok=True)
    cmd = ["cc", "-shared", "-nostdlib", "-x", "c", os.devnull, "-Wl,-soname,libcuda.so.1", "-o", str(stubs / "libcuda.so")]
    try:
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    except OSError:  # no compiler: nothing that links -lcuda could be built here anyway
        return False


LD_CONF = Path("/etc/ld.so.conf.d/mlsyskit-cuda-wheels.conf")
AUX_CACHE = Path("/var/cache/ldconfig/aux-cache")


def wheel_library_dirs() -> list[Path]:
    """Every `nvidia/<package>/lib` folder holding shared libraries, on sys.path."""
    found: list[Path] = []
    for entry in sys.path:
        for lib in sorted(Path(entry or ".", "nvidia").glob("*/lib")):
            if lib.is_dir() and any(lib.glob("*.so*")) and lib.resolve() not in found:
                found.append(lib.resolve())
    return found


def register_libraries(conf: Path = LD_CONF) -> list[Path]:
    """Write the loader's entry for the wheels' libraries and run ldconfig (as root, in an
    image build); the folders written."""
    dirs = wheel_library_dirs()
    if not dirs or os.geteuid() != 0 or not conf.parent.is_dir():
        return []
    conf.write_text("# NVIDIA's CUDA wheels (images/scripts/link_cuda.py)\n" + "".join(f"{d}\n" for d in dirs))
    subprocess.run(["ldconfig"], check=True)
    # ldconfig's aux cache records the libraries' inodes and times: a rebuild never matches it
    # (`invoke verify`), and the loader does not read it. Deleted in the step that writes it.
    AUX_CACHE.unlink(missing_ok=True)
    return dirs


def main(argv: list[str]) -> int:
    prefix = Path(argv[0]) if argv else DEFAULT_PREFIX
    if prefix == DEFAULT_PREFIX and (dirs := register_libraries()):
        print(f"loader path: {len(dirs)} wheel library folders in {LD_CONF}", file=sys.stderr)
    if prefix.exists() or prefix.is_symlink():
        return 0
    root = wheel_cuda_root()
    if root is None:
        return 0  # this layer has no nvcc wheel; nothing to link
    made = link_toolkit(root, prefix)
    if not (prefix / "lib64" / "libcuda.so").exists() and make_driver_stub(prefix / "lib64" / "stubs"):
        made.append("stubs/libcuda.so")
    print(f"linked {prefix} -> {root} (unversioned: {', '.join(made) or 'none'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
