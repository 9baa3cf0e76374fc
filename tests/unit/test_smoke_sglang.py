"""The SGLang smoke test's harness on a CPU, against a fake server (tests/unit/data/fake_sglang.py):
health polling and its deadline, the endpoint checks, the load's report, and that the server's
whole process group is gone after success, failure, the time limit, Ctrl-C and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoke_tests import sglang_serve
from smoke_tests._result import Fail, validate_result

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "data" / "fake_sglang.py"

# One --output-file line of bench_serving as sglang 0.5.23's serving.py writes it (keys of its
# `result` dict; server_info trimmed).
BENCH_LINE = {
    "tag": None, "backend": "sglang", "dataset_name": "random-ids", "request_rate": "inf", "max_concurrency": 16,
    "sharegpt_output_len": None, "random_input_len": 128, "random_output_len": 64, "random_range_ratio": 1.0,
    "server_info": {"version": "0.5.23"}, "duration": 1.92, "completed": 64, "total_input_tokens": 8192,
    "total_input_text_tokens": 8192, "total_input_vision_tokens": 0, "total_output_tokens": 4096,
    "total_output_tokens_retokenized": 4090, "request_throughput": 33.3, "input_throughput": 4266.7,
    "output_throughput": 2133.3, "total_throughput": 6400.0, "mean_e2e_latency_ms": 455.0,
    "median_e2e_latency_ms": 450.0, "std_e2e_latency_ms": 10.0, "p90_e2e_latency_ms": 470.0,
    "p95_e2e_latency_ms": 480.0, "p99_e2e_latency_ms": 490.0, "mean_ttft_ms": 35.2, "median_ttft_ms": 31.8,
    "std_ttft_ms": 5.0, "p90_ttft_ms": 40.0, "p95_ttft_ms": 45.0, "p99_ttft_ms": 60.1, "mean_tpot_ms": 6.6,
    "median_tpot_ms": 6.5, "std_tpot_ms": 0.2, "p90_tpot_ms": 6.9, "p95_tpot_ms": 7.0, "p99_tpot_ms": 7.2,
    "mean_itl_ms": 6.6, "median_itl_ms": 6.4, "std_itl_ms": 1.0, "p90_itl_ms": 7.0, "p95_itl_ms": 7.5,
    "p99_itl_ms": 9.0, "concurrency": 15.2, "accept_length": None, "max_output_tokens_per_s": 2500.0,
    "max_concurrent_requests": 16, "output_lens": [64] * 64,
}  # fmt: skip


# ---------------------------------------------------------------------------- pure logic


def test_parse_bench_output_takes_the_last_line():
    older = dict(BENCH_LINE, completed=3)
    text = json.dumps(older) + "\n" + json.dumps(BENCH_LINE) + "\n\n"
    assert sglang_serve.parse_bench_output(text)["completed"] == 64


@pytest.mark.parametrize("text, error", [("", "no result line"), ("{oops", "not JSON"), ("[1, 2]", "not a JSON object")])
def test_parse_bench_output_errors(text, error):
    with pytest.raises(ValueError, match=error):
        sglang_serve.parse_bench_output(text)


def test_judge_bench_keeps_throughput_and_ttft():
    figures, verdict = sglang_serve.judge_bench(BENCH_LINE, 64, 64)
    assert verdict is None
    assert figures["output_lens"] == {"min": 64, "max": 64, "count": 64}
    assert figures["output_throughput"] == 2133.3 and figures["median_ttft_ms"] == 31.8
    assert "server_info" not in figures and "tag" not in figures
    assert sglang_serve.key_figure({"bench": figures}) == "2133 tok/s out, TTFT median 31.8 ms"
    assert sglang_serve.key_figure({}) == "-"


@pytest.mark.parametrize(
    "change, verdict",
    [
        ({"completed": 60}, "completed 60 of 64 requests"),
        ({"completed": None}, "no completed count"),
        ({"output_throughput": 0.0}, "output_throughput = 0.0"),
        ({"median_ttft_ms": float("nan")}, "median_ttft_ms = nan"),
        # one request stopped early: the load served fewer tokens than it claims
        ({"output_lens": [64] * 63 + [17]}, "1 of 64 requests returned other than the 64 tokens asked for (e.g. 17)"),
        ({"output_lens": [64] * 63}, "0 of 63 requests returned other than the 64 tokens"),
        # without per-request lengths, the total decides
        ({"output_lens": None, "total_output_tokens": 4000}, "4000 output tokens in all, 64 x 64 asked for"),
    ],
)
def test_judge_bench_failures(change, verdict):
    data = {k: v for k, v in {**BENCH_LINE, **change}.items() if v is not None or k != "output_lens"}
    _, got = sglang_serve.judge_bench(data, 64, 64)
    assert got is not None and verdict in got


def test_free_port_stays_where_sglang_can_add_10000():
    import random

    ports = {sglang_serve.free_port(rng=random.Random(seed)) for seed in range(50)}
    assert all(20000 <= p <= 55535 for p in ports) and len(ports) > 40
    assert sglang_serve.MAX_SERVER_PORT + 10000 == 65535


def test_a_port_sglang_refuses_is_refused_up_front():
    proc = subprocess.run([sys.executable, "-m", "smoke_tests.sglang_serve", "--port", "60000"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "--port 60000: SGLang takes ports up to 55535" in proc.stderr


def test_command_words_keep_a_path_with_spaces_whole():
    words = sglang_serve.command_words(sglang_serve.SERVER_CMD, {
        "python": "/py", "model": "/models/my model", "host": "127.0.0.1", "port": 1234, "tp": 2, "mem_fraction": 0.5,
    })  # fmt: skip
    assert words[:3] == ["/py", "-m", "sglang.launch_server"]
    assert words[words.index("--model-path") + 1] == "/models/my model"
    assert words[words.index("--tp-size") + 1] == "2" and words[words.index("--port") + 1] == "1234"


def test_bench_command_uses_flags_bench_serving_defines():
    words = sglang_serve.command_words(sglang_serve.BENCH_CMD, {
        "python": "/py", "base_url": "http://127.0.0.1:1", "model": "m", "tokenizer": "t", "output": "/o.jsonl",
        "num_prompts": 8, "input_len": 16, "output_len": 4, "concurrency": 2,
    })  # fmt: skip
    assert words[:3] == ["/py", "-m", "sglang.bench_serving"]
    # tests/integration checks each of BENCH_FLAGS against the installed bench_serving's --help.
    assert set(sglang_serve.BENCH_FLAGS) == {w for w in words if w.startswith("--")}
    assert "--output-details" in words  # per-request output lengths, for judge_bench
    assert words[words.index("--dataset-name") + 1] == "random-ids"  # no dataset download


# ---------------------------------------------------------------------------- against the fake server


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(path: Path, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def assert_gone(pids: dict, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.05)
    assert not [name for name, pid in pids.items() if alive(pid)], f"left running: {pids}"


@pytest.fixture
def fake_server(tmp_path):
    started = []

    def start(mode="ok", ready_after=0.5, extra=()):
        port = sglang_serve.free_port()
        pid_file = tmp_path / f"pids-{port}.json"
        cmd = [sys.executable, str(FAKE), "serve", "--port", str(port), "--mode", mode, "--ready-after", str(ready_after), "--pid-file", str(pid_file), *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return proc, f"http://127.0.0.1:{port}", wait_for(pid_file)

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def test_wait_healthy_polls_through_503(fake_server):
    proc, url, _ = fake_server(ready_after=1.0)
    assert sglang_serve.request(url + "/health").status == 503
    took = sglang_serve.wait_healthy(url, 20, proc.poll, interval=0.1)
    assert 0.5 < took < 10


def test_wait_healthy_deadline_names_the_last_answer(fake_server):
    proc, url, _ = fake_server(mode="never")
    start = time.monotonic()
    with pytest.raises(Fail, match=r"not healthy after 1.5 s \(last /health: HTTP 503\)"):
        sglang_serve.wait_healthy(url, 1.5, proc.poll, interval=0.1)
    assert time.monotonic() - start < 5


def test_wait_healthy_stops_at_once_when_the_server_dies(fake_server):
    proc, url, _ = fake_server(mode="crash", ready_after=0.3)
    start = time.monotonic()
    with pytest.raises(Fail, match="exited with code 3 before /health answered 200"):
        sglang_serve.wait_healthy(url, 60, proc.poll, interval=0.1)
    assert time.monotonic() - start < 10


def test_wait_healthy_with_nothing_listening():
    url = f"http://127.0.0.1:{sglang_serve.free_port()}"
    with pytest.raises(Fail, match="last /health: ConnectionRefusedError"):
        sglang_serve.wait_healthy(url, 0.5, lambda: None, interval=0.1)


def test_endpoint_checks_against_the_fake(fake_server):
    _, url, _ = fake_server(ready_after=0)
    sglang_serve.wait_healthy(url, 10, lambda: None, interval=0.1)
    generate = sglang_serve.check_generate(url, 5)
    assert generate["completion_tokens"] == 5 and generate["prompt_tokens"] == 7
    name = sglang_serve.served_model(url)
    chat = sglang_serve.check_chat(url, name, 6)
    assert chat["completion_tokens"] == 6 and chat["finish_reason"] == "length"


# ---------------------------------------------------------------------------- the whole test, as a process


def smoke_cmd(tmp_path, mode="ok", bench="ok", extra=(), server_extra=""):
    pid_file = tmp_path / "pids.json"
    server = f"{{python}} {FAKE} serve --port {{port}} --model {{model}} --mode {mode} --ready-after 0.5 --pid-file {pid_file} {server_extra}"
    bench_cmd = (
        f"{{python}} {FAKE} bench --base-url {{base_url}} --output-file {{output}} --num-prompts {{num_prompts}} --output-len {{output_len}} --mode {bench}"
    )
    cmd = [
        sys.executable, "-m", "smoke_tests.sglang_serve", "--model", "fake-model", "--json", str(tmp_path / "result.json"),
        "--server-cmd", server, "--bench-cmd", bench_cmd, "--num-prompts", "6", "--output-len", "4", *extra,
    ]  # fmt: skip
    return cmd, pid_file


def run_smoke(tmp_path, **kwargs) -> tuple[subprocess.CompletedProcess, dict, dict]:
    cmd, pid_file = smoke_cmd(tmp_path, **kwargs)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    result = json.loads((tmp_path / "result.json").read_text())
    assert validate_result(result) == [], result
    pids = json.loads(pid_file.read_text()) if pid_file.exists() else {}
    return proc, result, pids


def test_passes_and_reports_the_load(tmp_path):
    proc, result, pids = run_smoke(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "passed", result["reason"]
    figures = result["figures"]
    assert figures["server"] == "custom"
    assert figures["bench"]["completed"] == 6 and figures["bench"]["output_throughput"] > 0
    assert figures["bench"]["median_ttft_ms"] > 0
    assert figures["generate"]["completion_tokens"] == 8 and figures["chat"]["model"] == "fake-model"
    assert "bench_serving" in proc.stdout and "tok/s out" in proc.stdout
    assert_gone(pids)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"mode": "never", "extra": ("--startup-timeout", "2")}, "not healthy after 2 s (last /health: HTTP 503)"),
        ({"mode": "crash"}, "exited with code 3 before /health answered 200"),
        ({"bench": "fail"}, "bench_serving exited with 2: fake bench: cannot reach the server"),
        ({"bench": "short"}, "bench_serving completed 5 of 6 requests"),
        ({"bench": "early"}, "1 of 6 requests returned other than the 4 tokens asked for (e.g. 3)"),
    ],
)
def test_failures_stop_the_server(tmp_path, kwargs, reason):
    proc, result, pids = run_smoke(tmp_path, **kwargs)
    assert proc.returncode == 1
    assert result["status"] == "failed" and reason in result["reason"]
    assert pids, "the fake server never started"
    assert_gone(pids)


def test_crash_shows_the_server_log(tmp_path):
    proc, _, _ = run_smoke(tmp_path, mode="crash")
    assert "fake crash: CUDA out of memory" in proc.stdout


def test_time_limit_kills_server_and_load(tmp_path):
    """The watchdog fires while bench hangs: a failed result, nothing left running."""
    start = time.monotonic()
    proc, result, pids = run_smoke(tmp_path, bench="hang", extra=("--timeout", "6", "--startup-timeout", "5"))
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    assert result["status"] == "failed" and result["reason"] == "timed out after 6 s"
    assert result["figures"]["ready_seconds"] > 0  # what was done before the limit is kept
    assert_gone(pids)
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
                if str(FAKE) in line and "bench" in line and str(tmp_path) in line]  # fmt: skip


def test_server_that_ignores_sigterm_is_killed(tmp_path):
    proc, result, pids = run_smoke(tmp_path, extra=("--stop-grace", "1"), server_extra="--ignore-term")
    assert result["status"] == "passed", result["reason"]
    assert result["figures"]["server_exit"] == -signal.SIGKILL
    assert_gone(pids)


@pytest.mark.parametrize("sig, reason", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")])
def test_ctrl_c_and_sigterm_stop_the_server(tmp_path, sig, reason):
    cmd, pid_file = smoke_cmd(tmp_path, mode="never", extra=("--startup-timeout", "60"))
    # As a terminal starts it: SIGINT at its default. A test run started in the background by
    # a non-interactive shell (CI) inherits SIGINT ignored, and Python then keeps ignoring it.
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        pids = wait_for(pid_file)
        time.sleep(0.5)
        proc.send_signal(sig)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # where is it stuck? (faulthandler in _result.py)
            time.sleep(2)
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"still running 60 s after {sig.name}; its stacks and output:\n{out[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads((tmp_path / "result.json").read_text())
    assert proc.returncode == 1, out
    assert result["status"] == "failed" and result["reason"] == reason
    assert_gone(pids)


def test_no_gpu_is_skipped_never_passed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sglang_serve, "sglang_version", lambda: "0.5.23")
    monkeypatch.setattr(sglang_serve, "gpu_count", lambda: 0)
    out = tmp_path / "r.json"
    code = sglang_serve.main(["--model", "org/some-model", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["status"] == "skipped"
    assert result["reason"] == "no CUDA GPU visible: an SGLang server needs a GPU (nothing was started)"
    code = sglang_serve.main(["--model", "org/some-model", "--cpu", "--json", str(out)])
    assert json.loads(out.read_text())["reason"].startswith("--cpu given: an SGLang server needs a GPU")


def test_too_few_gpus_for_tp_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(sglang_serve, "sglang_version", lambda: "0.5.23")
    monkeypatch.setattr(sglang_serve, "gpu_count", lambda: 1)
    out = tmp_path / "r.json"
    sglang_serve.main(["--model", "m", "--tp", "2", "--json", str(out)])
    assert json.loads(out.read_text())["reason"] == "--tp 2 needs 2 GPUs; 1 visible"


def test_missing_sglang_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(sglang_serve, "sglang_version", lambda: None)
    out = tmp_path / "r.json"
    assert sglang_serve.main(["--model", "m", "--json", str(out)]) == 1
    assert json.loads(out.read_text())["reason"] == "sglang is not installed in this environment"


def test_startup_deadline_must_fit_the_time_limit():
    with pytest.raises(SystemExit):
        sglang_serve.main(["--timeout", "10", "--startup-timeout", "10"])
