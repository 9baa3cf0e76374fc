"""The prefill/decode smoke test's harness on a CPU, against stand-ins (tests/unit/data/fake_sglang.py):
the plain server first, then the pair behind a router, the greedy outputs compared, the load
through both, the transport read from the servers' logs, and every process stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smoke_tests import sglang_pd
from smoke_tests._result import validate_result

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "data" / "fake_sglang.py"


# ---------------------------------------------------------------------------- pure logic


def test_pair_args_put_the_bootstrap_port_on_the_prefill_side_only():
    prefill = sglang_pd.pair_args("prefill", "nixl", 0, 8998, 30100)
    decode = sglang_pd.pair_args("decode", "nixl", 1, 8998, 30200)
    assert prefill[prefill.index("--disaggregation-bootstrap-port") + 1] == "8998"
    assert "--disaggregation-bootstrap-port" not in decode
    assert decode[decode.index("--base-gpu-id") + 1] == "1" and decode[decode.index("--disaggregation-mode") + 1] == "decode"
    # every flag the pair gets is one the integration tests check against launch_server --help
    assert {w for w in prefill + decode if w.startswith("--")} == set(sglang_pd.PD_FLAGS)


#: What UCX_PROTO_INFO=y really printed for NIXL 1.5.1 agents writing host memory (captured in
#: the sglang image; tests/integration re-runs the capture and the same checks every CI run).
UCX_HOST_LOG = (Path(__file__).resolve().parent / "data" / "ucx_proto_info_nixl_host.log").read_text()


def gpu_table(pid: int, transport: str, peer: str = "intra-node") -> str:
    """A remote-write table for GPU memory in the captured log's layout."""
    rows = [
        "+--------+-------------+-------------------+", f"| nixl {peer} cfg#2 |", "| remote memory write by ucp_put* from cuda memory to cuda |",
        "+--------+-------------+-------------------+", "| Range  | Description | Config |", "+--------+-------------+-------------------+",
        f"| 0..inf | zero-copy   | {transport} |", "+--------+-------------+-------------------+",
    ]  # fmt: skip
    return "".join(f"[1764500000.101] [h200:{pid}:0]   {row}\n" for row in rows)


def test_the_kv_transport_comes_from_ucx_s_remote_write_tables_only():
    tables = sglang_pd.ucx_protocols(UCX_HOST_LOG)
    assert len(tables) == 31 and all(chosen == {"tcp"} for _, chosen in tables)
    # 7 remote-write tables, 4 of them an agent writing to itself; 24 active-message tables
    assert sglang_pd.transports(UCX_HOST_LOG) == {"tcp": 3}
    assert sglang_pd.kv_protocols(UCX_HOST_LOG) == [
        "remote memory write by ucp_put* from host memory to host: tcp", "remote memory write by ucp_put*(multi) from host memory to host: tcp",
    ]  # fmt: skip
    # the KV over cuda_ipc while notifications go over TCP: the KV's link is cuda_ipc
    gpu_log = UCX_HOST_LOG.replace("[af3c90ef82f9:1    :0]", "[h200:7:0]") + gpu_table(4242, "cuda_ipc/cuda")
    assert sglang_pd.transports(gpu_table(4242, "cuda_ipc/cuda")) == {"cuda_ipc": 1}
    assert sglang_pd.kv_link(sglang_pd.transports(gpu_log)) == "cuda_ipc"
    # an agent's write to itself is not the KV moving between servers
    assert sglang_pd.transports(gpu_table(1, "cuda_ipc/cuda", peer="self")) == {}


def test_tables_of_two_processes_may_interleave():
    a, b = gpu_table(1, "cuda_ipc/cuda").splitlines(), gpu_table(2, "rc_mlx5/mlx5_0:1").splitlines()
    mixed = "\n".join(line for pair in zip(a, b, strict=True) for line in pair)
    assert sglang_pd.transports(mixed) == {"cuda_ipc": 1, "rc_mlx5": 1}


def test_kv_link_is_the_fastest_kind_of_link_named():
    assert sglang_pd.kv_link({"cuda_ipc": 2, "tcp": 1}) == "cuda_ipc"
    assert sglang_pd.kv_link({"tcp": 3, "sysv": 1}) == "tcp"
    assert sglang_pd.kv_link({"rc_mlx5": 1, "tcp": 1}) == "rdma"
    assert sglang_pd.kv_link({}) == "unknown"
    assert sglang_pd.transports("Mooncake transfer engine: protocol=tcp, device none") == {"tcp": 1}
    assert sglang_pd.transports("INFO: loading weights from /models/tcp/eth0-model") == {}  # a path is no transport
    assert sglang_pd.transports("[1764500000.1] [h:1:0]   | 0..inf | zero-copy | tcp/eth0 |") == {}  # a row outside any table


def test_first_difference_names_the_prompt():
    assert sglang_pd.first_difference(["a", "b"], ["a", "b"]) is None
    assert sglang_pd.first_difference(["a", "b"], ["a", "c"]) == "prompt 1: the plain server said 'b', prefill/decode said 'c'"


