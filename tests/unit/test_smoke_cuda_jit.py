"""CUDA JIT smoke test: what it reads from nvcc and a failed build, where the toolkit lives,
and that a toolkit torch cannot use fails the test (the build itself runs inside the images:
tests/integration/test_smoke.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoke_tests import cuda_jit

REPO = Path(__file__).resolve().parents[2]

NVCC_VERSION = """\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""

# What torch 2.11's JIT raised in the verl image before /usr/local/cuda had lib64 (ninja's output).
LINK_FAILURE = """\
Error building extension 'mlsyskit_cuda_jit_smoke': [1/2] /usr/local/cuda/bin/nvcc -MD -MF saxpy.cuda.o.d -c saxpy.cu -o saxpy.cuda.o
[2/2] c++ saxpy.cuda.o -shared -L/opt/venv/lib/python3.11/site-packages/torch/lib -lc10 -L/usr/local/cuda/lib -lcudart -o mlsyskit_cuda_jit_smoke.so
FAILED: [code=1] mlsyskit_cuda_jit_smoke.so
/usr/bin/ld: cannot find -lcudart: No such file or directory
collect2: error: ld returned 1 exit status
ninja: build stopped: subcommand failed.
"""


def test_nvcc_release():
    assert cuda_jit.nvcc_release(NVCC_VERSION) == "13.0"
    assert cuda_jit.nvcc_release("command not found") is None


def test_toolkit_from_the_wheels_or_not(tmp_path):
    site = tmp_path / "site-packages"
    (site / "nvidia" / "cu13" / "bin").mkdir(parents=True)
    nvcc = site / "nvidia" / "cu13" / "bin" / "nvcc"
    assert cuda_jit.from_wheels(nvcc) is False  # an nvidia/ folder, but no wheel installed it
    (site / "nvidia_cuda_nvcc-13.0.88.dist-info").mkdir()
    assert cuda_jit.from_wheels(nvcc)  # site-packages or a `pip install --target` folder alike
    assert cuda_jit.from_wheels("/usr/local/cuda-13.0/bin/nvcc") is False


def test_build_error_names_the_linker_line_not_the_wrapper():
    assert cuda_jit.build_error(LINK_FAILURE) == ("/usr/bin/ld: cannot find -lcudart: No such file or directory | collect2: error: ld returned 1 exit status")
    assert cuda_jit.build_error("Ninja is required to load C++ extensions (pip install ninja to get it)").startswith("Ninja is required")
    assert cuda_jit.build_error("") == "no output"


def test_arch_is_the_gpus_own_else_the_requested_one():
    assert cuda_jit.arch_for((9, 0), "8.0") == "9.0"
    assert cuda_jit.arch_for(None, "9.0") == "9.0"


def test_key_figure():
    figures = {
        "toolkit": {"nvcc_release": "13.0", "from_wheels": True, "cuda_home": "/usr/local/cuda"},
        "torch_extension": {"build_seconds": 1.2, "max_abs_diff": 0.0},
        "flashinfer": {"build_seconds": 4.6, "max_abs_diff": 0.004},
    }
    # an allclose check is not called exact
    assert cuda_jit.key_figure(figures) == "nvcc 13.0 (wheels), saxpy built in 1 s, ran within 1e-6, flashinfer built and ran"
    figures = {"toolkit": {"nvcc_release": "13.0", "from_wheels": False, "cuda_home": "/usr/local/cuda"},
               "torch_extension": {"build_seconds": 2.0}, "flashinfer": "not installed"}  # fmt: skip
    assert cuda_jit.key_figure(figures) == "nvcc 13.0 (/usr/local/cuda), saxpy built in 2 s"
    assert cuda_jit.key_figure({}) == "-"


def test_bad_arch_is_refused():
    proc = subprocess.run([sys.executable, "-m", "smoke_tests.cuda_jit", "--arch", "hopper"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "--arch hopper: give a compute capability such as 9.0" in proc.stderr


def test_a_toolkit_without_nvcc_fails_the_test(tmp_path):
    """CUDA_HOME pointing at a folder without nvcc: a failure that says so, not a skip."""
    torch = pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_HOME": str(tmp_path)}
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "smoke_tests.cuda_jit", "--cpu", "--json", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["status"] == "failed"
    if torch.version.cuda:  # the images' torch
        assert data["reason"] == f"CUDA_HOME {tmp_path} has no bin/nvcc"
    else:
        assert data["reason"].endswith("is a CPU build: it builds no CUDA extension")


def test_the_flashinfer_gate_is_declared_for_topics_that_lock_it():
    gate = {g.name: g for g in cuda_jit.SMOKE.gates}["flashinfer"]
    assert gate.kind == "switch" and gate.default is None and gate.on_when_locked == "flashinfer-python"


def test_a_missing_flashinfer_fails_where_the_topic_ships_it(tmp_path):
    """The distributed image has no flashinfer: with the gate on (what invoke smoke passes for
    a topic whose lock holds flashinfer-python) the test fails and says so; off, it builds on."""
    torch = pytest.importorskip("torch")
    if not torch.version.cuda:
        pytest.skip("a CPU build of torch builds no CUDA extension")
    import importlib.util

    if importlib.util.find_spec("flashinfer") is not None:
        pytest.skip("flashinfer is installed here")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "smoke_tests.cuda_jit", "--cpu", "--json", str(out), "--gate", "flashinfer=on"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    data = json.loads(out.read_text())
    assert proc.returncode == 1 and data["status"] == "failed", proc.stdout[-2000:]
    assert data["reason"].startswith("flashinfer is not installed, and this topic ships it")
    assert {"name": "flashinfer", "gate": True, "status": "failed", "measured": "not installed", "expected": "installed and building", "detail": ""} in data[
        "verdicts"
    ]


def test_warm_builds_go_where_the_kit_cache_points():
    """--warm: each compiler builds where the kit's kernel cache points it (a second
    container finds the first's build); without it, or without those variables, the
    builds stay in fresh folders."""
    env = {"TORCH_EXTENSIONS_DIR": "/k/torch-extensions", "FLASHINFER_WORKSPACE_BASE": "/k/flashinfer", "SGLANG_JIT_CACHE_DIR": "/k/sglang-jit"}
    assert cuda_jit.warm_folders(False, "9.0", env) == {}
    assert cuda_jit.warm_folders(True, "9.0", {}) == {}
    found = cuda_jit.warm_folders(True, "9.0", env)
    assert found["TORCH_EXTENSIONS_DIR"] == Path("/k/torch-extensions/mlsyskit_cuda_jit_smoke_sm90")
    assert found["FLASHINFER_WORKSPACE_BASE"] == Path("/k/flashinfer") and "TVM_FFI_CACHE_DIR" not in found
