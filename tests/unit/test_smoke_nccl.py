"""NCCL smoke test logic: bandwidth arithmetic, sizes, topology parsing, gates, comparison."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoke_tests import nccl
from smoke_tests.reference_allreduce import compare, ratio_failures

REPO = Path(__file__).resolve().parents[2]

# As read on the 2 x H100 machine (2026-11-27): tabs, and an ANSI underline around the header.
TOPO_2_H100 = (
    "\t\x1b[4mGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV18\t0-31\t0\t\tN/A\n"
    "GPU1\tNV18\t X \t0-31\t0\t\tN/A\n"
    "\nLegend:\n\n  X    = Self\n  SYS  = Connection traversing PCIe as well as the SMP interconnect\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
)

TOPO_PCIE_WITH_NICS = """\
        GPU0    GPU1    GPU2    GPU3    NIC0    NIC1    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      PIX     SYS     SYS     PIX     SYS     0-23    0               N/A
GPU1    PIX      X      SYS     SYS     PIX     SYS     0-23    0               N/A
GPU2    SYS     SYS      X      NODE    SYS     PIX     24-47   1               N/A
GPU3    SYS     SYS     NODE     X      SYS     PIX     24-47   1               N/A
NIC0    PIX     PIX     SYS     SYS      X      SYS
NIC1    SYS     SYS     PIX     PIX     SYS      X

Legend:

  X    = Self

NIC Legend:

  NIC0: mlx5_0
  NIC1: mlx5_1
