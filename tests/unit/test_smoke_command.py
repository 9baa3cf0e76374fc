"""`invoke smoke` without an engine: planning, judging what happened around a test, the
key figures (from the GPU results in benchmarks/gpu/), the table, --json, exit codes, and
that a container is removed however its run ends (a fake engine)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.checks import smoke
from mlsyskit.data.catalog import Topic
from mlsyskit.engine import ContainerSpec
from mlsyskit.errors import UsageError
from smoke_tests._result import validate_result

GPU_RESULTS = REPO_ROOT / "benchmarks" / "gpu" / "2026-11-27-h100x2"
KNOWN = [
    "cuda_graph",
    "docs_site",
    "gpu_health",
    "memory_saver",
    "nccl",
    "openrlhf_sft",
    "quantize",
    "sglang_pd",
    "sglang_serve",
    "verl_grpo",
    "verl_sft",
    "vllm_serve",
]


def topic(name: str, tests=(), stacks=()) -> Topic:
    return Topic(name=name, path=Path("/x") / name, description="d", framework="", smoke_tests=tuple(tests), stacks=tuple(stacks))


TOPICS = {
    "distributed": topic("distributed", ["nccl"], ["nccl-2node"]),
    "verl": topic("verl", ["verl_sft", "verl_grpo"]),
    "docs": topic("docs"),
}


def test_every_smoke_test_script_is_known():
    assert smoke.available_tests() == sorted([*KNOWN, "cuda_jit"])
    # helpers and the benchmark reference are no smoke tests
    assert not {"_result", "__init__", "tiny_model", "reference_allreduce", "libs"} & set(smoke.available_tests())


def test_each_test_declares_its_own_time_limit_and_the_kit_uses_it():
    """The limit lives in one place, the script: its --timeout default is the registry's."""
    import re
    import subprocess
    import sys

    for name, declared in smoke.registry().items():
        helptext = subprocess.run([sys.executable, "-m", f"smoke_tests.{name}", "--help"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        parser_default = re.search(r"fail after this many seconds\s+\(default (\d+)\)", " ".join(helptext.split()))
        assert parser_default and float(parser_default.group(1)) == declared.timeout > 0, name
        opts = smoke.SmokeOptions(topics="x")
        assert smoke.limit_for(name, opts) == declared.timeout + smoke.MARGIN
        assert smoke.limit_for(name, smoke.SmokeOptions(topics="x", timeout=7)) == 7 + smoke.MARGIN


def test_plan_runs_the_container_then_the_two_node_variant():
    runs = smoke.plan([TOPICS["distributed"]], smoke.SmokeOptions(topics="distributed", cpu=True), KNOWN)
    assert [(r.test, r.where) for r in runs] == [("nccl", "container"), ("nccl", "nccl-2node")]
    assert runs[0].command == ("python", "-m", "smoke_tests.nccl", "--json", "/workspace/nccl.json", "--cpu")
    assert runs[0].limit == 300 + smoke.MARGIN  # the nccl script's own --timeout default
    assert runs[1].command == () and runs[1].label == "nccl (nccl-2node)"


def test_plan_passes_timeout_and_model_where_they_apply():
    opts = smoke.SmokeOptions(topics="verl", timeout=30, model="org/m")
    runs = smoke.plan([TOPICS["verl"], topic("sglang", ["sglang_serve"])], opts, KNOWN)
    by_test = {r.test: r for r in runs}
    assert by_test["verl_sft"].command[-2:] == ("--timeout", "30") and "--model" not in by_test["verl_sft"].command
    assert by_test["sglang_serve"].command[-4:] == ("--timeout", "30", "--model", "org/m")
    assert all(r.limit == 30 + smoke.MARGIN for r in runs)
    two = smoke.plan([TOPICS["distributed"]], smoke.SmokeOptions(topics="distributed", timeout=5), KNOWN)
    assert two[1].command == ("--timeout", "5")


def test_plan_with_tests_and_without_stacks():
    opts = smoke.SmokeOptions(topics="distributed", tests="cuda_graph", cpu=True)
    runs = smoke.plan([TOPICS["distributed"]], opts, KNOWN)
    assert [(r.test, r.where) for r in runs] == [("cuda_graph", "container")]  # nccl-2node runs nccl, not asked
    runs = smoke.plan([TOPICS["distributed"]], smoke.SmokeOptions(topics="distributed", stacks=False), KNOWN)
    assert [r.where for r in runs] == ["container"]


def test_plan_asks_every_test_for_the_gpus_where_they_were_asked_for():
    opts = smoke.SmokeOptions(topics="distributed", require_gpu=True)
    runs = smoke.plan([TOPICS["distributed"], TOPICS["verl"]], opts, KNOWN)
    assert all(r.require_gpu for r in runs)
    assert all("--require-gpu" in r.command for r in runs if r.where == "container")
    assert not any(r.require_gpu for r in smoke.plan([TOPICS["verl"]], smoke.SmokeOptions(topics="verl"), KNOWN))


def test_plan_passes_gates_to_the_tests_that_have_them():
    opts = smoke.SmokeOptions(topics="distributed", no_gates=True, gates=("bf16_gemm_share=0.60", "nccl.transport=P2P"))
    runs = smoke.plan([topic("distributed", ["nccl", "gpu_health", "cuda_graph"], ["nccl-2node"])], opts, KNOWN)
    by = {(r.test, r.where): r.command for r in runs}
    assert by[("gpu_health", "container")][5:] == ("--no-gates", "--gate", "bf16_gemm_share=0.6")
    assert by[("nccl", "container")][5:] == ("--no-gates", "--gate", "transport=P2P")
    assert by[("nccl", "nccl-2node")] == ("--no-gates", "--gate", "transport=P2P")  # through the stack's NCCL_TEST_ARGS
    assert by[("cuda_graph", "container")] == ("python", "-m", "smoke_tests.cuda_graph", "--json", "/workspace/cuda_graph.json")
    report = smoke.SmokeReport()
    assert smoke.report_json(report, opts, "t")["command"] == ("invoke smoke distributed --no-gates --gate bf16_gemm_share=0.60 --gate nccl.transport=P2P")


def test_the_flashinfer_gate_is_on_for_topics_whose_lock_holds_it():
    """From the topics' own locks: verl and sglang ship flashinfer, distributed does not."""
    from mlsyskit.data.catalog import load_catalog

    topics = load_catalog().topics
    known = [*KNOWN, "cuda_jit"]
    for name, on in (("verl", True), ("sglang", True), ("distributed", False)):
        runs = smoke.plan([topics[name]], smoke.SmokeOptions(topics=name, tests="cuda_jit"), known)
        assert ("--gate" in runs[0].command and "flashinfer=on" in runs[0].command) == on, (name, runs[0].command)
        off = smoke.plan([topics[name]], smoke.SmokeOptions(topics=name, tests="cuda_jit", gates=("flashinfer=off",)), known)
        assert off[0].command[-2:] == ("--gate", "flashinfer=off") and "flashinfer=on" not in off[0].command
        none = smoke.plan([topics[name]], smoke.SmokeOptions(topics=name, tests="cuda_jit", no_gates=True), known)
        assert "flashinfer=on" not in none[0].command


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("bogus=1", "no test has a gate 'bogus'"),
        ("verl_sft.bf16_gemm_share=0.5", "no test named verl_sft has a gate 'bf16_gemm_share'"),
        ("nope.transport=P2P", "no smoke test 'nope'"),
        ("bf16_gemm_share=2", "between 0 and 1"),
        ("transport=P2P;reboot", "not a word it takes"),
        ("transport", "give NAME=VALUE"),
    ],
)
def test_a_bad_gate_is_refused_before_anything_runs(gate, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        smoke.plan([TOPICS["distributed"]], smoke.SmokeOptions(topics="distributed", gates=(gate,)), [*KNOWN, "cuda_jit"])


def test_the_table_is_followed_by_each_gate_with_its_measured_value():
    gates = [
        {"name": "bf16_gemm_share", "gate": True, "status": "failed", "measured": "36% (GPU0 bf16 n=8192)", "expected": ">= 50% of peak", "detail": "under it: GPU0 bf16 n=8192 36%"},
        {"name": "pcie_link", "gate": True, "status": "passed", "measured": "Gen5 x16", "expected": "required", "detail": ""},
        {"name": "copies", "gate": False, "status": "passed", "measured": "4 copies byte-exact", "expected": "every byte equal", "detail": ""},
    ]  # fmt: skip
    failed = outcome("failed", "bf16_gemm_share: 36%", test="gpu_health")
    failed.result["verdicts"] = gates
    text = smoke.render(smoke.SmokeReport([failed]))
    table = text.split("\n\n")[1].splitlines()
    assert table[0].split() == ["test", "topic", "gate", "measured", "expected", "verdict"]
    assert table[2].split()[:3] == ["gpu_health", "distributed", "bf16_gemm_share"] and "failed: under it: GPU0 bf16 n=8192 36%" in table[2]
    assert "pcie_link" in table[3] and "passed" in table[3] and "copies" not in text  # a passed check is no gate


def test_plan_refuses_unknown_tests():
    with pytest.raises(UsageError, match="no smoke test 'nope'"):
        smoke.plan([TOPICS["verl"]], smoke.SmokeOptions(topics="verl", tests="nope"), KNOWN)
    with pytest.raises(UsageError, match="envs/bad/topic.toml names smoke test 'gone'"):
        smoke.plan([topic("bad", ["gone"])], smoke.SmokeOptions(topics="bad"), KNOWN)


def test_select_topics():
    assert [t.name for t in smoke.select_topics("all", TOPICS, "")] == ["distributed", "verl"]
    assert [t.name for t in smoke.select_topics("verl,distributed", TOPICS, "")] == ["verl", "distributed"]
    with pytest.raises(UsageError, match="unknown topic 'nope'"):
        smoke.select_topics("nope", TOPICS, "")
    with pytest.raises(UsageError, match="topic docs lists no smoke test"):
        smoke.select_topics("docs", TOPICS, "")
    assert smoke.select_topics("docs", TOPICS, "nccl")[0].name == "docs"  # --tests runs one in its image
    with pytest.raises(UsageError, match="no topic given"):
        smoke.select_topics("", TOPICS, "")


RUN = smoke.PlannedRun(topic="distributed", test="nccl", where="container", command=(), limit=100)


def result(status="passed", reason=""):
    return {"test": "nccl", "status": status, "reason": reason, "seconds": 1.0, "figures": {}, "environment": {}}


@pytest.mark.parametrize(
    "data, rc, timed_out, status, reason",
    [
        (result(), 0, False, "passed", ""),
        (result("skipped", "no CUDA GPU visible"), 0, False, "skipped", "no CUDA GPU visible"),
        (result("failed", "wrong sums"), 1, False, "failed", "wrong sums"),
        (result(), 1, False, "failed", "passed; the container exited with 1"),
        (result("skipped", "no GPU"), 137, False, "failed", "no GPU; the container exited with 137"),
        (result(), None, True, "failed", "the container ran past 100 s and was removed"),
        (None, None, True, "failed", "no result: the container ran past 100 s and was removed"),
        (None, 125, False, "failed", "no result (exit 125): docker: Error response from daemon"),
        ({"test": "nccl", "status": "ok"}, 0, False, "failed", "the result file breaks the schema"),
    ],
)
def test_judge(data, rc, timed_out, status, reason):
    got = smoke.judge(RUN, data, rc, timed_out, 2.0, "docker: Error response from daemon")
    assert got["status"] == status and reason in got["reason"]
    assert validate_result(got) == []


def test_judge_fails_a_skip_without_gpu_where_gpus_were_asked_for():
    """The safety net behind the tests' own --require-gpu: a result that says skipped with no
    CUDA inside, where the kit handed the container GPUs, is a failure."""
    asked = smoke.PlannedRun(topic="distributed", test="nccl", where="container", command=(), limit=100, require_gpu=True)
    no_cuda = {**result("skipped", "no CUDA GPU visible"), "environment": {"cuda_available": False}}
    got = smoke.judge(asked, no_cuda, 0, False, 2.0, "")
    assert got["status"] == "failed"
    assert got["reason"] == "GPUs were asked for, but the test saw none (no CUDA GPU visible); check `invoke doctor`"
    # a skip for another reason (one GPU where two are needed) stays a skip
    one_gpu = {**result("skipped", "--tp 2 needs 2 GPUs; 1 visible"), "environment": {"cuda_available": True}}
    assert smoke.judge(asked, one_gpu, 0, False, 2.0, "")["status"] == "skipped"
    # nobody asked for GPUs: a skip is a skip
    assert smoke.judge(RUN, no_cuda, 0, False, 2.0, "")["status"] == "skipped"


@pytest.mark.parametrize("require_gpu, status", [(False, "skipped"), (True, "failed")])
def test_two_node_variant_on_a_host_without_gpus(monkeypatch, require_gpu, status):
    monkeypatch.setattr("mlsyskit.checks.smoke.host_has_gpus", lambda: False)
    run = smoke.PlannedRun(topic="distributed", test="nccl", where="nccl-2node", command=(), limit=100, require_gpu=require_gpu)
    got = smoke.run_stack(None, run, smoke.SmokeOptions(topics="distributed", require_gpu=require_gpu), Path("/nonexistent"), print)
    assert got["status"] == status
    assert "no NVIDIA GPU on this host: nccl-2node needs 2" in got["reason"]
    if require_gpu:
        assert got["reason"].startswith("GPUs were asked for") and "`invoke doctor`" in got["reason"]


@pytest.mark.parametrize("smi", ["fails", "lists none"])
def test_two_node_variant_where_gpu_devices_are_but_nvidia_smi_fails(monkeypatch, smi):
    """/dev/nvidia0 there, nvidia-smi failing or listing nothing: the stack neither skips nor
    falls back to gloo on CPU (a pass), it fails and says what to check."""

    def query():
        if smi == "fails":
            raise UsageError("nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch")
        return []

    monkeypatch.setattr("mlsyskit.checks.smoke.host_has_gpus", lambda: True)
    monkeypatch.setattr("mlsyskit.checks.smoke.query_gpus", query)
    run = smoke.PlannedRun(topic="distributed", test="nccl", where="nccl-2node", command=(), limit=100, require_gpu=True)
    got = smoke.run_stack(None, run, smoke.SmokeOptions(topics="distributed", require_gpu=True), Path("/nonexistent"), print)
    assert got["status"] == "failed" and got["reason"].startswith("GPUs were asked for") and "`invoke doctor`" in got["reason"]
    assert ("Driver/library version mismatch" if smi == "fails" else "nvidia-smi lists none") in got["reason"]


def test_key_figures_from_the_h100_results():
    def figures(name):
        return json.loads((GPU_RESULTS / f"{name}.json").read_text())["figures"]

    assert smoke.key_figure("nccl", figures("nccl")) == "busbw 332.5 GB/s at 1 GiB (74% of NVLink), nccl x2, sums exact"
    assert smoke.key_figure("cuda_graph", figures("cuda_graph")) == "replay 4.24x faster, bitwise equal"
    assert smoke.key_figure("verl_sft", figures("verl_sft")) == "loss 5.650 -> 5.102 in 4 steps"


def test_key_figures_on_cpu_and_when_missing():
    cpu_nccl = {"backend": "gloo", "world_size": 2, "sizes": [{"bytes": 65536, "busbw_gbps": 0.1, "correct": True, "nvlink4_share": None},
                                                              {"bytes": 4 << 20, "busbw_gbps": 0.79, "correct": True, "nvlink4_share": None}]}  # fmt: skip
    assert smoke.key_figure("nccl", cpu_nccl) == "busbw 0.8 GB/s at 4 MiB, gloo x2, sums exact"
    assert smoke.key_figure("cuda_graph", {"cpu_eager_repeatable": True}) == "eager on CPU repeatable"
    assert smoke.key_figure("sglang_serve", {"cpu_check": {"chat_prompt_tokens": 12}}) == "tiny model loads, chat prompt 12 tokens"
    assert smoke.key_figure("verl_grpo", {"config": {"adv_estimator": "grpo", "rollout": "sglang", "rollout_n": 4}}) == ("config ok: grpo, sglang rollout, n=4")
    for test in KNOWN + ["unknown"]:
        assert smoke.key_figure(test, {}) == "-"
    assert smoke.key_figure("nccl", {"sizes": [{"bytes": "x"}]}) == "-"


def outcome(status, reason="", test="nccl", where="container"):
    run = smoke.PlannedRun(topic="distributed", test=test, where=where, command=(), limit=10)
    return smoke.Outcome(run, {**result(status, reason), "test": test}, "mlsyskit/distributed:pypi", 3.0)


def test_exit_codes_and_counts():
    assert smoke.SmokeReport([outcome("passed"), outcome("skipped", "no GPU")]).exit_code == 0
    report = smoke.SmokeReport([outcome("passed"), outcome("failed", "wrong"), outcome("skipped", "no GPU")])
    assert report.exit_code == 1 and report.counts() == {"passed": 1, "failed": 1, "skipped": 1}
    assert smoke.SmokeReport([outcome("passed")], interrupted=True).exit_code == 130


def test_table_says_why_and_never_counts_a_skip_as_a_pass():
    report = smoke.SmokeReport([outcome("passed"), outcome("skipped", "no CUDA GPU visible", test="cuda_graph"),
                                outcome("failed", "timed out after 1 s", where="nccl-2node")])  # fmt: skip
    text = smoke.render(report)
    lines = text.splitlines()
    assert lines[0].split() == ["test", "topic", "result", "key", "figure", "time"]
    assert "skipped: no CUDA GPU visible" in text and "failed: timed out after 1 s" in text
    assert "nccl (nccl-2node)" in text and "3.0s" in text
    assert "1 passed, 1 failed, 1 skipped (a skipped test did not run: it is not a pass)" in text


def test_long_reasons_are_shortened_in_the_table_only():
    report = smoke.SmokeReport([outcome("failed", "x" * 300)])
    assert "x" * 87 + "..." in smoke.render(report)
    data = smoke.report_json(report, smoke.SmokeOptions(topics="distributed"), "2026-11-27T00:00:00Z")
    assert data["results"][0]["result"]["reason"] == "x" * 300


def test_report_json_holds_every_result_in_the_schema():
    report = smoke.SmokeReport([outcome("passed"), outcome("failed", "wrong", where="nccl-2node")])
    opts = smoke.SmokeOptions(topics="distributed", cpu=True, timeout=5, json_path="/tmp/x.json")
    data = smoke.report_json(report, opts, "2026-11-27T00:00:00Z")
    assert data["command"] == "invoke smoke distributed --cpu --timeout 5 --json /tmp/x.json"
    assert data["exit_code"] == 1 and data["counts"]["failed"] == 1
    assert [(r["topic"], r["where"]) for r in data["results"]] == [("distributed", "container"), ("distributed", "nccl-2node")]
    for entry in data["results"]:
        assert validate_result(entry["result"]) == []
    json.dumps(data, allow_nan=False)


class FakeEngine:
    """Engine.container's contract without Docker: the block gets a started container, and
    the container is removed however the block ends (the real one is tested on the engine)."""

    def __init__(self, write=None, outcome=(0, False), interrupt=False, refuse=""):
        self.write, self.outcome, self.interrupt, self.refuse = write, outcome, interrupt, refuse
        self.removed: list[str] = []
        self.spec = None

    @contextmanager
    def container(self, spec):
        from mlsyskit.errors import EngineError

        self.spec = spec
        if self.refuse:
            raise EngineError(self.refuse)
        try:
            yield self
        finally:
            self.removed.append(spec.name)

    def follow(self, *, timeout, on_line):
        on_line("hello from the container")
        if self.write is not None:
            self.write()
        if self.interrupt:
            raise KeyboardInterrupt
        return self.outcome


SPEC = ContainerSpec(image="img", command=("python", "-m", "smoke_tests.nccl"), labels={"org.mlsyskit.shell": "one-off"}, remove=True, interactive=True)


def test_run_in_container_reads_the_result_and_removes_the_container(tmp_path):
    (tmp_path / "nccl.json").write_text("stale")  # from an earlier run: never read
    engine = FakeEngine(write=lambda: (tmp_path / "nccl.json").write_text(json.dumps(result())))
    lines = []
    got = smoke.run_in_container(engine, RUN, SPEC, tmp_path, "r1", lines.append)
    assert got["status"] == "passed"
    name = engine.spec.name
    assert name.startswith("mlsyskit-smoke-distributed-nccl-") and engine.removed == [name]
    # the shell's container, named and labelled for this run, detached and followed
    assert engine.spec.labels == {"org.mlsyskit.shell": "one-off", "org.mlsyskit.smoke": "r1"}
    assert (engine.spec.remove, engine.spec.interactive, engine.spec.command) == (False, False, SPEC.command)
    assert lines == ["  | hello from the container"]


def test_run_in_container_timed_out_or_interrupted_still_removes_it(tmp_path):
    engine = FakeEngine(outcome=(None, True))
    got = smoke.run_in_container(engine, RUN, SPEC, tmp_path, "r1", lambda line: None)
    assert got["status"] == "failed" and "ran past 100 s" in got["reason"] and len(engine.removed) == 1
    engine = FakeEngine(interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        smoke.run_in_container(engine, RUN, SPEC, tmp_path, "r1", lambda line: None)
    assert len(engine.removed) == 1


def test_run_in_container_without_a_result_names_the_last_line(tmp_path):
    engine = FakeEngine(outcome=(1, False))
    got = smoke.run_in_container(engine, RUN, SPEC, tmp_path, "r1", lambda line: None)
    assert got["reason"] == "no result (exit 1): hello from the container"


def test_a_container_docker_cannot_start_is_a_failed_row(tmp_path):
    engine = FakeEngine(refuse="`docker run -d` failed: port is already allocated")
    got = smoke.run_in_container(engine, RUN, SPEC, tmp_path, "r1", lambda line: None)
    assert got["status"] == "failed"
    assert got["reason"] == "the container did not start: `docker run -d` failed: port is already allocated"


def test_extra_env_appends_and_restores(monkeypatch):
    monkeypatch.setenv("NCCL_TEST_ARGS", "--iters 5")
    with smoke.extra_env("NCCL_TEST_ARGS", ["--timeout", "3"]):
        assert os.environ["NCCL_TEST_ARGS"] == "--iters 5 --timeout 3"
    assert os.environ["NCCL_TEST_ARGS"] == "--iters 5"
    monkeypatch.delenv("NCCL_TEST_ARGS")
    with smoke.extra_env("NCCL_TEST_ARGS", ["--timeout", "3"]):
        assert os.environ["NCCL_TEST_ARGS"] == "--timeout 3"
    assert "NCCL_TEST_ARGS" not in os.environ


def test_cpu_and_gpus_together_are_refused():
    with pytest.raises(UsageError, match="either --cpu or --gpus"):
        smoke.smoke(smoke.SmokeOptions(topics="distributed", cpu=True, gpus="0,"), print)
    with pytest.raises(UsageError, match="either --cpu or --require-gpu"):
        smoke.smoke(smoke.SmokeOptions(topics="distributed", cpu=True, require_gpu=True), print)


def test_topics_list_only_smoke_tests_that_exist():
    from mlsyskit.data.catalog import load_catalog

    known = set(smoke.available_tests())
    for found in load_catalog().topics.values():
        assert set(found.smoke_tests) <= known, found.name
