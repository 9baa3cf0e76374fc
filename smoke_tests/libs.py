"""Do the shared libraries a package ships load in this image? An ``ldd`` check.

    python -m smoke_tests.libs sgl_kernel flashinfer torch_memory_saver nixl deep_ep

prints, for each installed package, every ``.so`` under it whose dependencies do not
resolve, and exits 1 when there is one. A dependency resolves as the dynamic loader would
resolve it when the package is imported: through the library's own RPATH/RUNPATH, the
loader's cache (``/etc/ld.so.conf.d``, where the kit lists the CUDA wheels' folders) and
torch's own ``lib/`` (these packages are torch extensions: torch is loaded first). The
driver's libraries (libcuda, libnvidia-ml) are left out: the NVIDIA container toolkit
brings them at run time. What fails here fails at import on a GPU too: sgl_kernel without
libnuma, a preload hook without libcudart on the loader's path.

Stdlib only: the image tests run it in every topic image, CPU or not.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

#: What the NVIDIA container toolkit injects from the host driver.
DRIVER_LIBRARIES = frozenset({"libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1", "libcudadebugger.so.1"})
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)
#: CUDA runtime libraries by major version: wheels ship variants for CUDA 12 and 13 side by
#: side (torch_memory_saver's hooks) and load the one for torch's CUDA.
_CUDA_RUNTIME = re.compile(r"^lib(?:cudart|cublas|cublasLt|nvrtc|cusparse|cufft|curand|cusolver|nvJitLink)\.so\.(\d+)$")


def torch_cuda_major() -> str:
    """The CUDA major version torch was built for ('' without torch or CUDA), read from
    torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return ""
    found = re.search(r"^cuda\b[^=\n]*=\s*['\"](\d+)", (Path(spec.origin).parent / "version.py").read_text(), re.MULTILINE)
    return found[1] if found else ""


def other_cuda(name: str, major: str) -> bool:
    """A CUDA runtime library of another major version than torch's: a variant for that
    CUDA, which this image never loads."""
    found = _CUDA_RUNTIME.match(name)
    return bool(found and major and found[1] != major)


def parse_ldd(text: str) -> list[str]:
    """The libraries ``ldd`` reports as not found, in order, each once."""
    return list(dict.fromkeys(_NOT_FOUND.findall(text)))


#: Packages whose own libraries are loaded when they are imported, before the extensions
#: built against them, and the folder those libraries are in: torch (libc10, libtorch),
#: TVM-FFI (libtvm_ffi, for DeepGEMM and SGLang's JIT kernels), Triton (libtriton, for its plugins).
PRELOADED_BY_IMPORT = {"torch": "lib", "tvm_ffi": "lib", "triton": "_C"}


def preloaded_lib_dirs() -> list[str]:
    dirs = []
    for package, folder in PRELOADED_BY_IMPORT.items():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None and (Path(spec.origin).parent / folder).is_dir():
            dirs.append(str(Path(spec.origin).parent / folder))
    return dirs


def unresolved_libraries(library: str | os.PathLike[str], allowed: Iterable[str] = DRIVER_LIBRARIES) -> list[str]:
    """Dependencies of ``library`` the loader would not find (minus ``allowed``)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH", ""), *preloaded_lib_dirs()) if p)
    result = subprocess.run(["ldd", str(library)], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 and "not a dynamic executable" in result.stdout + result.stderr:
        return []
    major = torch_cuda_major()
    return [name for name in parse_ldd(result.stdout) if name not in set(allowed) and not other_cuda(name, major)]


def package_libraries(package: str) -> list[Path]:
    """Every shared library the distributions that provide the import name ``package``
    installed, from their RECORD files ([] when it is absent): the package's own folder,
    top-level extension modules (torch_memory_saver's hooks) and vendored ``*.libs``."""
    from importlib.metadata import distribution, packages_distributions

    found: list[Path] = []
    for dist_name in sorted(set(packages_distributions().get(package, []))):
        dist = distribution(dist_name)
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if _is_library(path):
                found.append(path.resolve())
    return sorted(set(found))


def _is_library(path: Path) -> bool:
    return path.is_file() and re.search(r"\.so(\.\d+)*$", path.name) is not None


def check_packages(packages: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """{package: {library: [missing dependencies]}} for the libraries that do not resolve;
    a package that is not installed is left out."""
    report: dict[str, dict[str, list[str]]] = {}
    for package in packages:
        bad = {}
        for library in package_libraries(package):
            missing = unresolved_libraries(library)
            if missing:
                bad[str(library)] = missing
        report[package] = bad
    return report


def all_import_names() -> list[str]:
    """Every top-level import name an installed distribution provides."""
    from importlib.metadata import packages_distributions

    return sorted(packages_distributions())


def main(argv: list[str] | None = None) -> int:
    packages = sys.argv[1:] if argv is None else argv
    if packages == ["--all"]:
        packages = all_import_names()
    failed = False
    for package, bad in check_packages(packages).items():
        libraries = package_libraries(package)
        if not libraries:
            print(f"{package}: not installed or ships no shared library")
            continue
        print(f"{package}: {len(libraries)} shared libraries, {len(bad)} with unresolved dependencies")
        for library, missing in bad.items():
            failed = True
            print(f"  {library}: {', '.join(missing)} not found")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
