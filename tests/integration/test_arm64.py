"""arm64 (GH200/GB200) under qemu on this x86_64 machine: the `distributed` topic built from
the same locks (root filesystem, base, torch framework, topic) and its CPU smoke test, the gloo
all-reduce in one container and across two (the nccl-2node stack). The image's own tests
run for both architectures in test_image_distributed.py."""

from __future__ import annotations

import json

from mlsyskit.arch import host_arch
from mlsyskit.engine import Engine
from tests.conftest import need
from tests.integration.conftest import run_kit

ARM = "pypi-arm64"


def test_the_arm64_gloo_all_reduce_passes_in_one_container_and_across_two(engine: Engine, build_topic, tmp_path):
    from mlsyskit.context import binfmt_state

    need(binfmt_state("arm64") in ("native", "ready"), "no arm64 emulation here: `invoke doctor --fix`")
    build_topic("distributed", ARM)
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "distributed", "--cpu", "--arch", "arm64", "--tests", "nccl", "--json", str(out), timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    data = json.loads(out.read_text())
    results = {(r["result"]["test"], r["where"]): r["result"] for r in data["results"]}
    assert set(results) == {("nccl", "container"), ("nccl", "nccl-2node")}
    for result in results.values():
        assert result["status"] == "passed", result["reason"]
        assert (result["figures"]["backend"], result["figures"]["world_size"]) == ("gloo", 2)
        assert all(row["correct"] for rows in result["figures"]["collectives"].values() for row in rows)
    # Where the ranks ran, as each result's own environment records it (Python's platform
    # inside the container), and the image every row names, as the engine describes it.
    for entry in data["results"]:
        assert "aarch64" in entry["result"]["environment"]["platform"], entry["result"]["environment"]
        assert "x86_64" not in entry["result"]["environment"]["platform"]
    assert {entry["image"] for entry in data["results"]} == {"mlsyskit/distributed:pypi-arm64"}
    assert engine.image("mlsyskit/distributed:pypi-arm64").architecture == "arm64"
    assert not engine.project_resources("mlsyskit-nccl-2node")["containers"]


def test_bad_arch_inputs_are_one_line_and_build_nothing(engine: Engine):
    before = {i.id for i in engine.images("org.mlsyskit.kind")}
    for args, message in [
        (("build", "distributed", "--arch", "sparc"), "error: unknown architecture 'sparc'"),
        (("build", "openrlhf", "--arch", "arm64"), "error: topic 'openrlhf' has no arm64 image"),
        (("shell", "openrlhf", "--arch", "arm64", "--", "true"), "error: topic 'openrlhf' has no arm64 image"),
    ]:
        proc = run_kit(*args, timeout=300)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert {i.id for i in engine.images("org.mlsyskit.kind")} == before
    assert host_arch() in ("amd64", "arm64")
