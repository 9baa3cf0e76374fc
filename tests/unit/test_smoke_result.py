"""The smoke tests' shared result: schema, exit codes, table, time limit and child cleanup."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smoke_tests._result import (
    FAILED,
    PASSED,
    SKIPPED,
    Fail,
    Report,
    Skip,
    SmokeResult,
    Verdict,
    cuda_diagnosis,
    fmt_bytes,
    json_safe,
    no_gpu,
    render_table,
    run_command,
    run_test,
    validate_result,
    write_json,
)

REPO = Path(__file__).resolve().parents[2]


def test_exit_codes_never_pass_a_skip_off_as_a_pass():
    assert SmokeResult("t", status=PASSED).exit_code == 0
    assert SmokeResult("t", status=SKIPPED, reason="no GPU").exit_code == 0
    assert SmokeResult("t", status=FAILED, reason="x").exit_code == 1


def test_result_json_has_exactly_the_schema_keys(tmp_path):
    verdict = Verdict("sums exact", True, "3 sizes", "every element").to_dict()
    path = write_json(SmokeResult("nccl", PASSED, "", 1.23456, {"busbw": 1.0}, {"torch": "2.11"}, [verdict]), tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert set(data) == {"test", "status", "reason", "seconds", "figures", "environment", "verdicts"}
    assert data["seconds"] == 1.235
    assert data["verdicts"] == [{"name": "sums exact", "gate": False, "status": "passed", "measured": "3 sizes", "expected": "every element", "detail": ""}]
    assert validate_result(data) == []
    del data["verdicts"]  # results written before verdicts existed still read
    assert validate_result(data) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"status": "ok"}, "status 'ok'"),
        ({"status": "skipped", "reason": ""}, "needs a reason"),
        ({"status": "failed", "reason": ""}, "needs a reason"),
        ({"seconds": "1"}, "'seconds' is str"),
        ({"seconds": True}, "'seconds' is bool"),
        ({"figures": []}, "'figures' is list"),
        ({"extra": 1}, "unexpected keys"),
        ({"verdicts": {}}, "'verdicts' is dict"),
        ({"verdicts": [{"name": "x", "status": "ok"}]}, "a verdict must hold"),
    ],
)
def test_schema_problems_are_named(change, problem):
    data = {"test": "t", "status": "passed", "reason": "", "seconds": 1.0, "figures": {}, "environment": {}}
    data.update(change)
    assert any(problem in p for p in validate_result(data)), validate_result(data)


def test_missing_key_is_a_problem():
    assert "missing key 'figures'" in validate_result({"test": "t", "status": "passed", "reason": "", "seconds": 0})


def test_write_json_refuses_a_result_that_breaks_the_schema(tmp_path):
    with pytest.raises(ValueError, match="needs a reason"):
        write_json(SmokeResult("t", status=SKIPPED), tmp_path / "r.json")


def test_non_finite_numbers_stay_strict_json():
    data = json_safe({"loss": [math.nan, math.inf, 1.5], 3: (1, 2)})
    assert data == {"loss": ["nan", "inf", 1.5], "3": [1, 2]}
    json.dumps(data, allow_nan=False)


def test_table_aligns_numbers_right_and_words_left():
    table = render_table(["size", "busbw GB/s"], [["1 MiB", "24.38"], ["1 GiB", "332.48"]])
    lines = table.splitlines()
    assert lines[0] == "size   busbw GB/s"
    assert lines[1] == "-----  ----------"
    assert lines[2] == "1 MiB       24.38"
    assert lines[3] == "1 GiB      332.48"
    assert len({len(line) for line in lines}) == 1


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 cells"):
        render_table(["a"], [["1", "2"]])


def test_fmt_bytes():
    assert [fmt_bytes(n) for n in (1 << 20, 1 << 30, 65536, 1000)] == ["1 MiB", "1 GiB", "64 KiB", "1000 B"]


def _body(outcome):
    def body(report):
        report.figures["ran"] = True
        report.table(["k", "v"], [["a", "1"]])
        report.verdict("sums", True, "exact", "exact")
        if outcome is not None:
            raise outcome

    return body


@pytest.mark.parametrize(
    "outcome, status, code, reason",
    [
        (None, PASSED, 0, ""),
        (Skip("no GPU"), SKIPPED, 0, "no GPU"),
        (Fail("busbw too low"), FAILED, 1, "busbw too low"),
        (RuntimeError("boom"), FAILED, 1, "RuntimeError: boom"),
        (KeyboardInterrupt(), FAILED, 1, "interrupted"),
    ],
)
def test_run_test_turns_outcomes_into_results(tmp_path, capsys, outcome, status, code, reason):
    path = tmp_path / "r.json"
    assert run_test("demo", _body(outcome), json_path=str(path), timeout=60) == code
    data = json.loads(path.read_text())
    assert (data["status"], data["reason"], data["figures"]) == (status, reason, {"ran": True})
    assert validate_result(data) == []
    out = capsys.readouterr().out
    assert f"demo: {status.upper()}" in out
    assert "k  v" in out


@pytest.mark.parametrize(
    "record, reason",
    [
        ([], "the test returned without judging anything (no verdict recorded): a bug in the test, not a pass"),
        # a gate that does not apply here is not a judgement either
        ([("nvlink_copy_share", None, "-", "-", "one GPU")], "the test returned without judging anything"),
        # a failed verdict the body forgot to raise still fails the test, named with its figure
        (
            [("sums", True, "exact", "exact", ""), ("bf16_gemm_share", False, "35% (GPU0 n=8192)", ">= 50% of peak", "")],
            "bf16_gemm_share: 35% (GPU0 n=8192), expected >= 50% of peak",
        ),
    ],
)
def test_a_body_that_returns_without_a_passing_judgement_fails(tmp_path, capsys, record, reason):
    def body(report):
        for name, ok, measured, expected, detail in record:
            report.verdict(name, ok, measured, expected, detail, gate=name.endswith("share"))

    path = tmp_path / "r.json"
    assert run_test("demo", body, json_path=str(path), timeout=60) == 1
    data = json.loads(path.read_text())
    assert data["status"] == FAILED and data["reason"].startswith(reason), data["reason"]
    assert len(data["verdicts"]) == len(record) and validate_result(data) == []


def test_check_records_and_fails_at_once():
    report = Report()
    report.check("sums", True, "exact")
    with pytest.raises(Fail, match="^copies: 1 byte differs, expected every byte equal$"):
        report.check("copies", False, "1 byte differs", "every byte equal")
    assert [v.status for v in report.verdicts] == [PASSED, FAILED] and len(report.failed_verdicts()) == 1


def test_verdicts_are_printed_with_what_was_measured(tmp_path, capsys):
    def body(report):
        report.verdict("hbm_share", True, "88%", ">= 60% of peak", gate=True)
        report.verdict("pcie_link", None, "Gen5 x16", "-", "off (--no-gates)", gate=True)

    assert run_test("demo", body, json_path=None, timeout=60) == 0
    out = capsys.readouterr().out
    assert "hbm_share (gate)  88%" in out and "not judged: off (--no-gates)" in out


def test_non_writer_ranks_write_nothing(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert run_test("demo", _body(None), json_path=None, timeout=60, writer=False) == 0
    assert not path.exists()
    assert capsys.readouterr().out == ""


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env)


def test_watchdog_fails_a_stuck_test_and_still_writes_its_figures(tmp_path):
    path = tmp_path / "r.json"
    proc = _python(f"""
        import sys, time
        from smoke_tests._result import run_test
        def body(report):
            report.figures["got_this_far"] = 1
            report.verdict("halfway", True)
            time.sleep(60)
        sys.exit(run_test("stuck", body, json_path={str(path)!r}, timeout=1))
    """)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(path.read_text())
    assert data["status"] == "failed"
    assert data["reason"] == "timed out after 1 s"
    assert data["figures"] == {"got_this_far": 1}
    assert [v["name"] for v in data["verdicts"]] == ["halfway"]


def test_sigterm_is_reported_as_a_failure(tmp_path):
    path = tmp_path / "r.json"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        from smoke_tests._result import run_test
        def body(report):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        sys.exit(run_test("term", body, json_path={str(path)!r}, timeout=120))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.terminate()
    assert proc.wait(timeout=30) == 1
    assert json.loads(path.read_text())["reason"] == "terminated"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no resources, so count it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_run_command_kills_the_whole_group_on_timeout(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    child = textwrap.dedent(f"""
        import subprocess, sys, time, pathlib
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        pathlib.Path({str(pidfile)!r}).write_text(str(p.pid))
        print("started", flush=True)
        time.sleep(120)
    """)
    start = time.monotonic()
    result = run_command([sys.executable, "-c", child], timeout=3, echo=False)
    assert result.timed_out
    assert time.monotonic() - start < 30
    assert "started" in result.output
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_run_command_keeps_output_and_exit_code(tmp_path):
    log = tmp_path / "log.txt"
    result = run_command([sys.executable, "-c", "import sys; print('step:1'); sys.exit(3)"], timeout=30, echo=False, log_path=log)
    assert (result.returncode, result.timed_out) == (3, False)
    assert result.output == "step:1\n"
    assert log.read_text() == "step:1\n"


def test_time_limit_reached_while_the_result_is_written_keeps_that_result(tmp_path):
    """The limit fires while a skip's environment is probed (importing torch can take
    seconds): the skip stands and the exit code is its own, not the watchdog's 1."""
    path = tmp_path / "r.json"
    proc = _python(f"""
        import sys, time
        from smoke_tests._result import Skip, run_test
        def body(report):
            raise Skip("no GPU")
        def slow_probe():
            time.sleep(2)
            return {{}}
        sys.exit(run_test("late", body, json_path={str(path)!r}, timeout=0.5, env_extra=slow_probe))
    """)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(path.read_text())
    assert (data["status"], data["reason"]) == ("skipped", "no GPU")
    assert proc.stdout.count("late: SKIPPED") == 1 and "FAILED" not in proc.stdout


