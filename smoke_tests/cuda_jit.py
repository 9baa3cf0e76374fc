"""CUDA JIT smoke test: torch's JIT (``torch.utils.cpp_extension.load``) compiles, links
and loads a small CUDA extension with the image's toolkit; on a GPU it also runs it
and checks the result. Where flashinfer is installed (the sglang and verl topics), its own
JIT builds one of its kernels (SiLU-and-mul) the same way, and on a GPU runs it too. Where
SGLang is installed, its own TVM-FFI JIT kernels (``jit_kernel``, which its CUDA-graph
capture builds on first use: the activation kernel in bf16 and fp16) are compiled for the
arch with the image's nvcc and host compiler, and on a GPU run against torch; a host
compiler that cannot build them (SGLang 0.5.12's activation kernel under g++ 12) fails here,
on CPU, instead of killing the scheduler on a GPU.

    python -m smoke_tests.cuda_jit [--json cuda_jit.json] [--arch 9.0]
    python -m smoke_tests.cuda_jit --cpu     # compile and link only; reported skipped
    python -m smoke_tests.cuda_jit --warm    # build in the kit's kernel cache: a second run reuses the first's

Compiling needs no GPU: without one the code is built for ``--arch`` (default 9.0, Hopper;
``TORCH_CUDA_ARCH_LIST`` / ``FLASHINFER_CUDA_ARCH_LIST`` if set), which is what CI checks.
The test records where the toolkit came from: ``CUDA_HOME`` as torch found it, the real
path of its nvcc (inside NVIDIA's PyPI wheels on the kit's ``pypi`` base) and nvcc's
release. Each build goes to a fresh folder, so nothing is taken from a cache; with ``--warm``
each goes where the kit's kernel cache points its compiler (``TORCH_EXTENSIONS_DIR``,
``FLASHINFER_WORKSPACE_BASE``, ``TVM_FFI_CACHE_DIR``, ``SGLANG_JIT_CACHE_DIR``), so the
build times of a second container say what a warm start costs (``figures.builds``).

A build that fails is a failure with the compiler's or linker's last lines (``Ninja is
required``, ``cannot find -lcudart``: the toolkit is not laid out as JIT compilers expect).
Without a GPU the test is skipped after building (unless GPUs were asked for:
``--require-gpu``); on a GPU it passes when every kernel built and gave the right numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smoke_tests._gates import Gate, add_gate_args, from_args
from smoke_tests._result import Fail, Report, SmokeTest, fmt, gpu_unavailable, run_test, test_parser

TEST = "cuda_jit"
DEFAULT_ARCH = "9.0"

#: y = a * x + y on float32, one thread per element, called through ctypes. The file holds
#: no torch header: torch's JIT still builds it its way (ninja, nvcc, and the link line of a
#: torch CUDA extension: -L$CUDA_HOME/lib64 -lcudart, torch's libraries), while nvcc on
#: torch/extension.h alone would take a minute on 2 cores.
SAXPY_CUDA = r"""
#include <cuda_runtime.h>

__global__ void saxpy_kernel(int n, float a, const float* x, float* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

extern "C" int mlsyskit_saxpy(int n, float a, const float* x, float* y) {
  saxpy_kernel<<<(n + 255) / 256, 256>>>(n, a, x, y);
  return static_cast<int>(cudaGetLastError());
}
"""
EXTENSION = "mlsyskit_cuda_jit_smoke"


# ---------------------------------------------------------------------------- pure logic


_RELEASE = re.compile(r"release (\d+\.\d+)")


def nvcc_release(text: str) -> str | None:
    """'Cuda compilation tools, release 13.0, V13.0.88' -> '13.0'."""
    match = _RELEASE.search(text)
    return match.group(1) if match else None


def from_wheels(nvcc: str | Path) -> bool:
    """True when this (resolved) nvcc was installed by NVIDIA's nvidia-cuda-nvcc wheel: it lies
    under a ``nvidia/`` package whose folder holds that wheel's dist-info (site-packages,
    or a ``pip install --target`` folder)."""
    for parent in Path(nvcc).parents:
        if parent.name == "nvidia":
            return any(parent.parent.glob("nvidia_cuda_nvcc-*.dist-info"))
    return False


#: Lines that say what went wrong: compiler and linker errors, a missing tool.
_ERROR = re.compile(r"(error:|cannot find|undefined reference|not found|No such file|is required)", re.IGNORECASE)


def build_error(text: str, lines: int = 3) -> str:
    """The lines of a compiler/linker/ninja failure that say what went wrong."""
    found = [line.strip() for line in text.splitlines() if _ERROR.search(line) and line.strip()]
    if not found:
        found = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(dict.fromkeys(found[-lines:]))[:600] or "no output"


def arch_for(capability: tuple[int, int] | None, requested: str) -> str:
    """The arch to build for: the GPU's own, else --arch."""
    return f"{capability[0]}.{capability[1]}" if capability else requested