"""

NCCL_LOG = """\
host:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM
host:1:1 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[1] via P2P/CUMEM
host:1:1 [0] NCCL INFO Channel 00/0 : 1[1] -> 0[0] [receive] via NET/IB/0/GDRDMA
host:1:1 [0] NCCL INFO Connected all rings, use ring PXN 0 GDR 1
"""


def test_busbw_follows_nccl_tests():
    # nccl-tests doc/PERFORMANCE.md: all-reduce busbw = algbw * 2(n-1)/n.
    assert nccl.busbw_factor(2) == 1.0
    assert nccl.busbw_factor(8) == 1.75
    assert nccl.busbw_factor(1) == 0.0
    assert nccl.busbw_gbps(100.0, 4) == 150.0
    assert nccl.algbw_gbps(1 << 30, 3.2295e-3) == pytest.approx(332.48, abs=0.01)


def test_busbw_factor_per_collective_follows_nccl_tests():
    # nccl-tests doc/PERFORMANCE.md: all-gather, reduce-scatter, all-to-all: busbw = algbw * (n-1)/n.
    for name in ("all_gather", "reduce_scatter", "all_to_all"):
        assert nccl.busbw_factor(2, name) == 0.5
        assert nccl.busbw_factor(8, name) == 0.875
    assert nccl.busbw_factor(8, "all_reduce") == 1.75
    with pytest.raises(ValueError, match="unknown collective 'broadcast'"):
        nccl.busbw_factor(8, "broadcast")


def test_parse_collectives():
    assert nccl.parse_collectives("all") == ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]
    assert nccl.parse_collectives("all-gather, all_to_all") == ["all_gather", "all_to_all"]
    with pytest.raises(ValueError, match="unknown collective"):
        nccl.parse_collectives("all_reduce,gather")


def test_message_elements_divide_among_the_ranks():
    assert nccl.message_elements(1 << 20, 2, 2) == 1 << 19
    assert nccl.message_elements(1 << 20, 2, 3) == 524286  # (524288 // 3) * 3
    assert nccl.message_elements(6, 4, 8) == 8  # never fewer elements than ranks


# The line shapes NCCL writes: ring channels with their connection index ("00/0"), SHM
# channels without it ("Channel 00 :"; seen with NCCL_P2P_DISABLE=1), sockets across nodes.
NCCL_LOG_H200_P2P = "h200:9:9 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/direct pointer\n"
NCCL_LOG_H200_SHM = "h200:9:9 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via SHM/direct/direct\nh200:9:9 [0] NCCL INFO Channel 01 : 1[1] -> 0[0] via SHM/direct/direct\n"
NCCL_LOG_SOCKET = "n1:7:7 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] [send] via NET/Socket/0\n"


def test_transport_gate_catches_a_fallback():
    p2p = nccl.parse_nccl_transports(NCCL_LOG_H200_P2P)
    shm = nccl.parse_nccl_transports(NCCL_LOG_H200_SHM)
    assert p2p == ["P2P/direct"] and shm == ["SHM/direct/direct"]
    assert nccl.transport_gate(p2p, ["P2P"]) is None
    assert nccl.transport_gate(p2p, []) is None  # no expectation, no gate
    assert nccl.transport_gate(shm, ["P2P"]) == "NCCL used SHM/direct/direct where --expect-transport P2P was expected (a fallback)"
    mixed = nccl.parse_nccl_transports(NCCL_LOG)  # P2P within the node, IB across
    assert nccl.transport_gate(mixed, ["P2P", "NET/IB"]) is None
    socket = nccl.parse_nccl_transports(NCCL_LOG_SOCKET)
    assert "NET/Socket/0" in nccl.transport_gate(socket, ["NET/IB"])
    assert "transport is unknown" in nccl.transport_gate([], ["P2P"])
    assert "NCCL_DEBUG was set by the user" in nccl.transport_gate([], ["P2P"], log_captured=False)


def test_bandwidth_rejects_nonsense():
    with pytest.raises(ValueError):
        nccl.algbw_gbps(1, 0)
    with pytest.raises(ValueError):
        nccl.busbw_factor(0)


@pytest.mark.parametrize(
    "text, value",
    [("1M", 1 << 20), ("1MiB", 1 << 20), ("64k", 65536), ("1G", 1 << 30), ("4096", 4096), ("0.5M", 1 << 19), (8, 8)],
)
def test_parse_size(text, value):
    assert nccl.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "1X", "-1M", "0", "1.5"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        nccl.parse_size(text)


def test_default_gpu_sweep_is_1mib_to_1gib_by_4():
    lo, hi, factor = nccl.GPU_SIZES
    sizes = nccl.sweep_sizes(nccl.parse_size(lo), nccl.parse_size(hi), factor)
    assert sizes == [1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30]
    with pytest.raises(ValueError):
        nccl.sweep_sizes(10, 1, 2)
    with pytest.raises(ValueError):
        nccl.sweep_sizes(1, 10, 1)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("world", [2, 3, 8, 64])
def test_value_bound_keeps_every_partial_sum_exact(dtype, world):
    bound = nccl.value_bound(dtype, world)
    assert bound >= 1
    assert world * bound <= nccl.DTYPE_EXACT_INT[dtype]


def test_parse_topo_of_the_h100_machine():
    matrix = nccl.parse_topo(TOPO_2_H100)
    assert matrix == {"GPU0": {"GPU0": "X", "GPU1": "NV18"}, "GPU1": {"GPU0": "NV18", "GPU1": "X"}}
    links = nccl.link_between(matrix, [0, 1])
    assert links == {"0-1": "NV18"}
    assert nccl.summarize_links(links) == "NV18"


def test_parse_topo_with_nics_and_pcie():
    matrix = nccl.parse_topo(TOPO_PCIE_WITH_NICS)
    assert set(matrix) == {"GPU0", "GPU1", "GPU2", "GPU3", "NIC0", "NIC1"}
    assert matrix["GPU2"]["GPU3"] == "NODE"
    assert matrix["GPU0"]["NIC0"] == "PIX"
    assert nccl.summarize_links(nccl.link_between(matrix, [0, 1])) == "PIX"
    # The slowest pair decides what an all-reduce over all four sees.
    assert nccl.summarize_links(nccl.link_between(matrix, [0, 1, 2, 3])) == "SYS"
    assert nccl.link_between(matrix, [0, 7]) == {"0-7": "unknown"}
    assert nccl.summarize_links({}) == "none (single GPU)"


def test_parse_nccl_transports():
    assert nccl.parse_nccl_transports(NCCL_LOG) == ["P2P/CUMEM", "NET/IB/0/GDRDMA"]
    assert nccl.parse_nccl_transports("") == []


def test_physical_gpu_indices():
    smi = "0, 00000000:00:06.0\n1, 00000000:00:07.0\n"
    # torch reports (pci_domain_id, pci_bus_id, pci_device_id); nvidia-smi DOMAIN:BUS:DEVICE.FUNCTION.
    assert nccl.physical_gpu_indices([(0, 0, 7), (0, 0, 6)], smi, None) == [1, 0]
    assert nccl.physical_gpu_indices([None, None], smi, "3,5") == [3, 5]
    assert nccl.physical_gpu_indices([None, None], None, "GPU-abc,GPU-def") is None
    assert nccl.physical_gpu_indices([None, None], None, None) == [0, 1]
    assert nccl.parse_pci_bus_id("00000000:18:00.0") == (0, 0x18, 0)
    assert nccl.parse_pci_bus_id("00000000:00:07.0") == (0, 0, 7)
    assert nccl.parse_pci_bus_id("junk") is None


def test_min_busbw_gate_reads_the_largest_message():
    rows = [{"bytes": 1 << 20, "busbw_gbps": 20.0}, {"bytes": 1 << 30, "busbw_gbps": 332.5}]
    assert nccl.evaluate_gate(rows, None) is None
    assert nccl.evaluate_gate(rows, 300) is None
    assert nccl.evaluate_gate(rows, 340) == "busbw 332.5 GB/s at 1 GiB is under --min-busbw 340 GB/s"


def test_reference_comparison_gates_only_large_sizes():
    smoke = [{"bytes": 1 << 20, "busbw_gbps": 10.0}, {"bytes": 1 << 30, "busbw_gbps": 320.0}]
    ref = [{"bytes": 1 << 20, "busbw_gbps": 20.0}, {"bytes": 1 << 30, "busbw_gbps": 330.0}]
    rows = compare(smoke, ref, 64 << 20)
    assert [r["gated"] for r in rows] == [False, True]
    assert rows[1]["ratio"] == pytest.approx(320 / 330)
    assert ratio_failures(rows, 0.95) == []
    assert ratio_failures(rows, 0.99) == ["1 GiB at 0.970"]


def test_json_flag_is_not_forwarded_twice():
    assert nccl._strip_json(["--cpu", "--json", "a.json", "--json=b", "--iters", "3"]) == ["--cpu", "--iters", "3"]


def _run(*args, timeout=240, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("NCCL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("nccl")
    proc = _run("smoke_tests.nccl", "--cpu", "--max-bytes", "1M", "--iters", "3", "--json", str(out / "nccl.json"))
    return proc, out


def test_cpu_variant_runs_over_gloo_and_checks_sums(cpu_run):
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "nccl.json").read_text())
    assert data["status"] == "passed"
    fig = data["figures"]
    assert (fig["backend"], fig["world_size"], fig["dtype"]) == ("gloo", 2, "fp32")
    assert [r["bytes"] for r in fig["sizes"]] == [64 << 10, 256 << 10, 1 << 20]
    assert all(r["correct"] and r["mismatched_elements"] == 0 for r in fig["sizes"])
    for r in fig["sizes"]:
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * nccl.busbw_factor(2))
        assert math.isfinite(r["time_us"]) and r["time_us"] > 0
    # every collective by default, each exact at every size, busbw with its own factor
    assert list(fig["collectives"]) == list(nccl.COLLECTIVES)
    for name, rows in fig["collectives"].items():
        assert [r["bytes"] for r in rows] == [64 << 10, 256 << 10, 1 << 20] and all(r["correct"] for r in rows)
        for r in rows:
            assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * nccl.busbw_factor(2, name))
    assert fig["collectives"]["all_reduce"] == fig["sizes"]
    assert "nccl: PASSED" in proc.stdout


def test_reference_compares_with_the_smoke_result(cpu_run):
    _, out = cpu_run
    proc = _run(
        "smoke_tests.reference_allreduce", "--cpu", "--max-bytes", "1M", "--iters", "3",
        "--compare", str(out / "nccl.json"), "--compare-min-bytes", "1M", "--min-ratio", "0.01",
        "--json", str(out / "ref.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "ref.json").read_text())
    assert data["status"] == "passed"
    assert [c["gated"] for c in data["figures"]["comparison"]] == [False, False, True]


def test_an_unmet_gate_fails_with_exit_1(tmp_path):
    pytest.importorskip("torch")
    proc = _run(
        "smoke_tests.nccl", "--cpu", "--max-bytes", "64K", "--iters", "2", "--min-busbw", "1e9",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert proc.returncode == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "failed"
    assert "under --min-busbw" in data["reason"]
    assert data["figures"]["sizes"], "the measured sizes are still reported"


def test_gpu_run_without_gpu_is_skipped_not_passed(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _run("smoke_tests.nccl", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "skipped"
    assert data["reason"] == "no CUDA GPU visible: NCCL needs one GPU per rank (--cpu runs the gloo variant)"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_gpu_run_without_gpu_fails_when_gpus_were_asked_for(tmp_path, how):
    """--require-gpu (or SMOKE_REQUIRE_GPU=1, what invoke smoke and the nccl-2node stack set
    on GPU hosts): no GPU is a failure that says why and what to check."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["smoke_tests.nccl", "--json", str(tmp_path / "r.json")]
    env = {}
    if how == "flag":
        args.append("--require-gpu")
    else:
        env["SMOKE_REQUIRE_GPU"] = "1"
    proc = _run(*args, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "failed"
    assert data["reason"].startswith("GPUs were asked for, but none is visible: no /dev/nvidia* device")
    assert "NCCL needs one GPU per rank" in data["reason"] and "`invoke doctor`" in data["reason"]


def test_a_wrong_sum_on_one_rank_fails_the_test(tmp_path):
    """An all-reduce that is wrong on rank 1 only: rank 0's copy is right, the verdict is not."""
    pytest.importorskip("torch")
    script = REPO / "tests" / "unit" / "data" / "corrupt_allreduce.py"
    proc = _run(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), "--cpu",
        "--max-bytes", "256K", "--iters", "2", "--repeats", "1", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "failed"
    wrong = [f"{name} {size} on 1 rank(s)" for name in nccl.COLLECTIVES for size in ("64 KiB", "256 KiB")]
    assert data["reason"] == "wrong results: " + ", ".join(wrong)
    for rows in data["figures"]["collectives"].values():
        for row in rows:
            assert (row["correct"], row["wrong_ranks"], row["mismatched_elements"]) == (False, 1, 1)
    assert "4 collectives WRONG" in nccl.SMOKE.figure(data["figures"])


def test_one_wrong_collective_is_named_and_fails_the_verdict(tmp_path):
    """Only all-to-all broken: all-reduce alone being exact must not pass the run."""
    pytest.importorskip("torch")
    script = REPO / "tests" / "unit" / "data" / "corrupt_allreduce.py"
    proc = _run(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), "--cpu",
        "--max-bytes", "64K", "--iters", "2", "--repeats", "1", "--collectives", "all_reduce,all_to_all",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    data = json.loads((tmp_path / "r.json").read_text())
    assert proc.returncode == 1 and data["status"] == "failed"
    assert data["reason"] == "wrong results: all_reduce 64 KiB on 1 rank(s), all_to_all 64 KiB on 1 rank(s)"
    assert list(data["figures"]["collectives"]) == ["all_reduce", "all_to_all"]