def test_no_gpu_is_a_skip_unless_gpus_were_asked_for(tmp_path, monkeypatch):
    skip = no_gpu(False, "CUDA graphs need a GPU")
    assert isinstance(skip, Skip) and str(skip) == "no CUDA GPU visible: CUDA graphs need a GPU"
    monkeypatch.setattr("smoke_tests._result.cuda_diagnosis", lambda dev="/dev": "no /dev/nvidia* device: ...")
    fail = no_gpu(True, "CUDA graphs need a GPU")
    assert isinstance(fail, Fail)
    assert str(fail).startswith("GPUs were asked for, but none is visible: no /dev/nvidia* device: ...")
    assert "CUDA graphs need a GPU" in str(fail) and "`invoke doctor`" in str(fail)


def test_gpu_device_nodes_without_cuda_fail_even_when_nobody_asked_for_gpus(tmp_path):
    """/dev/nvidia0 there and CUDA not starting is a broken driver, not a machine without GPUs."""
    (tmp_path / "nvidiactl").touch()  # not a GPU
    assert isinstance(no_gpu(False, "NCCL needs one GPU per rank", dev=str(tmp_path)), Skip)
    (tmp_path / "nvidia0").touch()
    fail = no_gpu(False, "NCCL needs one GPU per rank", dev=str(tmp_path))
    assert isinstance(fail, Fail)
    assert str(fail).startswith("this machine has GPU devices (nvidia0), but none is visible: nvidia0 present, but ")
    assert "NCCL needs one GPU per rank" in str(fail) and "`invoke doctor`" in str(fail)


