"""Every topic's main job, on the CPU, inside its own image, through `invoke smoke` as a
user runs it: what runs without a GPU runs (quantization, the docs site, SGLang's JIT
kernels compiled for sm_90), what needs one is checked as far as a CPU allows and reported
skipped, never passed. Also what the images promise GPU runtimes: the NVIDIA_* variables,
the CUDA wheels on the loader's path, and every native library of the packages that
failed on a GPU before (sgl_kernel without libnuma, a preload hook without libcudart)
resolving inside the image."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.engine import Engine
from mlsyskit.images.plan import topic_alias
from tests.integration.conftest import run_kit
from tests.integration.test_smoke import by_where, in_image, nothing_left, read, with_smoke_tests

CATALOG = load_catalog()
GPU_TOPICS = sorted(t.name for t in CATALOG.topics.values() if t.framework)
#: Packages with native libraries that must load wherever they are installed. NIXL is not
#: here: its wheel ships plugins for fabrics it loads only when present (DOCA, libfabric,
#: GDS...); test_smoke_in_images.py loads NIXL and moves memory through its UCX plugin.
NATIVE = ("sgl_kernel", "flashinfer", "torch_memory_saver", "deep_ep", "deep_gemm", "tvm_ffi", "vllm", "xgrammar", "torch", "triton")


def smoke(topic: str, tests: str, out: Path, timeout: float = 1800) -> dict:
    proc = run_kit("smoke", topic, "--cpu", "--tests", tests, "--no-stacks", "--json", str(out), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return by_where(read(out))


def test_quantization_quantizes_reloads_and_scores_a_tiny_model(engine: Engine, build_topic, tmp_path):
    build_topic("quantization")
    result = smoke("quantization", "quantize", tmp_path / "q.json")[("quantize", "container")]
    assert result["status"] == "skipped" and result["reason"].startswith("--cpu given: FP8 tensor-core products need a GPU")
    models = result["figures"]["models"]
    assert models["fp8_dynamic"]["format"] == "float-quantized" and models["w4a16_gptq"]["format"] == "pack-quantized"
    assert models["fp8_dynamic"]["size_ratio"] < 0.55 and models["w4a16_gptq"]["size_ratio"] < 0.3  # FP8 half, int4 a quarter (+ scales)
    for scheme in models.values():
        assert 0 < scheme["relative_error"] < 0.15 and scheme["top1_agreement"] >= 0.5
    scores = result["figures"]["lm_eval"]
    assert set(scores) == {"original", "fp8_dynamic", "w4a16_gptq"}
    assert {s["samples"] for s in scores.values()} == {40} and all(0 <= s["acc"] <= 1 for s in scores.values())
    nothing_left(engine)


def test_docs_builds_its_site_offline(engine: Engine, build_topic, tmp_path):
    build_topic("docs")
    result = smoke("docs", "docs_site", tmp_path / "d.json")[("docs_site", "container")]
    assert result["status"] == "passed", result["reason"]
    assert result["figures"]["pages"] == 2 and result["figures"]["search_entries"] >= 2


def test_docs_site_fails_when_the_notebook_is_not_executed(engine: Engine, build_topic):
    """The check reads the executed cell's output: a site built without running the notebook fails."""
    build_topic("docs")
    script = (
        "cd /tmp && python -c \"import smoke_tests.docs_site as d; d.MKDOCS_YML = d.MKDOCS_YML.replace('execute: true', 'execute: false'); "
        "import sys; sys.exit(d.main(['--json', '/tmp/r.json']))\" >/dev/null 2>&1; cat /tmp/r.json"
    )
    proc = in_image(engine, topic_alias("docs", "pypi"), script)
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and result["reason"] == "notebook/index.html lacks the notebook's executed output"


def test_sglang_jit_kernels_compile_in_the_verl_image_and_fail_without_the_patch(engine: Engine, build_topic, tmp_path):
    """SGLang 0.5.12's activation kernel does not compile with Debian's g++ 12; the verl
    topic's patch fixes it. cuda_jit compiles it for sm_90 on CPU: with the patch reversed
    it fails with the compiler's error, as the scheduler died on the H100 (issue 20)."""
    build_topic("verl")
    result = smoke("verl", "cuda_jit", tmp_path / "j.json")[("cuda_jit", "container")]
    assert result["status"] == "skipped" and "SGLang's JIT kernels compiled and linked for sm_90" in result["reason"]
    assert set(result["figures"]["sglang_jit"]["kernels"]) == {
        "activation_bfloat16",
        "activation_float16",
        "fused_rope",
        "store_kvcache",
        "rmsnorm_hf",
        "clamp_position",
    }
    patch = "/opt/patches/sglang-0.5.12-activation-gcc12.patch"
    script = (
        f"cd /opt/venv/lib/python3.11/site-packages && patch -R -p1 < {patch} >/dev/null && cd /tmp && "
        "python -m smoke_tests.cuda_jit --cpu --json /tmp/r.json >/dev/null 2>&1; cat /tmp/r.json"
    )
    spec = with_smoke_tests(topic_alias("verl", "pypi"), ("sh", "-c", script))
    spec = replace(spec, volumes=(*spec.volumes, f"{REPO_ROOT / 'envs/verl/patches'}:/opt/patches:ro"))
    proc = engine.run(spec, timeout=900)
    broken = json.loads(proc.stdout)
    assert broken["status"] == "failed"
    assert "JIT activation_bfloat16 kernel does not compile for sm_90" in broken["reason"]
    assert "csrc/elementwise/activation.cuh" in broken["reason"] and "error:" in broken["reason"]


