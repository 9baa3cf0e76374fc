"""The compose stacks on the real engine (CPU here; the GPU variants are validated by
compose with GPUs requested, and run on GPU hosts)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from mlsyskit import REPO_ROOT
from mlsyskit.compose.stacks import Devices, RenderOptions, load_stack, render, rendered_yaml, stack_names
from mlsyskit.engine import ContainerSpec, Engine, find_compose
from tests.conftest import need
from tests.integration.conftest import run_kit

GPU_REQUEST = {
    "sglang-serve": ("0", "1"), "sglang-router": ("0", "1", "2"), "verl": ("0", "1"), "nccl-2node": ("0", "1"), "sglang-pd": ("0", "1"),
}  # fmt: skip


def nothing_left(engine: Engine, project: str) -> None:
    left = engine.project_resources(project)
    assert not any(left.values()), f"left behind by {project}: {left}"


@pytest.fixture
def compose(engine: Engine):
    found = find_compose()
    need(found is not None, "no docker compose v2 plugin and no docker-compose >= 1.29")
    return engine.compose()


@pytest.mark.parametrize("name", sorted(GPU_REQUEST))
def test_stack_files_validate_with_gpus_requested(compose, name, tmp_path):
    """The file as shipped (GPUs requested) and as rendered for GPUs both pass `config`."""
    stack = load_stack(name)
    compose.check(f"check-{name}", stack.path)
    rendered = render(stack, RenderOptions(devices=Devices(gpus=GPU_REQUEST[name]), hf_cache=tmp_path / "hf"))
    path = tmp_path / "compose.yml"
    path.write_text(rendered_yaml(rendered, stack))
    compose.check(f"check-{name}", path)
    config = yaml.safe_load(compose.config(f"check-{name}", path).stdout)
    gpu_services = [s for s in config["services"].values() if "deploy" in s]
    assert gpu_services, "no GPU reservation survived `config`"
    for service in gpu_services:
        (request,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert request["driver"] == "nvidia" and request["capabilities"] == ["gpu"] and request["device_ids"]
        assert service["ulimits"]["memlock"] == -1 and service["ulimits"]["stack"] == 67108864


def test_every_stack_has_a_validation_case():
    assert sorted(GPU_REQUEST) == stack_names()


def test_nccl_2node_cpu_all_reduce_across_two_containers(engine: Engine, build_topic):
    build_topic("distributed")
    project = load_stack("nccl-2node").project
    try:
        start = time.monotonic()
        up = run_kit("up", "nccl-2node", "--cpu", timeout=900)
        took = time.monotonic() - start
        assert up.returncode == 0, up.stdout + up.stderr
        assert "all-reduce passed: backend gloo, world size 2, exact sums at every size: True" in up.stdout
        assert re.search(r"node-0 +node +job +exited 0 \(done\)", up.stdout)
        print(f"`invoke up nccl-2node --cpu` took {took:.1f}s")
        # The two ranks ran in two containers (two hosts to torch.distributed).
        logs = run_kit("logs", "nccl-2node", "-s", "node-1")
        assert logs.returncode == 0 and re.search(r"node 1/2 on \S+: 1 process\(es\) on cpu, head node-0:29500", logs.stdout), logs.stdout
    finally:
        down = run_kit("down", "nccl-2node")
    assert down.returncode == 0, down.stderr
    nothing_left(engine, project)
    assert not (REPO_ROOT / ".kit" / "stacks" / "nccl-2node").exists()


def test_verl_cpu_ray_cluster_of_two_nodes_runs_a_job(engine: Engine):
    need((REPO_ROOT / "envs" / "verl" / "topic.toml").is_file(), "the verl topic is not in envs/ yet")
    project = load_stack("verl").project
    try:
        start = time.monotonic()
        up = run_kit("up", "verl", "--cpu", timeout=3600)
        took = time.monotonic() - start
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ray job: passed" in up.stdout
        print(f"`invoke up verl --cpu` took {took:.1f}s (including any image build)")
        head = next(c.id for c in engine.project_containers(project) if c.service == "ray-head")
        status = engine.exec_in(head, ["ray", "status"])
        assert status.returncode == 0, status.stderr
        active = status.stdout.split("Active:")[1].split("Pending:")[0]
        assert len(re.findall(r"^\s*1 node_", active, re.MULTILINE)) == 2, status.stdout
    finally:
        down = run_kit("down", "verl")
    assert down.returncode == 0, down.stderr
    nothing_left(engine, project)


def test_verl_gpu_trainer_config_composes_for_the_cluster(engine: Engine):
    """The GPU trainer's Hydra overrides (nnodes x GPUs) compose against the image's verl and
    pass verl's validate_config: checked on CPU, before any GPU host runs them."""
    need(engine.image_exists("mlsyskit/verl:pypi"), "mlsyskit/verl:pypi is not built")
    spec = ContainerSpec(
        image="mlsyskit/verl:pypi",
        command=("python", "/opt/mlsyskit/stacks/verl_trainer.py", "--check", "trainer.nnodes=2", "trainer.n_gpus_per_node=8"),
        volumes=(f"{REPO_ROOT}/compose/scripts:/opt/mlsyskit/stacks:ro", f"{REPO_ROOT}/smoke_tests:/opt/mlsyskit/smoke_tests:ro"),
        env=("PYTHONPATH=/opt/mlsyskit", "KIT_WORK_DIR=/tmp/w"),
    )
    result = engine.run(spec, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    config = json.loads(result.stdout.strip().splitlines()[-1])
    assert config["nnodes"] == 2 and config["n_gpus_per_node"] == 8
    assert config["adv_estimator"] == "grpo" and config["rollout"] == "sglang"


FAILING = """
x-mlsyskit: {description: a worker that dies, pattern: nodes, topic: distributed, cpu: true, gpus: {default: 1, min: 1}, wait: 600}
services:
  keeper:
    image: mlsyskit/distributed:pypi
    x-mlsyskit: {role: head, run: service}
    command: ["sleep", "infinity"]
    init: true
    volumes: ["scratch:/scratch"]
  worker:
    image: mlsyskit/distributed:pypi
    x-mlsyskit: {role: worker, run: service}
    command: ["sh", "-c", "echo worker starting; sleep 2; echo worker-died-marker >&2; exit 3"]
    healthcheck: {test: ["CMD", "test", "-f", "/never"], interval: 1s, retries: 1000}
  trainer:
    image: mlsyskit/distributed:pypi
    x-mlsyskit: {role: driver, run: job}
    command: ["sh", "-c", "echo never runs"]
    depends_on:
      worker: {condition: service_healthy}
volumes:
  scratch: {}
"""


@pytest.fixture
def failing_tree(kit_tree: Path) -> Path:
    (kit_tree / "compose").mkdir()
    (kit_tree / "compose" / "failing.yml").write_text(FAILING)
    return kit_tree


def test_a_dead_worker_fails_up_with_its_logs_and_down_cleans_up(engine: Engine, build_topic, failing_tree: Path):
    build_topic("distributed")
    env = {"MLSYSKIT_ROOT": str(failing_tree)}
    project = "mlsyskit-failing"
    try:
        start = time.monotonic()
        up = run_kit("up", "failing", "--cpu", env=env, timeout=300)
        took = time.monotonic() - start
        assert up.returncode == 6, up.stdout + up.stderr
        assert "error: failing: worker stopped (exit code 3)" in up.stderr
        assert "worker-died-marker" in up.stderr  # the service's own last lines
        assert took < 120, f"waited {took:.0f}s on a dead worker (--wait is 600)"
        assert engine.project_resources(project)["volumes"], "the stack's volume should exist until `down`"
    finally:
        down = run_kit("down", "failing", env=env)
    assert down.returncode == 0, down.stderr
    assert "removed" in down.stdout
    nothing_left(engine, project)
    assert not (failing_tree / ".kit" / "stacks" / "failing").exists()


CRASH_LOOP = """
x-mlsyskit: {description: a service in a restart loop, pattern: nodes, topic: distributed, cpu: true, gpus: {default: 1, min: 1}, wait: 600}
services:
  looper:
    image: mlsyskit/distributed:pypi
    x-mlsyskit: {role: node, run: service}
    command: ["sh", "-c", "echo looper-crash-marker; exit 5"]
    restart: always
"""


def test_a_service_in_a_restart_loop_fails_up_at_once(engine: Engine, build_topic, kit_tree: Path):
    """restart: always + a crashing command: docker keeps it `restarting`; `up` says so in
    seconds (exit 6, its last lines) instead of waiting out --wait (600 s here)."""
    build_topic("distributed")
    (kit_tree / "compose").mkdir()
    (kit_tree / "compose" / "crashloop.yml").write_text(CRASH_LOOP)
    env = {"MLSYSKIT_ROOT": str(kit_tree)}
    try:
        start = time.monotonic()
        up = run_kit("up", "crashloop", "--cpu", env=env, timeout=300)
        took = time.monotonic() - start
        assert up.returncode == 6, up.stdout + up.stderr
        assert "error: crashloop: looper is restarting after exiting with code 5 (a restart loop)" in up.stderr
        assert "looper-crash-marker" in up.stderr
        assert took < 120, f"waited {took:.0f}s on a crash loop (--wait is 600)"
    finally:
        down = run_kit("down", "crashloop", env=env)
    assert down.returncode == 0, down.stderr
    nothing_left(engine, "mlsyskit-crashloop")


def test_up_of_a_gpu_only_stack_on_cpu_is_one_line(engine: Engine):
    result = run_kit("up", "sglang-serve", "--cpu")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sglang-serve has no CPU variant: it needs GPUs (fix: stacks with --cpu: nccl-2node, verl)"


def test_logs_of_a_stack_that_is_not_up(engine: Engine):
    result = run_kit("logs", "verl")
    assert result.returncode == 2 and "verl is not up" in result.stderr


def test_down_of_a_stack_that_is_not_up_is_fine(engine: Engine):
    result = run_kit("down", "sglang-router")
    assert result.returncode == 0 and "nothing to remove" in result.stdout


def test_stacks_table(engine: Engine):
    result = run_kit("stacks")
    assert result.returncode == 0
    for name in stack_names():
        assert re.search(rf"^{re.escape(name)}\s", result.stdout, re.MULTILINE)