# ---------------------------------------------------------------------------- the toolkit


def describe_toolkit(report: Report) -> str:
    """CUDA_HOME as torch's JIT sees it, its nvcc and where that really lives."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise Fail(f"torch {torch.__version__} is a CPU build: it builds no CUDA extension")
    home = cpp_extension.CUDA_HOME
    if not home:
        raise Fail("torch finds no CUDA toolkit: no CUDA_HOME, no nvcc on PATH, no /usr/local/cuda")
    nvcc = Path(home, "bin", "nvcc")
    if not nvcc.exists():
        raise Fail(f"CUDA_HOME {home} has no bin/nvcc")
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=False)
    real = os.path.realpath(nvcc)
    toolkit = {
        "cuda_home": home,
        "nvcc": str(nvcc),
        "nvcc_real_path": real,
        "nvcc_release": nvcc_release(out.stdout),
        "from_wheels": from_wheels(real),
        "torch_cuda": torch.version.cuda,
        "ninja": shutil.which("ninja"),
    }
    report.figures["toolkit"] = toolkit
    return str(home)


# ---------------------------------------------------------------------------- builds


def build_torch_extension(build_dir: Path, arch: str, verbose: bool) -> tuple[Path, float]:
    """torch.utils.cpp_extension.load() the saxpy kernel in a fresh folder: (library, seconds)."""
    from torch.utils import cpp_extension

    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / "saxpy.cu"
    if not source.is_file() or source.read_text() != SAXPY_CUDA:  # rewritten, ninja would build again
        source.write_text(SAXPY_CUDA)
    start = time.monotonic()
    try:
        # is_python_module=False: a plain shared library, loaded into the process
        cpp_extension.load(name=EXTENSION, sources=[str(source)], build_directory=str(build_dir), verbose=verbose, is_python_module=False)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "output", None) or str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise Fail(f"torch's JIT could not build the CUDA extension: {build_error(str(detail))}") from None
    library = build_dir / f"{EXTENSION}.so"
    if not library.exists():
        raise Fail(f"torch's JIT finished but wrote no {library.name}")
    return library, time.monotonic() - start


def run_saxpy(library: Path) -> dict[str, Any]:
    import ctypes

    import torch

    saxpy = ctypes.CDLL(str(library)).mlsyskit_saxpy
    saxpy.argtypes = [ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    x = torch.randn(1 << 20, device="cuda")
    y = torch.randn(1 << 20, device="cuda")
    want = 2.5 * x + y
    torch.cuda.synchronize()  # the kernel runs on the legacy default stream
    err = saxpy(x.numel(), 2.5, x.data_ptr(), y.data_ptr())
    torch.cuda.synchronize()
    if err:
        raise Fail(f"the JIT-built saxpy kernel did not launch: CUDA error {err}")
    diff = float((y - want).abs().max())
    if not torch.allclose(y, want, rtol=1e-6, atol=1e-6):
        raise Fail(f"the JIT-built saxpy kernel computed wrong numbers (max diff {diff:.3g})")
    return {"elements": x.numel(), "max_abs_diff": diff}


def flashinfer_spec() -> Any:
    """flashinfer's JIT spec for its SiLU-and-mul kernel (None where flashinfer is absent)."""
    import importlib.util

    if importlib.util.find_spec("flashinfer") is None:
        return None
    from flashinfer.jit.activation import gen_act_and_mul_module

    return gen_act_and_mul_module("silu")


def build_flashinfer(spec: Any, verbose: bool) -> float:
    start = time.monotonic()
    try:
        spec.build(verbose)
    except Exception as exc:  # flashinfer raises its own error type around ninja's output
        raise Fail(f"flashinfer's JIT could not build silu_and_mul: {build_error(str(exc))}") from None
    if not spec.jit_library_path.exists():
        raise Fail(f"flashinfer's JIT finished but wrote no {spec.jit_library_path.name}")
    return time.monotonic() - start


