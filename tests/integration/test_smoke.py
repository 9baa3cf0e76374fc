"""`invoke smoke` and the smoke tests' CPU paths on the real engine, inside the topic images:
the gloo all-reduce in one container and across two (nccl-2node), the CUDA-graph test's eager
path, SGLang's and verl's model and data generation, and every time limit and clean-up path
(a failed result, no container and no process left)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.checks import smoke
from mlsyskit.engine import ContainerInfo, ContainerSpec, Engine
from mlsyskit.images.plan import topic_alias
from smoke_tests._result import validate_result
from tests.conftest import need
from tests.integration.conftest import run_kit


def with_smoke_tests(image: str, command: tuple[str, ...]) -> ContainerSpec:
    """A throw-away container of the image with the checkout's smoke_tests/ mounted."""
    return ContainerSpec(
        image=image, command=command, volumes=(f"{REPO_ROOT / 'smoke_tests'}:/opt/mlsyskit/smoke_tests:ro",),
        env=("PYTHONPATH=/opt/mlsyskit",), host_ipc=True,
    )  # fmt: skip


def has_topic(name: str) -> bool:
    return (REPO_ROOT / "envs" / name / "topic.toml").is_file()


def smoke_containers(engine: Engine) -> list[ContainerInfo]:
    return engine.containers(smoke.LABEL)


def nothing_left(engine: Engine) -> None:
    assert smoke_containers(engine) == [], "a smoke container was left behind"
    stack = engine.project_resources("mlsyskit-nccl-2node")
    assert not any(stack.values()), f"nccl-2node left behind: {stack}"


def read(path: Path) -> dict:
    """invoke smoke's --json file; every result in the smoke tests' schema."""
    data = json.loads(path.read_text())
    for entry in data["results"]:
        assert validate_result(entry["result"]) == [], entry
    return data


def results_reason(data: dict, test: str) -> str:
    return by_where(data)[(test, "container")]["reason"]


def by_where(data: dict) -> dict[tuple[str, str], dict]:
    return {(r["result"]["test"], r["where"]): r["result"] for r in data["results"]}


def in_image(engine: Engine, image: str, script: str, timeout: float = 600):
    """A shell script in a throw-away container of the image, with smoke_tests/ mounted."""
    return engine.run(with_smoke_tests(image, ("sh", "-c", script)), timeout=timeout)


# --- distributed: gloo all-reduce, one container and two -------------------------------------


def test_smoke_distributed_cpu_single_container_and_two_nodes(engine: Engine, build_topic, tmp_path):
    build_topic("distributed")
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "distributed", "--cpu", "--json", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    data = read(out)
    # cuda_jit builds its kernel with the wheels' nvcc and is skipped: nothing to run it on;
    # gpu_health has no CPU variant and says so
    assert data["exit_code"] == 0 and data["counts"] == {"passed": 2, "failed": 0, "skipped": 2}
    results = by_where(data)
    health = results[("gpu_health", "container")]
    assert health["status"] == "skipped" and "no CPU variant" in health["reason"]
    jit = results[("cuda_jit", "container")]
    assert jit["status"] == "skipped" and "compiled and linked for sm_90" in jit["reason"]
    assert jit["figures"]["toolkit"]["from_wheels"] is True
    for where in ("container", "nccl-2node"):
        result = results[("nccl", where)]
        figures = result["figures"]
        assert result["status"] == "passed", result["reason"]
        assert (figures["backend"], figures["world_size"]) == ("gloo", 2)
        assert figures["sizes"] and all(row["correct"] and row["mismatched_elements"] == 0 for row in figures["sizes"])
    # Two containers are two hosts to torch.distributed; one container is one.
    assert results[("nccl", "nccl-2node")]["environment"]["hostname"] != results[("nccl", "container")]["environment"]["hostname"]
    table = proc.stdout[proc.stdout.index("test ") :]
    assert "nccl (nccl-2node)  distributed  passed" in table and "gloo x2, 4 collectives exact" in table
    assert "2 passed, 0 failed, 2 skipped" in table
    # every collective ran over gloo and was exact, in both places
    for where in ("container", "nccl-2node"):
        collectives = results[("nccl", where)]["figures"]["collectives"]
        assert list(collectives) == ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]
        assert all(row["correct"] for rows in collectives.values() for row in rows)
        verdicts = {v["name"]: v for v in results[("nccl", where)]["verdicts"]}
        assert all(verdicts[f"{name} exact"]["status"] == "passed" for name in collectives)
        assert verdicts["busbw_share"]["status"] == "not judged" and verdicts["busbw_share"]["detail"] == "gloo: no NVLink"
    # under the results, each gate with what it measured
    assert "gate         measured" in table and "nccl (nccl-2node)  distributed  transport" in table
    nothing_left(engine)


