"""Every topic's image, built on the pypi base and checked from inside with testinfra:
the lock is what is installed, the key modules import with no GPU, the entry points the
notes run answer, the labels are right, and the commands that report on topics are true."""

from __future__ import annotations

import base64
import json
import re
import textwrap

import pytest

from mlsyskit import LABEL_PREFIX
from mlsyskit.checks.versions import label_problems, locked_versions
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.lockfile import ENVIRONMENT_SCRIPT, key_versions, lock_sha256
from mlsyskit.images.plan import topic_alias
from tests.integration.conftest import run_kit

CATALOG = load_catalog()
TOPICS = sorted(CATALOG.topics)

INSTALLED_SCRIPT = """
import importlib.metadata as md, json, re
print(json.dumps({re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in md.distributions()}))
"""


@pytest.fixture(scope="module")
def hosts(topic_container):
    """topic -> a testinfra host on one running container of it (started once)."""
    started = {}

    def host(topic: str):
        if topic not in started:
            started[topic] = topic_container(topic)
        return started[topic]

    return host


def python(host, script: str, timeout: int = 600):
    """Run a Python script in the container (passed base64-encoded: no shell quoting)."""
    encoded = base64.b64encode(textwrap.dedent(script).encode()).decode()
    return host.run(f"echo {encoded} | base64 -d > /tmp/script.py && timeout {timeout} python /tmp/script.py")


def python_json(host, script: str):
    result = python(host, script)
    assert result.rc == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("topic", TOPICS)
def test_every_locked_package_is_installed_at_its_locked_version_and_nothing_else(hosts, topic):
    host = hosts(topic)
    environment = python_json(host, ENVIRONMENT_SCRIPT)
    expected = locked_versions(CATALOG, CATALOG.topic(topic), environment)  # framework lock + topic lock
    installed = python_json(host, INSTALLED_SCRIPT)
    wrong = {name: (version, installed.get(name)) for name, version in expected.items() if installed.get(name) != version}
    assert wrong == {}
    assert sorted(set(installed) - set(expected)) == []  # nothing beyond the locks