def run_flashinfer_silu() -> dict[str, Any]:
    import flashinfer
    import torch

    x = torch.randn(64, 2 * 512, device="cuda", dtype=torch.float16)
    got = flashinfer.activation.silu_and_mul(x)
    torch.cuda.synchronize()
    d = x.shape[-1] // 2
    want = (torch.nn.functional.silu(x[:, :d].float()) * x[:, d:].float()).half()
    diff = float((got.float() - want.float()).abs().max())
    if not torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2):
        raise Fail(f"flashinfer's JIT-built silu_and_mul computed wrong numbers (max diff {diff:.3g})")
    return {"shape": list(x.shape), "max_abs_diff": diff}


#: Where SGLang keeps its TVM-FFI JIT kernels, by release: the module that pins the target
#: arch (``override_jit_cuda_arch``), then the kernels a dense model's serving and CUDA-graph
#: capture build on first use, as (name, module, builder, arguments): the tiny serving model's
#: shapes (hidden 256, head_dim 64, 2 KV heads, bf16), activations in fp16 too.
SGLANG_JIT_LAYOUTS: tuple[tuple[str, tuple[tuple[str, str, str, tuple[Any, ...]], ...]], ...] = (
    ("sglang.kernels.jit.utils", (  # 0.5.2x
        ("activation_bfloat16", "sglang.kernels.ops.activation.activation", "activation_module", ("bfloat16",)),
        ("activation_float16", "sglang.kernels.ops.activation.activation", "activation_module", ("float16",)),
    )),
    ("sglang.jit_kernel.utils", (  # 0.5.12 (the verl topic's)
        ("activation_bfloat16", "sglang.jit_kernel.activation", "_jit_activation_module", ("bfloat16",)),
        ("activation_float16", "sglang.jit_kernel.activation", "_jit_activation_module", ("float16",)),
        ("fused_rope", "sglang.jit_kernel.rope", "_jit_fused_rope_module", (True, 64, "bfloat16")),
        ("store_kvcache", "sglang.jit_kernel.kvcache", "_jit_kvcache_module", (256,)),
        ("rmsnorm_hf", "sglang.jit_kernel.rmsnorm_hf", "_jit_rmsnorm_hf_module", (256, "bfloat16")),
        ("clamp_position", "sglang.jit_kernel.clamp_position", "_jit_clamp_position_module", ("int64",)),
    )),
)  # fmt: skip


def sglang_jit_layout() -> tuple[Any, list[tuple[str, Any, tuple[Any, ...]]]] | None:
    """(override_jit_cuda_arch, [(kernel, module builder, arguments)]) of the installed
    SGLang, or None where SGLang is absent. An SGLang with no layout this test knows is a
    failure: the test would otherwise pass without building what the capture builds."""
    import importlib
    import importlib.util

    import torch

    if importlib.util.find_spec("sglang") is None:
        return None
    for utils_name, kernels in SGLANG_JIT_LAYOUTS:
        try:
            utils = importlib.import_module(utils_name)
            builders = [(name, getattr(importlib.import_module(module), builder), args) for name, module, builder, args in kernels]
        except (ImportError, AttributeError):
            continue
        typed = [(name, fn, tuple(getattr(torch, a) if a in ("bfloat16", "float16", "int64") else a for a in args)) for name, fn, args in builders]
        return utils.override_jit_cuda_arch, typed
    raise Fail(f"SGLang {_version('sglang')} has none of the JIT kernel layouts this test knows ({', '.join(u for u, _ in SGLANG_JIT_LAYOUTS)})")