def test_a_gate_given_to_invoke_smoke_reaches_the_test_in_its_container_and_across_two(engine: Engine, build_topic, tmp_path):
    """--gate busbw=1000000 (GB/s: no machine meets it): the gloo run and the two-node stack
    measure, then fail on that gate, each saying its figure; a bad gate starts nothing."""
    build_topic("distributed")
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "distributed", "--cpu", "--tests", "nccl", "--gate", "nccl.busbw=1000000", "--json", str(out), timeout=1200)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr
    results = by_where(read(out))
    for where in ("container", "nccl-2node"):
        result = results[("nccl", where)]
        assert result["status"] == "failed" and result["reason"].startswith("busbw: "), result["reason"]
        busbw = next(v for v in result["verdicts"] if v["name"] == "busbw")
        assert (busbw["status"], busbw["expected"], busbw["gate"]) == ("failed", ">= 1e+06 GB/s", True)
        assert result["figures"]["gates"]["busbw"] == "1e+06"
    assert "--gate nccl.busbw=1000000" in read(out)["command"]
    bad = run_kit("smoke", "distributed", "--cpu", "--gate", "busbw=lots", timeout=300)
    assert bad.returncode == 2 and "--gate busbw=lots: gate busbw takes a number or off" in bad.stderr
    assert "==" not in bad.stdout  # refused before any test started
    nothing_left(engine)


def test_without_a_gpu_every_gpu_test_is_skipped_never_passed(engine: Engine, build_topic, tmp_path):
    from mlsyskit.runtime.gpus import host_has_gpus

    if host_has_gpus():
        pytest.skip("this host has a GPU: the no-GPU path does not apply")
    build_topic("distributed")
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "distributed", "--json", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr  # a skip is not a failure...
    data = read(out)
    assert data["counts"] == {"passed": 0, "failed": 0, "skipped": 4}  # ...and never a pass
    results = by_where(data)
    assert results[("gpu_health", "container")]["reason"].startswith("no CUDA GPU visible")
    assert results[("nccl", "container")]["reason"] == "no CUDA GPU visible: NCCL needs one GPU per rank (--cpu runs the gloo variant)"
    assert results[("nccl", "nccl-2node")]["reason"].startswith("no NVIDIA GPU on this host")
    assert "skipped: no CUDA GPU visible" in proc.stdout and "it is not a pass" in proc.stdout
    assert "running on CPU only" in proc.stdout  # invoke shell's one warning line
    nothing_left(engine)


def test_gpus_asked_for_and_none_visible_fails_every_row_with_the_fix(engine: Engine, build_topic, tmp_path):
    """--require-gpu (what a host with GPUs implies): the container sees no GPU, so each test
    fails and says why; the two-node variant, which cannot start here, fails too."""
    from mlsyskit.runtime.gpus import host_has_gpus

    if host_has_gpus():
        pytest.skip("this host has a GPU: its containers would see it")
    build_topic("distributed")
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "distributed", "--require-gpu", "--json", str(out), timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    assert "error: 4 smoke test(s) failed" in proc.stderr
    data = read(out)
    assert data["counts"] == {"passed": 0, "failed": 4, "skipped": 0}
    assert results_reason(data, "gpu_health").startswith("GPUs were asked for, but none is visible")
    results = by_where(data)
    nccl = results[("nccl", "container")]["reason"]
    assert nccl.startswith("GPUs were asked for, but none is visible: no /dev/nvidia* device")
    assert "`invoke doctor`" in nccl
    jit = results[("cuda_jit", "container")]
    assert jit["reason"].startswith("GPUs were asked for") and jit["figures"]["torch_extension"]["build_seconds"] > 0
    two = results[("nccl", "nccl-2node")]["reason"]
    assert two.startswith("GPUs were asked for, but no NVIDIA GPU on this host: nccl-2node needs 2")
    assert "--require-gpu" in data["command"]
    nothing_left(engine)


def test_smoke_time_limit_fails_and_leaves_nothing(engine: Engine, build_topic, tmp_path):
    build_topic("distributed")
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "distributed", "--cpu", "--timeout", "1", "--json", str(out), timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    assert "error: 3 smoke test(s) failed" in proc.stderr
    data = read(out)
    assert data["counts"] == {"passed": 0, "failed": 3, "skipped": 1} and data["exit_code"] == 1
    for (test, _), result in by_where(data).items():
        if test == "gpu_health":  # no CPU variant: skipped at once, before any limit
            assert result["status"] == "skipped" and "no CPU variant" in result["reason"], result
        else:
            assert result["status"] == "failed" and result["reason"].startswith("timed out after 1 s"), result
    nothing_left(engine)