@pytest.mark.parametrize("topic", TOPICS)
def test_key_modules_import_without_a_gpu(hosts, topic):
    """The test containers get no GPU (no --gpus), even on a GPU host."""
    modules = list(CATALOG.topic(topic).imports)
    assert modules
    result = python(hosts(topic), f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('imported')\n")
    assert result.rc == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("imported")


# The requirements a topic's image may leave unmet, each a documented override (the
# `override-dependencies` of its pyproject.toml): verl's transformers; nixl's CUDA 12 build,
# left out of the CUDA 13 images (envs/sglang/pyproject.toml).
OVERRIDDEN = {
    "verl": ["The package `sglang` requires `transformers==5.6.0`, but `5.9.0` is installed"],
    "sglang": ["The package `nixl` requires `nixl-cu12==1.5.1`, but it's not installed"],
}


@pytest.mark.parametrize("topic", TOPICS)
def test_installed_packages_are_compatible_but_for_documented_overrides(hosts, topic):
    check = hosts(topic).run("uv pip check --python /opt/venv/bin/python")
    problems = [line.strip() for line in (check.stdout + check.stderr).splitlines() if line.strip().startswith("The package")]
    assert problems == OVERRIDDEN.get(topic, []), check.stdout + check.stderr


@pytest.mark.parametrize("topic", TOPICS)
def test_image_labels_name_the_topic_its_framework_and_lock(engine, build_topic, topic):
    build_topic(topic)
    spec = CATALOG.topic(topic)
    labels = engine.image(topic_alias(topic, "pypi")).labels
    assert label_problems(spec, labels) == []
    assert json.loads(labels[f"{LABEL_PREFIX}.key-versions"]) == key_versions(spec.lock_path, spec.key_packages)
    if spec.framework:
        framework_labels = engine.image(labels[f"{LABEL_PREFIX}.parent"]).labels
        assert framework_labels[f"{LABEL_PREFIX}.name"] == spec.framework
        assert framework_labels[f"{LABEL_PREFIX}.lock-sha256"] == lock_sha256(CATALOG.frameworks[spec.framework].lock_path)


# --- sglang ----------------------------------------------------------------------------------


@pytest.mark.topic("sglang")
def test_sglang_server_and_router_answer_help(hosts):
    host = hosts("sglang")
    server = host.run("python -m sglang.launch_server --help")
    assert server.rc == 0, server.stderr[-2000:]
    assert "--model-path" in server.stdout and "--tp-size" in server.stdout
    router = host.run("python -m sglang_router.launch_router --help")
    assert router.rc == 0, router.stderr[-2000:]
    assert "--worker-urls" in router.stdout and "--pd-disaggregation" in router.stdout


@pytest.mark.topic("sglang")
def test_sglang_runs_on_the_frameworks_torch_and_cuda(hosts):
    versions = python_json(
        hosts("sglang"),
        "import json, torch, sglang, flashinfer\nprint(json.dumps([torch.__version__, torch.version.cuda, sglang.__version__, flashinfer.__version__]))\n",
    )
    locked = key_versions(CATALOG.topic("sglang").lock_path, ["torch", "sglang", "flashinfer-python"])
    assert versions[0].split("+")[0] == locked["torch"]
    assert versions[1] == CATALOG.frameworks["torch-2.14-cu130"].cuda
    assert versions[2] == locked["sglang"] and versions[3] == locked["flashinfer-python"]


# --- verl --------------------------------------------------------------------------------------


def test_verl_set_with_the_transformers_override_imports_together(hosts):
    """verl 0.9.1, sglang 0.5.12 and transformers 5.9.0 (the override) import in one
    process, rollout included; the only unmet pin is checked above (OVERRIDDEN)."""
    versions = python_json(
        hosts("verl"),
        "import json, importlib.metadata as md\n"
        "import verl, sglang, sglang.srt.server_args, transformers, transformers.activations\n"
        "from verl.workers.rollout import sglang_rollout\n"
        "from verl.trainer import main_ppo, sft_trainer\n"
        "print(json.dumps({n: md.version(n) for n in ('verl', 'sglang', 'transformers')}))\n",
    )
    assert versions == {"verl": "0.9.1", "sglang": "0.5.12", "transformers": "5.9.0"}


def test_verl_ppo_config_composes_with_hydra_for_an_sglang_rollout(hosts):
    result = hosts("verl").run(
        "python -m verl.trainer.main_ppo --cfg job "
        "actor_rollout_ref.rollout.name=sglang actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct "
        "trainer.n_gpus_per_node=2 data.train_batch_size=64"
    )
    assert result.rc == 0, result.stderr[-3000:]
    config = result.stdout
    assert re.search(r"^\s+name: sglang$", config, re.M), config[-2000:]
    assert re.search(r"^\s+n_gpus_per_node: 2$", config, re.M)
    assert "train_batch_size: 64" in config


def test_verl_sft_trainer_config_composes(hosts):
    result = hosts("verl").run("python -m verl.trainer.sft_trainer --cfg job trainer.total_epochs=1")
    assert result.rc == 0, result.stderr[-3000:]
    assert "total_epochs: 1" in result.stdout


# --- the other topics ----------------------------------------------------------------------


def test_cuda_graph_memory_saver_is_the_locked_one(hosts):
    version = python_json(
        hosts("cuda-graph"), "import json, importlib.metadata as md, torch_memory_saver\nprint(json.dumps(md.version('torch-memory-saver')))\n"
    )
    assert version == key_versions(CATALOG.topic("cuda-graph").lock_path, ["torch-memory-saver"])["torch-memory-saver"]


def test_quantization_tools_answer(hosts):
    host = hosts("quantization")
    lm_eval = host.run("lm-eval --help")
    assert lm_eval.rc == 0 and "Language Model Evaluation Harness" in lm_eval.stdout
    tasks = host.run("lm-eval ls tasks")
    assert tasks.rc == 0, tasks.stderr[-2000:]
    assert re.search(r"\bhellaswag\b", tasks.stdout) and re.search(r"\bwikitext\b", tasks.stdout)


QUANTIZE_TINY_MODEL = """
import json, torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
torch.manual_seed(0)
# Widths are multiples of 128, the scheme's group size.
config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
LlamaForCausalLM(config).save_pretrained("/tmp/tiny")
vocab = {f"t{i}": i for i in range(128)}
tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0")
tokenizer.save_pretrained("/tmp/tiny")
# Data-free weight-only INT8: no calibration set, runs on CPU.
model = oneshot(model="/tmp/tiny", recipe=QuantizationModifier(targets="Linear", scheme="W8A16", ignore=["lm_head"]))
model.save_pretrained("/tmp/tiny-w8a16", save_compressed=True)
quant = json.load(open("/tmp/tiny-w8a16/config.json"))["quantization_config"]
print(json.dumps([quant["quant_method"], [g["weights"]["num_bits"] for g in quant["config_groups"].values()]]))
"""


def test_quantization_compresses_a_tiny_model_on_cpu(hosts):
    """llm-compressor's data-free W8A16 on a 2-layer random Llama writes a
    compressed-tensors checkpoint with 8-bit weights (what vLLM and SGLang load)."""
    assert python_json(hosts("quantization"), QUANTIZE_TINY_MODEL) == ["compressed-tensors", [8]]


@pytest.mark.topic("openrlhf")
def test_openrlhf_rollout_engine_and_deepspeed_are_the_locked_ones(hosts):
    versions = python_json(
        hosts("openrlhf"),
        "import json, vllm, deepspeed, openrlhf, importlib.metadata as md\n"
        "from openrlhf.trainer.ray import create_vllm_engines\n"
        "print(json.dumps([vllm.__version__, deepspeed.__version__, md.version('openrlhf')]))\n",
    )
    locked = key_versions(CATALOG.topic("openrlhf").lock_path, ["vllm", "deepspeed", "openrlhf"])
    assert versions == [locked["vllm"], locked["deepspeed"], locked["openrlhf"]]


@pytest.mark.topic("openrlhf")
def test_openrlhf_flash_attn_is_installed_without_its_kernels(hosts):
    """What README.md says: flash-attn 2.8.3's Python package is there (the lock's
    version), its CUDA kernels are not; the image routes flash_attn's imports to its
    Triton backend (tests/integration/test_main_jobs.py shows what that changes)."""
    host = hosts("openrlhf")
    assert python_json(host, "import json, importlib.metadata as md\nprint(json.dumps(md.version('flash-attn')))\n") == "2.8.3"
    result = python(host, "import flash_attn_2_cuda\n")
    assert result.rc != 0 and "No module named 'flash_attn_2_cuda'" in result.stderr


DOCS_SITE = {
    "mkdocs.yml": textwrap.dedent(
        """\
        site_name: Kit docs check
        theme:
          name: material
        plugins:
          - search
          - mkdocs-jupyter:
              execute: true
        nav:
          - Home: index.md
          - Notebook: demo.ipynb
        """
    ),
    "docs/index.md": "# Hello from Markdown\n\n!!! note\n    An admonition, from pymdown/Material.\n",
    "docs/demo.ipynb": json.dumps(
        {
            "cells": [
                {"cell_type": "markdown", "metadata": {}, "source": ["# A notebook page"]},
                {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": ["print(6 * 7)"]},
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    ),
}


def test_docs_builds_a_site_from_markdown_and_an_executed_notebook(hosts):
    host = hosts("docs")
    for path, text in DOCS_SITE.items():
        encoded = base64.b64encode(text.encode()).decode()
        host.check_output(f"mkdir -p /tmp/site/$(dirname {path}) && echo {encoded} | base64 -d > /tmp/site/{path}")
    build = host.run("cd /tmp/site && mkdocs build --strict")
    assert build.rc == 0, build.stderr[-3000:]
    index = host.file("/tmp/site/site/index.html").content_string
    assert "Hello from Markdown" in index and "admonition" in index
    notebook = host.file("/tmp/site/site/demo/index.html").content_string
    assert "A notebook page" in notebook and "42" in notebook  # the cell ran at build time


# --- the commands that report on topics ---------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
def test_invoke_topics_lists_every_topic_and_marks_it_built(build_topic, topic):
    # One topic at a time, in its framework group's run: all seven images at once are more than CI's disk
    build_topic(topic)
    proc = run_kit("topics")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:] if line.strip() and not line.startswith("image:")}
    assert set(rows) == set(TOPICS)
    assert f" built  {topic_alias(topic, 'pypi')}" in rows[topic], rows[topic]


@pytest.mark.parametrize("topic", ["sglang", "verl", "docs"])
def test_invoke_versions_finds_the_locked_versions_in_the_image(build_topic, topic):
    build_topic(topic)
    proc = run_kit("versions", topic)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"{topic_alias(topic, 'pypi')}: every key version matches the lock"
    table = {line.split()[0]: line.split() for line in lines[2:-1]}
    for name in CATALOG.topic(topic).key_packages:
        assert table[name][-1] == "ok" and table[name][1] == table[name][2]
    if CATALOG.topic(topic).framework:
        assert any(line.startswith("NCCL") and line.rstrip().endswith("ok") for line in lines)