def build_sglang_kernels(arch: str, cache_dir: Path | None) -> dict[str, Any]:
    """Compile SGLang's JIT kernels for ``arch`` into a fresh cache folder (so nothing comes
    from an earlier build: SGLang 0.5.12 builds through TVM-FFI's cache, 0.5.2x through its
    own), or, with ``cache_dir`` None, where the environment points them (the kit's kernel
    cache, ``--warm``)."""
    layout = sglang_jit_layout()
    if layout is None:
        return {}
    override, kernels = layout
    if cache_dir is not None:
        os.environ["TVM_FFI_CACHE_DIR"] = str(cache_dir / "tvm-ffi")
        os.environ["SGLANG_JIT_CACHE_DIR"] = str(cache_dir / "sglang-jit")
    major, minor = (int(x) for x in arch.split("."))
    built: dict[str, Any] = {"version": _version("sglang"), "kernels": {}}
    with override(major, minor):
        for name, builder, args in kernels:
            start = time.monotonic()
            try:
                builder(*args)
            except Exception as exc:  # tvm_ffi raises RuntimeError with the compiler's output
                what = f"SGLang {built['version']}'s JIT {name} kernel"
                raise Fail(f"{what} does not compile for sm_{major}{minor}: {build_error(str(exc))}") from None
            built["kernels"][name] = round(time.monotonic() - start, 1)
    return built


def run_sglang_silu() -> dict[str, Any]:
    """SGLang's silu_and_mul (its JIT kernel) against torch, on the GPU, bf16."""
    import torch

    try:
        from sglang.kernels.ops.activation.activation import silu_and_mul
    except ImportError:
        from sglang.jit_kernel.activation import silu_and_mul
    x = torch.randn(64, 2 * 512, device="cuda", dtype=torch.bfloat16)
    got = silu_and_mul(x)
    torch.cuda.synchronize()
    d = x.shape[-1] // 2
    want = (torch.nn.functional.silu(x[:, :d].float()) * x[:, d:].float()).to(torch.bfloat16)
    diff = float((got.float() - want.float()).abs().max())
    if not torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2):
        raise Fail(f"SGLang's JIT-built silu_and_mul computed wrong numbers (max diff {diff:.3g})")
    return {"shape": list(x.shape), "max_abs_diff": diff}


# ---------------------------------------------------------------------------- the test


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import torch

        use_gpu = not args.cpu and torch.cuda.is_available()
        capability = torch.cuda.get_device_capability(0) if use_gpu else None
        arch = arch_for(capability, os.environ.get("TORCH_CUDA_ARCH_LIST") or args.arch)
        report.figures["arch"] = arch
        if use_gpu:
            report.figures["gpu"] = torch.cuda.get_device_name(0)
        describe_toolkit(report)
        rows: list[list[str]] = []
        report.table_headers, report.table_rows = ["kernel", "built", "ran", "figure"], rows

        work = Path(tempfile.mkdtemp(prefix="smoke-cuda-jit-"))
        warm = warm_folders(args.warm, arch, os.environ)
        report.figures["builds"] = "warm: " + ", ".join(sorted(warm)) if warm else "fresh folders"
        try:
            library, seconds = build_torch_extension(warm.get("TORCH_EXTENSIONS_DIR", work / "torch"), arch, args.verbose)
            report.figures["torch_extension"] = {"build_seconds": seconds}
            row = ["torch cpp_extension saxpy", f"{seconds:.1f} s", "-", "compiled, linked, loaded"]
            rows.append(row)
            report.verdict("torch extension built", True, f"{seconds:.1f} s", "compiled, linked, loaded")
            if use_gpu:
                check = run_saxpy(library)
                report.figures["torch_extension"].update(check)
                row[2:] = ["yes", f"within 1e-6 (allclose) over {check['elements']} elements"]
                report.verdict("saxpy numbers", True, f"max diff {check['max_abs_diff']:.2g}", "allclose, rtol = atol = 1e-6")

            # flashinfer reads its cache and arch settings once, when imported: a private
            # workspace, so it really compiles here instead of finding an earlier build.
            if "FLASHINFER_WORKSPACE_BASE" not in warm:
                os.environ["FLASHINFER_WORKSPACE_BASE"] = str(work / "flashinfer")
            os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", arch)
            spec = flashinfer_spec()
            required = from_args(args, GATES)["flashinfer"]
            if spec is None:
                report.figures["flashinfer"] = "not installed"
                if required:
                    report.verdict("flashinfer", False, "not installed", "installed and building", gate=True)
                    raise Fail("flashinfer is not installed, and this topic ships it (its uv.lock holds flashinfer-python): the image is broken")
                report.verdict("flashinfer", None, "not installed", "-", "off: this topic ships no flashinfer", gate=True)
            else:
                seconds = build_flashinfer(spec, args.verbose)
                report.figures["flashinfer"] = {"version": _version("flashinfer-python"), "build_seconds": seconds}
                row = ["flashinfer silu_and_mul", f"{seconds:.1f} s", "-", "compiled and linked"]
                rows.append(row)
                built = f"{report.figures['flashinfer']['version']}, built in {seconds:.1f} s"
                report.verdict("flashinfer", True, built, "installed and building", gate=bool(required))
                if use_gpu:
                    check = run_flashinfer_silu()
                    report.figures["flashinfer"].update(check)
                    row[2:] = ["yes", f"max diff {fmt(check['max_abs_diff'], 4)} (fp16)"]
                    report.verdict("silu_and_mul numbers", True, f"max diff {check['max_abs_diff']:.2g}", "allclose, rtol = atol = 1e-2")

            sglang = build_sglang_kernels(arch, None if {"TVM_FFI_CACHE_DIR", "SGLANG_JIT_CACHE_DIR"} & set(warm) else work / "sglang")
            if sglang:
                report.figures["sglang_jit"] = sglang
                seconds = sum(sglang["kernels"].values())
                row = [f"SGLang jit ({len(sglang['kernels'])} kernels)", f"{seconds:.1f} s", "-", "compiled and linked"]
                rows.append(row)
                if use_gpu:
                    check = run_sglang_silu()
                    sglang.update(check)
                    row[2:] = ["yes", f"max diff {fmt(check['max_abs_diff'], 4)} (bf16)"]
        finally:
            shutil.rmtree(work, ignore_errors=True)

        if not use_gpu:
            built = "the CUDA extension" + (" and flashinfer's kernel" if spec is not None else "")
            built += " and SGLang's JIT kernels" if "sglang_jit" in report.figures else ""
            what = f"running the kernels needs a GPU ({built} compiled and linked for sm_{arch.replace('.', '')})"
            raise gpu_unavailable(args, what)

    return body