def test_a_container_past_the_kits_limit_is_removed(engine: Engine, build_topic, tmp_path):
    """The kit's own limit (the test ignored its --timeout): the container is removed."""
    build_topic("distributed")
    run = smoke.PlannedRun(topic="distributed", test="nccl", where="container", command=(), limit=5)
    spec = ContainerSpec(image=topic_alias("distributed", "pypi"), command=("sleep", "600"))
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    result = smoke.run_in_container(engine, run, spec, tmp_path, run_id, print)
    assert result["status"] == "failed" and result["reason"] == "no result: the container ran past 5 s and was removed"
    assert engine.containers(f"{smoke.LABEL}={run_id}") == []


def test_unknown_topic_and_test_are_one_line_errors():
    proc = run_kit("smoke", "nope", timeout=120)
    assert proc.returncode == 2 and "error: unknown topic 'nope'" in proc.stderr
    proc = run_kit("smoke", "distributed", "--tests", "nope", timeout=120)
    assert proc.returncode == 2 and "error: no smoke test 'nope'" in proc.stderr


# --- CUDA graph: the eager path on the CPU ---------------------------------------------------


def test_cuda_graph_cpu_path_runs_eager_and_is_skipped(engine: Engine, build_topic, tmp_path):
    # Its own image where the topic exists; the distributed image has the same torch.
    topic = "cuda-graph" if has_topic("cuda-graph") else "distributed"
    build_topic(topic)
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", topic, "--cpu", "--tests", "cuda_graph", "--no-stacks", "--json", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    result = by_where(read(out))[("cuda_graph", "container")]
    assert result["status"] == "skipped"  # never passed without a GPU
    assert result["reason"] == "--cpu given: CUDA graphs need a GPU (the eager path ran on the CPU and was repeatable)"
    assert result["figures"]["cpu_eager_repeatable"] is True and result["figures"]["parameters"] > 0
    assert "0 passed, 0 failed, 1 skipped" in proc.stdout
    nothing_left(engine)


# --- SGLang and verl: model and data generation inside their images ---------------------------


@pytest.fixture(scope="module")
def sglang_image(build_topic):
    need(has_topic("sglang"), "envs/sglang/topic.toml is missing")
    build_topic("sglang")
    return topic_alias("sglang", "pypi")


@pytest.fixture(scope="module")
def verl_image(build_topic):
    need(has_topic("verl"), "envs/verl/topic.toml is missing")
    build_topic("verl")
    return topic_alias("verl", "pypi")


@pytest.mark.topic("sglang")
def test_sglang_cpu_path_writes_and_loads_the_tiny_model(engine: Engine, sglang_image, tmp_path):
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "sglang", "--cpu", "--tests", "sglang_serve,sglang_pd", "--json", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    pd = by_where(read(out))[("sglang_pd", "container")]
    assert pd["status"] == "skipped" and pd["figures"]["transfer_backend"] == "nixl"
    assert pd["reason"] == "--cpu given: prefill/decode disaggregation needs two GPUs (the tiny model was written and loaded on the CPU)"
    result = by_where(read(out))[("sglang_serve", "container")]
    assert result["status"] == "skipped"
    assert result["reason"] == "--cpu given: an SGLang server needs a GPU (the tiny model was written and loaded on the CPU)"
    figures = result["figures"]
    assert figures["model"] == "tiny" and figures["tiny_model"]["heads"] == 4 and figures["tiny_model"]["hidden_size"] == 256
    assert figures["cpu_check"]["eos_token"] == "<|im_end|>" and figures["cpu_check"]["chat_prompt_tokens"] > 0
    assert result["environment"]["sglang"]
    nothing_left(engine)