def test_cuda_graph_memory_saver_hook_loads_in_the_image(engine: Engine, build_topic, tmp_path):
    build_topic("cuda-graph")
    result = smoke("cuda-graph", "memory_saver", tmp_path / "m.json")[("memory_saver", "container")]
    assert result["status"] == "skipped" and "hook library's links resolve" in result["reason"]
    assert result["figures"]["hook_library"].endswith("torch_memory_saver_hook_mode_preload_cu13.abi3.so")


@pytest.mark.topic("openrlhf")
def test_openrlhf_checks_vllm_and_its_trainer_on_cpu(engine: Engine, build_topic, tmp_path):
    build_topic("openrlhf")
    results = smoke("openrlhf", "vllm_serve,openrlhf_sft", tmp_path / "o.json")
    vllm = results[("vllm_serve", "container")]
    assert vllm["status"] == "skipped" and vllm["figures"]["flags_checked"] >= 20
    assert vllm["figures"]["cpu_check"]["eos_token"] == "<|im_end|>"
    sft = results[("openrlhf_sft", "container")]
    assert sft["status"] == "skipped", sft["reason"]
    assert sft["figures"]["flags_checked"] >= 15 and sft["figures"]["flash_attn_backend"] == "triton"
    nothing_left(engine)


@pytest.mark.topic("openrlhf")
def test_openrlhf_trainer_imports_only_through_flash_attns_triton_path(engine: Engine, build_topic):
    """The image has flash-attn without kernels: with the image's FLASH_ATTENTION_TRITON_AMD_ENABLE
    OpenRLHF's models import; unset, the import fails on the missing extension (what a user
    would meet without the variable)."""
    build_topic("openrlhf")
    image = topic_alias("openrlhf", "pypi")
    ok = in_image(engine, image, "python -c 'import openrlhf.models, flash_attn.bert_padding; print(\"imported\")'")
    assert ok.returncode == 0 and "imported" in ok.stdout, ok.stderr[-2000:]
    unset = in_image(engine, image, "FLASH_ATTENTION_TRITON_AMD_ENABLE= python -c 'import openrlhf.models'")
    assert unset.returncode != 0 and "flash_attn_2_cuda" in unset.stderr


@pytest.mark.parametrize("topic", sorted(CATALOG.topics))
def test_images_say_what_gpu_runtimes_need(engine: Engine, build_topic, topic):
    """enroot/pyxis give no GPU to an image without NVIDIA_VISIBLE_DEVICES (NVIDIA/enroot#205);
    the toolkit checks NVIDIA_REQUIRE_CUDA against the driver. The docs image has no GPU use."""
    build_topic(topic)
    info = engine.image(topic_alias(topic, "pypi"))
    assert info is not None
    env = info.environment
    t = CATALOG.topic(topic)
    if not t.framework:
        assert not {k for k in env if k.startswith("NVIDIA_")}
        return
    cuda = CATALOG.frameworks[t.framework].cuda
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_REQUIRE_CUDA"] == f"cuda>={cuda}"


@pytest.mark.parametrize("topic", GPU_TOPICS)
def test_native_libraries_resolve_inside_the_image(engine: Engine, build_topic, topic):
    """Every shared library of the native packages installed resolves, with the loader's
    cache and torch's own folder (smoke_tests/libs.py); the CUDA wheels' folders are on the
    loader's path, so a library loaded before torch finds libcudart."""
    build_topic(topic)
    image = topic_alias(topic, "pypi")
    proc = in_image(engine, image, f"cd /tmp && python -m smoke_tests.libs {' '.join(NATIVE)}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "torch: " in proc.stdout and " 0 with unresolved" in proc.stdout
    loader = in_image(engine, image, "ldconfig -p | grep -E 'libcudart.so.13 |libnccl.so.2 '")
    assert "site-packages/nvidia/cu13/lib/libcudart.so.13" in loader.stdout and "site-packages/nvidia/nccl/lib" in loader.stdout


def test_the_library_check_fails_when_a_dependency_is_missing(engine: Engine, build_topic):
    """Break it once: without libnuma (the verl image before this check) sgl_kernel fails."""
    build_topic("verl")
    script = "rm -f /usr/lib/x86_64-linux-gnu/libnuma.so.1* && ldconfig && cd /tmp && python -m smoke_tests.libs sgl_kernel; echo rc=$?"
    proc = in_image(engine, topic_alias("verl", "pypi"), script)
    assert "libnuma.so.1 not found" in proc.stdout and proc.stdout.strip().endswith("rc=1")