WARM_VARIABLES = ("TORCH_EXTENSIONS_DIR", "FLASHINFER_WORKSPACE_BASE", "TVM_FFI_CACHE_DIR", "SGLANG_JIT_CACHE_DIR")


def warm_folders(warm: bool, arch: str, environ: Mapping[str, str]) -> dict[str, Path]:
    """With --warm, the cache folders the environment names (the kit's kernel cache sets
    them): the torch extension's own folder under TORCH_EXTENSIONS_DIR, per architecture."""
    if not warm:
        return {}
    found = {name: Path(environ[name]) for name in WARM_VARIABLES if environ.get(name)}
    if "TORCH_EXTENSIONS_DIR" in found:
        found["TORCH_EXTENSIONS_DIR"] = found["TORCH_EXTENSIONS_DIR"] / f"{EXTENSION}_sm{arch.replace('.', '')}"
    return found


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def key_figure(figures: Mapping[str, Any]) -> str:
    """One line for invoke smoke's table."""
    toolkit = figures.get("toolkit") or {}
    ext = figures.get("torch_extension") or {}
    if not ext:
        return "-"
    source = "wheels" if toolkit.get("from_wheels") else toolkit.get("cuda_home", "?")
    text = f"nvcc {toolkit.get('nvcc_release')} ({source}), saxpy built in {ext.get('build_seconds', 0):.0f} s"
    if "max_abs_diff" in ext:
        text += ", ran within 1e-6"
    flashinfer = figures.get("flashinfer")
    if isinstance(flashinfer, dict):
        text += ", flashinfer built" + (" and ran" if "max_abs_diff" in flashinfer else "")
    sglang = figures.get("sglang_jit")
    if isinstance(sglang, dict) and sglang:
        text += ", SGLang JIT built" + (" and ran" if "max_abs_diff" in sglang else "")
    return text


#: invoke smoke turns it on for every topic whose uv.lock holds flashinfer-python.
GATES = (Gate("flashinfer", "switch", None, "flashinfer is installed and its JIT builds", on_when_locked="flashinfer-python"),)
SMOKE = SmokeTest(TEST, timeout=600, key_figure=key_figure, gates=GATES)


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--arch", default=DEFAULT_ARCH, help=f"compute capability to build for without a GPU (default {DEFAULT_ARCH})")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    add_gate_args(parser, GATES)
    parser.add_argument("--warm", action="store_true", help="build where the kit's kernel cache points the compilers, not in fresh folders")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not re.fullmatch(r"\d+\.\d+", args.arch):
        parser.error(f"--arch {args.arch}: give a compute capability such as 9.0")
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