@pytest.mark.topic("sglang")
def test_tiny_model_in_the_sglang_image_has_what_the_server_reads(engine: Engine, sglang_image):
    """The files SGLang's model loader and tokenizer manager read: config with head_dim 64,
    generation_config with the EOS id, safetensors, a tokenizer with a chat template."""
    script = (
        "python -m smoke_tests.tiny_model /tmp/t --preset serve --rl-rows 8 >/dev/null && python - <<'EOF'\n"
        "import json\n"
        "from transformers import AutoConfig, AutoTokenizer, GenerationConfig\n"
        "cfg = AutoConfig.from_pretrained('/tmp/t/model'); gen = GenerationConfig.from_pretrained('/tmp/t/model')\n"
        "tok = AutoTokenizer.from_pretrained('/tmp/t/model')\n"
        "print(json.dumps({'head_dim': cfg.hidden_size // cfg.num_attention_heads, 'eos': gen.eos_token_id,\n"
        "  'eos_token': tok.convert_ids_to_tokens(gen.eos_token_id), 'template': bool(tok.chat_template),\n"
        "  'arch': cfg.architectures, 'context': cfg.max_position_embeddings, 'dtype': str(cfg.dtype)}))\n"
        "EOF"
    )
    proc = in_image(engine, sglang_image, script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {
        "head_dim": 64, "eos": facts["eos"], "eos_token": "<|im_end|>", "template": True, "arch": ["Qwen2ForCausalLM"],
        # longer than any prefill chunk SGLang captures piecewise CUDA graphs for (8192 on an H200)
        "context": 32768, "dtype": "torch.bfloat16",
    }  # fmt: skip


def test_verl_cpu_paths_compose_the_grpo_config_with_hydra(engine: Engine, verl_image, tmp_path):
    out = tmp_path / "smoke.json"
    proc = run_kit("smoke", "verl", "--cpu", "--tests", "verl_sft,verl_grpo", "--json", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    results = by_where(read(out))
    assert results[("verl_sft", "container")]["status"] == "skipped"
    grpo = results[("verl_grpo", "container")]
    assert grpo["status"] == "skipped", grpo["reason"]
    assert "verl's composed config were checked on the CPU" in grpo["reason"]
    assert grpo["figures"]["config"] == {
        "adv_estimator": "grpo", "rollout": "sglang", "rollout_n": 4, "critic": False, "reference": False,
        "attn_implementation": "sdpa", "reward_function": "/opt/mlsyskit/smoke_tests/_grpo_reward.py",
        "logger": ["console"], "total_training_steps": 2,
    }  # fmt: skip
    assert grpo["figures"]["tiny_model"]["rl_rows"] == 64 and grpo["figures"]["tiny_model"]["max_prompt_tokens"] <= 64
    nothing_left(engine)


def test_verl_grpo_config_check_catches_a_wrong_override(engine: Engine, verl_image):
    """Hydra against verl 0.9.1's own config: a key that does not exist, and verl's
    validate_config on sizes that do not fit, both fail in seconds on the CPU."""
    script = (
        "python -m smoke_tests.verl_grpo --cpu --json /tmp/a.json --override actor_rollout_ref.rollout.no_such_key=1 >/dev/null; "
        "python -m smoke_tests.verl_grpo --cpu --json /tmp/b.json --override actor_rollout_ref.actor.ppo_mini_batch_size=16 >/dev/null; "
        "cat /tmp/a.json; echo; cat /tmp/b.json"
    )
    proc = in_image(engine, verl_image, script)
    a, b = _two_json(proc.stdout)
    assert a["status"] == "failed" and "Could not override 'actor_rollout_ref.rollout.no_such_key'" in a["reason"]
    assert b["status"] == "failed" and "train_batch_size (8) must be >= actor.ppo_mini_batch_size (16)" in b["reason"]


def _two_json(text: str) -> tuple[dict, dict]:
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(text.strip())
    second, _ = decoder.raw_decode(text.strip()[end:].strip())
    return first, second


@pytest.mark.parametrize(
    "topic, module",
    [
        ("sglang", "sglang_serve"),
        ("sglang", "sglang_pd"),
        ("verl", "verl_grpo"),
        ("verl", "verl_sft"),
        ("cuda-graph", "cuda_graph"),
        ("distributed", "nccl"),
        ("verl", "cuda_jit"),
        ("cuda-graph", "memory_saver"),
        ("quantization", "quantize"),
        ("docs", "docs_site"),
        ("openrlhf", "vllm_serve"),
        ("openrlhf", "openrlhf_sft"),
    ],
)
def test_every_tests_time_limit_in_its_image(engine: Engine, build_topic, topic, module):
    """--timeout 1: a failed result naming the limit, exit 1, and no process of the test left
    in the container (torchrun's ranks, a server, Ray's daemons)."""
    if topic == "cuda-graph" and not has_topic(topic):
        topic = "distributed"  # the CUDA-graph test needs only torch
    need(has_topic(topic), f"envs/{topic}/topic.toml is missing")
    build_topic(topic)
    script = (
        f"python -m smoke_tests.{module} --cpu --timeout 1 --json /tmp/r.json >/tmp/out 2>&1; echo rc=$?; "
        "sleep 1; cat /tmp/r.json; echo; ps -eo args | grep -E 'python|torchrun|ray|sglang|vllm|mkdocs' | grep -v grep || true"
    )
    proc = in_image(engine, topic_alias(topic, "pypi"), script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head, _, rest = proc.stdout.partition("\n")
    result, end = json.JSONDecoder().raw_decode(rest.strip())
    left = rest.strip()[end:].strip()
    if result["status"] == "skipped":  # finished inside a second (verl_sft skips at once on the CPU)
        assert head == "rc=0"
    else:
        assert head == "rc=1" and result["status"] == "failed" and result["reason"]
        if module != "nccl":  # nccl's parent reports what its ranks did: torchrun ends a timed-out rank's peer
            assert result["reason"] == "timed out after 1 s"
    assert left == "", f"left running: {left}"