def test_cuda_diagnosis_tells_no_device_from_a_driver_that_does_not_start(tmp_path):
    assert cuda_diagnosis(str(tmp_path)).startswith("no /dev/nvidia* device: this container or machine was given no GPU")
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()  # not a GPU: only nvidia<N> counts
    got = cuda_diagnosis(str(tmp_path))
    try:
        import torch  # noqa: F401
    except ImportError:
        assert got == "nvidia0 present, but torch is not installed"
    else:
        # a CPU build of torch (or no driver) cannot start CUDA; torch says why
        assert got.startswith("nvidia0 present, but CUDA does not start (")


def test_gpu_unavailable_skips_on_cpu_and_fails_when_gpus_were_asked_for():
    from argparse import Namespace

    from smoke_tests._result import Fail, Skip, gpu_unavailable, too_few_gpus

    skipped = gpu_unavailable(Namespace(cpu=True, require_gpu=True), "X needs a GPU")
    assert isinstance(skipped, Skip) and str(skipped) == "--cpu given: X needs a GPU"
    failed = gpu_unavailable(Namespace(cpu=False, require_gpu=True), "X needs a GPU")
    assert isinstance(failed, Fail) and "GPUs were asked for" in str(failed) and "X needs a GPU" in str(failed)
    assert str(too_few_gpus("--tp", 2, 1)) == "--tp 2 needs 2 GPUs; 1 visible"