# ---------------------------------------------------------------------------- the whole test, as a process


def run_pd(tmp_path: Path, decode_mode: str = "ok", transport: str = "cuda_ipc/cuda", extra: tuple[str, ...] = ()):
    requests = tmp_path / "requests.jsonl"
    # --mode differ changes the answers of the decode side only (--disaggregation-mode decode)
    server = (
        f"{{python}} {FAKE} serve --port {{port}} --model {{model}} --ready-after 0.3 {'--transport ' + transport if transport else ''} "
        f"--requests-file {requests} --mode {decode_mode}"
    )
    router = f"{{python}} {FAKE} router --port {{port}} --prefill {{prefill_url}} {{bootstrap_port}} --decode {{decode_url}}"
    bench = f"{{python}} {FAKE} bench --base-url {{base_url}} --output-file {{output}} --num-prompts {{num_prompts}} --output-len {{output_len}}"
    cmd = [
        sys.executable, "-m", "smoke_tests.sglang_pd", "--model", "fake-model", "--json", str(tmp_path / "result.json"),
        "--server-cmd", server, "--router-cmd", router, "--bench-cmd", bench, "--num-prompts", "6", "--output-len", "4",
        "--max-new-tokens", "5", "--startup-timeout", "20", "--timeout", "90", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    result = json.loads((tmp_path / "result.json").read_text())
    assert validate_result(result) == [], result
    bodies = [json.loads(line) for line in requests.read_text().splitlines()] if requests.exists() else []
    return proc, result, bodies


def test_passes_with_identical_outputs_and_names_the_transport(tmp_path):
    proc, result, bodies = run_pd(tmp_path, extra=("--expect-transport", "cuda_ipc"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "passed", result["reason"]
    figures = result["figures"]
    assert figures["greedy"] == {"prompts": 4, "max_new_tokens": 5, "identical": True}
    assert figures["kv_link"] == "cuda_ipc" and figures["transports"] == {"cuda_ipc": 1}  # the prefill server's write
    assert figures["single_bench"]["completed"] == 6 and figures["pd_bench"]["completed"] == 6
    assert set(figures["pd_vs_single"]) >= {"output_throughput", "median_ttft_ms"}
    assert "--disaggregation-mode prefill" in figures["pair_commands"]["prefill"]
    assert "--base-gpu-id 1" in figures["pair_commands"]["decode"]
    # the router sent each greedy prompt to both servers of the pair
    modes = [b["mode"] for b in bodies]
    assert modes.count("prefill") >= 4 and modes.count("decode") >= 4
    assert "KV transport" in proc.stdout and "greedy outputs" in proc.stdout


def test_a_pair_that_changes_the_output_fails(tmp_path):
    proc, result, _ = run_pd(tmp_path, decode_mode="differ")
    assert proc.returncode == 1 and result["status"] == "failed"
    assert result["reason"].startswith("prefill/decode changed the greedy output: prompt 0:"), result["reason"]
    # a pair that fails still says how its KV moved (on the H200s the KV moved and the decode side hung)
    assert result["figures"]["kv_link"] == "cuda_ipc"
    assert "the KV writes the prefill server chose before it failed: cuda_ipc (cuda_ipc (1))" in proc.stdout


def test_the_wrong_transport_fails_when_one_is_expected(tmp_path):
    proc, result, _ = run_pd(tmp_path, transport="tcp/eth0", extra=("--expect-transport", "cuda_ipc"))
    assert proc.returncode == 1 and result["status"] == "failed"
    assert result["reason"] == "the KV moved over tcp (tcp (1)), kv_link cuda_ipc expected", result["reason"]
    kv = next(v for v in result["verdicts"] if v["name"] == "kv_link")
    assert (kv["gate"], kv["status"], kv["measured"], kv["expected"]) == (True, "failed", "tcp (tcp (1))", "cuda_ipc")
    proc, result, _ = run_pd(tmp_path, transport="tcp/eth0", extra=("--gate", "kv_link=tcp"))
    assert result["status"] == "passed", result["reason"]


def test_a_kv_link_nobody_can_name_fails_by_default(tmp_path):
    """The prefill server's log names no transport: not a pass with a note, a failed gate."""
    proc, result, _ = run_pd(tmp_path, transport="")
    assert proc.returncode == 1 and result["status"] == "failed"
    assert result["reason"] == (
        "nixl named no transport in the prefill server's log (UCX_PROTO_INFO=y was set): the kv_link gate wants a named link (--gate kv_link=off accepts none)"
    )
    assert result["figures"]["kv_link"] == "unknown" and result["figures"]["greedy"]["identical"]
    proc, result, _ = run_pd(tmp_path, transport="", extra=("--gate", "kv_link=off"))
    assert result["status"] == "passed", result["reason"]
    assert {v["name"]: v["status"] for v in result["verdicts"]} == {"greedy outputs": "passed", "kv_link": "not judged"}


def test_a_taken_bootstrap_port_fails_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc, result, bodies = run_pd(tmp_path, extra=("--bootstrap-port", str(port)))
    assert proc.returncode == 1 and result["reason"] == f"--bootstrap-port {port} is already in use on this host: pick a free one or leave it out"
    assert bodies == [] and "single_bench" not in result["figures"]


def test_no_gpu_is_skipped_never_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(sglang_pd.sglang_serve, "gpu_count", lambda: 0)
    monkeypatch.setattr(sglang_pd.sglang_serve, "sglang_version", lambda: "0.5.23")
    code = sglang_pd.main(["--model", "org/m", "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and result["status"] == "skipped" and "needs two GPUs" in result["reason"]
    code = sglang_pd.main(["--model", "org/m", "--json", str(tmp_path / "r.json"), "--require-gpu"])
    assert code == 1 and json.loads((tmp_path / "r.json").read_text())["status"] == "failed"


def test_one_gpu_is_not_enough(tmp_path, monkeypatch):
    monkeypatch.setattr(sglang_pd.sglang_serve, "gpu_count", lambda: 1)
    monkeypatch.setattr(sglang_pd.sglang_serve, "sglang_version", lambda: "0.5.23")
    sglang_pd.main(["--model", "org/m", "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["status"] == "skipped" and result["reason"] == "prefill and decode need a GPU each; 1 visible"


def test_an_unknown_backend_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        sglang_pd.main(["--transfer-backend", "carrier-pigeon"])
    assert exc.value.code == 2 and "invalid choice: 'carrier-pigeon'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- what ran on the H200s

# The prefill server's whole log from the traced run on 2 x H200 (the run's record, read as the test reads it)
H200_PREFILL_LOG = (Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "2026-11-30-h200x2-pd" / "traced.prefill.log").read_text()


def test_the_h200_prefill_log_names_cuda_ipc_for_the_kv_write():
    """On 2 x H200 the prefill server's NIXL agent printed ~200 tables (8 worker threads, its own
    loopback, notifications, aux data in host memory); the KV's write from GPU 0 is one of them."""
    tables = sglang_pd.ucx_protocols(H200_PREFILL_LOG)
    assert len(tables) > 100 and all(len(title.split(" / ")) == 2 for title, _ in tables)  # tables without rows do not merge
    assert sglang_pd.transports(H200_PREFILL_LOG) == {"cuda_ipc": 1}
    assert sglang_pd.kv_link(sglang_pd.transports(H200_PREFILL_LOG)) == "cuda_ipc"
    assert sglang_pd.kv_protocols(H200_PREFILL_LOG) == ["remote memory write by ucp_put*(multi) from cuda/GPU0 to cuda/dev[3]: cuda_ipc"]


SENDER_0512 = """
                    if kv_chunk.is_last and kv_chunk.state_indices:
                        dst_info = self.decode_kv_args_table[req.agent_name]
"""
RECEIVER_0512 = """
        # Mark that we expect state data if state_indices was provided
        if state_indices is not None:
            self.kv_mgr.transfer_statuses[self.bootstrap_room].expects_state = True
"""
FIXED = """
                    if kv_chunk.is_last:
                        dst_info = self.decode_kv_args_table[req.agent_name]
        if state_indices:
            self.kv_mgr.transfer_statuses[self.bootstrap_room].expects_state = True
"""


def test_a_known_nixl_defect_is_found_in_the_installed_code_not_by_version():
    # either half of sgl-project/sglang#25698 hangs a dense model's request
    assert "sgl-project/sglang#25698" in (sglang_pd.known_defect("nixl", SENDER_0512 + FIXED.split("        if")[0]) or "")
    assert sglang_pd.known_defect("nixl", RECEIVER_0512) is not None
    assert sglang_pd.known_defect("nixl", FIXED) is None  # the fix, as #25699 or a patched 0.5.12 has it
    assert sglang_pd.known_defect("nixl", None) is None  # nothing installed: the harness says so itself
    assert sglang_pd.known_defect("mooncake", SENDER_0512) is None


def test_a_pair_with_the_known_defect_fails_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(sglang_pd, "installed_source", lambda backend: SENDER_0512)
    monkeypatch.setattr(sglang_pd.sglang_serve, "sglang_version", lambda: "0.5.12")
    monkeypatch.setattr(sglang_pd.sglang_serve, "gpu_count", lambda: 2)
    monkeypatch.setattr(sglang_pd.sglang_serve, "prepare_model", lambda args, workdir, report: ("m", "m"))
    started = []
    monkeypatch.setattr(sglang_pd, "run_phases", lambda *a: started.append(a))
    rc = sglang_pd.main(["--json", str(tmp_path / "r.json"), "--timeout", "60"])
    result = json.loads((tmp_path / "r.json").read_text())
    assert rc == 1 and result["status"] == "failed" and not started
    assert result["reason"].startswith("SGLang 0.5.12: its NIXL backend hangs every request of a dense model"), result["reason"]
