"""The `distributed` image on the pypi base, for amd64 and for arm64 (built and run under qemu
on an x86_64 machine: GH200/GB200's architecture), checked from inside with testinfra."""

import json

import pytest

from mlsyskit import LABEL_PREFIX
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.lockfile import ENVIRONMENT_SCRIPT, expected_packages, key_versions, lock_sha256
from mlsyskit.engine import ContainerSpec
from mlsyskit.images.plan import topic_alias

TOPIC = "distributed"


def locked(name: str) -> str:
    """The version the topic's lock pins (torch: 2.11.0), never a copy of it in the test."""
    return key_versions(load_catalog().topic(TOPIC).lock_path, [name])[name]


@pytest.fixture(scope="module", params=["pypi", "pypi-arm64"])
def base(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def host(topic_container, base):
    return topic_container(TOPIC, base)


def test_the_image_is_of_its_architecture(host, base, engine):
    machine, arch = ("aarch64", "arm64") if base.endswith("-arm64") else ("x86_64", "amd64")
    assert host.check_output("uname -m") == machine
    assert host.check_output("python -c 'import platform; print(platform.machine())'") == machine
    info = engine.image(topic_alias(TOPIC, base))
    assert info.architecture == arch and info.labels["org.mlsyskit.arch"] == arch
    assert host.check_output("dpkg --print-architecture") == arch


def test_an_emulated_arm64_container_sees_an_arm64_cpu(host, base, engine):
    """Under qemu the host's x86 /proc/cpuinfo would show through, and torch 2.14's aarch64
    oneDNN segfaults on it at import (the sglang image): every arm64 container the kit starts
    on an x86 host sees an arm64 cpuinfo, whether the spec names the platform (shell, smoke,
    this fixture) or not (`engine.run` of an arm64 image: check, versions, sbom)."""
    cpuinfo = host.file("/proc/cpuinfo").content_string
    plain = engine.run(ContainerSpec(image=topic_alias(TOPIC, base), command=("cat", "/proc/cpuinfo")), timeout=300)
    assert plain.returncode == 0, plain.stderr
    for text in (cpuinfo, plain.stdout):
        if base.endswith("-arm64"):
            assert "CPU implementer\t: 0x41" in text and "CPU part\t: 0xd4f" in text and "vendor_id" not in text
        else:
            assert "CPU part" not in text  # the host's own, untouched


def test_python_is_the_distributions(host):
    out = host.check_output("python -c 'import sys; print(sys.executable, sys.version_info[:2])'")
    assert out == "/opt/venv/bin/python (3, 11)"
    assert host.file("/opt/venv/bin/python").linked_to.startswith("/usr/bin/python3")


def test_every_locked_package_is_installed_at_its_locked_version(host):
    environment = json.loads(host.check_output(f"python -c '{ENVIRONMENT_SCRIPT}'"))
    locked = expected_packages(load_catalog().topic(TOPIC).lock_path, environment)
    assert "torch" in locked and "numpy" in locked
    script = (
        "import importlib.metadata as md, json\n"
        "print(json.dumps({d.metadata['Name'].lower().replace('_','-').replace('.','-'): d.version for d in md.distributions()}))"
    )
    installed = json.loads(host.check_output(f'python -c "{script}"'))
    wrong = {name: (version, installed.get(name)) for name, version in locked.items() if installed.get(name) != version}
    assert wrong == {}


def test_torch_imports_with_cuda_13_wheels(host):
    out = host.check_output("python -c 'import torch; print(torch.__version__, torch.version.cuda)'")
    cuda = load_catalog().frameworks[load_catalog().topic(TOPIC).framework].cuda
    assert out.split()[0].split("+")[0] == locked("torch") and out.split()[1] == cuda


def test_nvcc_from_the_wheels_is_on_path_for_jit(host):
    # a folder of links into the wheels, laid out as torch's JIT expects (lib64, libcudart.so)
    assert host.file("/usr/local/cuda/bin").is_symlink
    assert "/site-packages/nvidia/" in host.file("/usr/local/cuda/bin").linked_to
    assert "release 13.0" in host.check_output("nvcc --version")
    assert host.file("/usr/local/cuda/include/cuda_runtime.h").exists
    assert host.file("/usr/local/cuda/lib64/libcudart.so").exists
    assert host.exists("ninja")


def test_topology_tools_are_installed(host):
    for tool in ("lstopo-no-graphics", "numactl", "lspci", "ibv_devinfo"):
        assert host.exists(tool), tool


GLOO_ALL_REDUCE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.full((1024,), float(rank + 1))
dist.all_reduce(t)
assert torch.all(t == world * (world + 1) / 2), t[:4]
if rank == 0: print("sum", int(t[0].item()))
dist.destroy_process_group()
"""


def test_two_process_gloo_all_reduce_gives_the_right_sum(host):
    host.check_output(f"cat > /tmp/allreduce.py <<'EOF'\n{GLOO_ALL_REDUCE}\nEOF")
    out = host.run("torchrun --nproc_per_node 2 --master_port 29511 /tmp/allreduce.py")
    assert out.rc == 0, out.stderr
    assert "sum 3" in out.stdout


def test_labels_carry_the_lock_hash_and_versions(engine):
    topic = load_catalog().topic(TOPIC)
    labels = engine.image(topic_alias(TOPIC, "pypi")).labels
    assert labels[f"{LABEL_PREFIX}.lock-sha256"] == lock_sha256(topic.lock_path)
    assert json.loads(labels[f"{LABEL_PREFIX}.key-versions"])["torch"] == locked("torch")
    assert labels[f"{LABEL_PREFIX}.framework"] == topic.framework
