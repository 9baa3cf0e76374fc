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
NCCL_LOG_H200_SHM = (
    "h200:9:9 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via SHM/direct/direct\nh200:9:9 [0] NCCL INFO Channel 01 : 1[1] -> 0[0] via SHM/direct/direct\n"
)
NCCL_LOG_SOCKET = "n1:7:7 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] [send] via NET/Socket/0\n"


# Two containers as two nodes (the nccl-2node stack): rank 0's side of its socket channels, as
# NCCL 2.2x prints them, with and without the communicator suffix newer releases add.
NCCL_LOG_TWO_NODES = """\
node-0:52:52 [0] NCCL INFO NCCL version 2.28.9+cuda13.0
node-0:52:98 [0] NCCL INFO NET/IB : No device found.
node-0:52:98 [0] NCCL INFO NET/Socket : Using [0]eth0:172.20.0.2<0>
node-0:52:98 [0] NCCL INFO Using network Socket
node-0:52:98 [0] misc/socket.cc:484 NCCL WARN socketProgress: connection closed by remote peer node-1<46590>
node-0:52:101 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [receive] via NET/Socket/0
node-0:52:101 [0] NCCL INFO Channel 01/0 : 1[0] -> 0[0] [receive] via NET/Socket/0 comm 0x55d0c8a0 nRanks 02
node-0:52:101 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/Socket/0
node-0:52:101 [0] NCCL INFO Connected all rings, use ring PXN 0 GDR 0
"""


def test_transport_gate_catches_a_fallback():
    p2p = nccl.parse_nccl_transports(NCCL_LOG_H200_P2P)
    shm = nccl.parse_nccl_transports(NCCL_LOG_H200_SHM)
    assert p2p == ["P2P/direct"] and shm == ["SHM/direct/direct"]
    assert nccl.transport_gate(p2p, ["P2P"]) is None
    assert nccl.transport_gate(p2p, []) is None  # no expectation, no gate
    assert nccl.transport_gate(shm, ["P2P", "NVLS"]) == "NCCL used SHM/direct/direct where P2P or NVLS was expected (a fallback)"
    mixed = nccl.parse_nccl_transports(NCCL_LOG)  # P2P within the node, IB across
    assert nccl.transport_gate(mixed, ["P2P", "NET/IB"]) is None
    socket = nccl.parse_nccl_transports(NCCL_LOG_SOCKET)
    assert "NET/Socket/0" in nccl.transport_gate(socket, ["NET/IB"])
    assert nccl.transport_gate(socket, ["NET/Sock"]) is not None  # a prefix is a whole word: NET/Sock is no NET/Socket
    assert nccl.transport_gate([], ["P2P"]) == "NCCL's transport is unknown (no 'via' line in its INFO log), P2P expected"


def test_auto_expects_what_the_topology_allows():
    assert nccl.expected_transports("NV18", 1) == ("P2P", "NVLS")
    assert "NET" not in nccl.expected_transports("SYS", 1) and "SHM" in nccl.expected_transports("PIX", 1)
    assert "NET" in nccl.expected_transports("unknown", 2) and "SHM" in nccl.expected_transports("unknown", 2)


def test_the_link_across_nodes_is_what_nccl_used():
    transports = nccl.parse_nccl_transports(NCCL_LOG_TWO_NODES)
    assert transports == ["NET/Socket/0"]
    assert nccl.link_used(transports, 2) == "NET/Socket across 2 nodes"
    assert nccl.link_used(["P2P/CUMEM", "NET/IB/0/GDRDMA"], 4) == "P2P+NET/IB across 4 nodes"
    assert nccl.link_used(["SHM/direct/direct"], 2) == "SHM across 2 nodes"  # containers NCCL found on one host
    assert nccl.link_used([], 2) == "unknown across 2 nodes (NCCL named no transport)"


def figures_of(link, busbw, transports, nodes=1, gpu="NVIDIA H100 80GB HBM3"):
    """The worker's figures for an all-reduce sweep (bytes -> busbw GB/s)."""
    peaks = nccl.peaks_for(gpu)
    nvlink = peaks.nvlink_gbps if peaks and link.startswith("NV") else None
    rows = [{"bytes": size, "busbw_gbps": bw, "nvlink_share": nccl.share(bw, nvlink)} for size, bw in busbw.items()]
    return {"sizes": rows, "link": link, "nvlink_gbps": nvlink, "gpu": gpu, "nccl_transports": transports, "nodes": nodes}


def judged(figures, backend="nccl", argv=()):
    report = nccl.Report()
    nccl.judge(report, nccl.gate_settings(_parser().parse_args(list(argv))), figures, backend)
    return {v.name: v for v in report.verdicts}


def _parser():
    parser = nccl.build_parser()
    parser.add_argument("--min-busbw", type=nccl._gbps)
    nccl.add_gate_args(parser, nccl.GATES)
    return parser


# All-reduce busbw as measured (BENCHMARKS.md): 2 x H100 on 2026-11-27 and the H200 pair with
# NCCL_P2P_DISABLE=1 (SHM; 28 GB/s at 16 MiB, and no better at the large sizes).
H100_PAIR = {1 << 20: 24.4, 16 << 20: 213.9, 256 << 20: 301.1, 1 << 30: 332.5}
SHM_PAIR = {1 << 20: 10.1, 16 << 20: 28.0, 256 << 20: 30.2, 1 << 30: 31.0}


def test_a_healthy_nvlink_pair_passes_the_default_gates():
    found = judged(figures_of("NV18", H100_PAIR, ["P2P/CUMEM"]))
    assert found["busbw_share"].ok and found["busbw_share"].measured == "67% (256 MiB)" and found["busbw_share"].expected == ">= 50% of peak"
    assert found["transport"].ok and found["transport"].expected == "auto for NV18: P2P or NVLS"
    assert found["busbw"].ok is None and found["busbw"].detail == "off (default)"


def test_a_link_forced_to_shm_fails_both_gates():
    found = judged(figures_of("NV18", SHM_PAIR, ["SHM/direct/direct"]))
    assert found["busbw_share"].ok is False and found["busbw_share"].detail == "under it: 256 MiB 7%, 1 GiB 7%"
    assert found["transport"].ok is False and found["transport"].measured == "SHM/direct/direct"
    assert found["transport"].detail == "NCCL used SHM/direct/direct where P2P or NVLS was expected (a fallback)"
    # a user who means SHM says so; --no-gates judges nothing but the sums
    assert judged(figures_of("NV18", SHM_PAIR, ["SHM/direct/direct"]), argv=["--gate", "transport=SHM", "--gate", "busbw_share=off"])["transport"].ok
    assert {v.ok for v in judged(figures_of("NV18", SHM_PAIR, ["SHM/direct/direct"]), argv=["--no-gates"]).values()} == {None}


def test_two_nodes_are_judged_on_what_nccl_named():
    found = judged(figures_of("NET/Socket across 2 nodes", H100_PAIR, ["NET/Socket/0"], nodes=2))
    assert found["transport"].ok and found["busbw_share"].ok is None
    assert "not joined by NVLink (link NET/Socket across 2 nodes)" in found["busbw_share"].detail
    unnamed = judged(figures_of("unknown across 2 nodes (NCCL named no transport)", H100_PAIR, [], nodes=2))
    assert unnamed["transport"].ok is False and "transport is unknown" in unnamed["transport"].detail
    assert judged(figures_of("NET/Socket across 2 nodes", H100_PAIR, ["NET/Socket/0"], nodes=2), argv=["--expect-transport", "NET/IB"])["transport"].ok is False


def test_gloo_and_small_sweeps_are_not_judged_on_shares():
    gloo = judged(figures_of("-", {1 << 20: 0.7}, []), backend="gloo")
    assert gloo["transport"].ok is None and gloo["busbw_share"].detail == "gloo: no NVLink"
    small = judged(figures_of("NV18", {1 << 20: 24.4, 64 << 20: 268.6}, ["P2P/CUMEM"]))
    assert small["busbw_share"].ok is None and small["busbw_share"].detail == "no all-reduce of 256 MiB or more in the sweep (--max-bytes)"
    unknown_gpu = judged(figures_of("NV18", H100_PAIR, ["P2P/CUMEM"], gpu="NVIDIA H800"))
    assert unknown_gpu["busbw_share"].ok is None


def test_min_busbw_sets_the_absolute_floor():
    found = judged(figures_of("NV18", H100_PAIR, ["P2P/CUMEM"]), argv=["--min-busbw", "340"])
    assert found["busbw"].ok is False and found["busbw"].measured == "332.5 GB/s" and found["busbw"].expected == ">= 340 GB/s"
    assert judged(figures_of("NV18", H100_PAIR, ["P2P/CUMEM"]), argv=["--gate", "busbw=300"])["busbw"].ok


@pytest.mark.parametrize(
    ("level", "subsys", "ours"),
    [("TRACE", "ALL", ("TRACE", "ALL")), ("INFO", "^INIT", ("INFO", "INIT,P2P,SHM,NET,BOOTSTRAP,ENV")), ("WARN", "COLL", ("INFO", "INIT,P2P,SHM,NET"))],
)
def test_the_capture_keeps_what_the_user_asked_nccl_for(monkeypatch, level, subsys, ours):
    monkeypatch.setenv("NCCL_DEBUG", level)
    monkeypatch.setenv("NCCL_DEBUG_SUBSYS", subsys)
    with nccl._NcclLog(enabled=True):
        assert (os.environ["NCCL_DEBUG"], os.environ["NCCL_DEBUG_SUBSYS"]) == ours
    assert (os.environ["NCCL_DEBUG"], os.environ["NCCL_DEBUG_SUBSYS"]) == (level, subsys)


def test_the_user_gets_back_what_their_nccl_debug_asked_for():
    assert nccl.user_lines(NCCL_LOG_TWO_NODES, None) == ""
    warn = nccl.user_lines(NCCL_LOG_TWO_NODES, "WARN")
    assert warn.splitlines() == ["node-0:52:98 [0] misc/socket.cc:484 NCCL WARN socketProgress: connection closed by remote peer node-1<46590>"]
    assert nccl.user_lines(NCCL_LOG_TWO_NODES, "version") == "node-0:52:52 [0] NCCL INFO NCCL version 2.28.9+cuda13.0\n"
    assert nccl.user_lines(NCCL_LOG_TWO_NODES, "INFO") == NCCL_LOG_TWO_NODES
    assert nccl.expand_debug_file("/tmp/nccl.%h.%p.log", "node-0", 52) == "/tmp/nccl.node-0.52.log"


@pytest.mark.parametrize(
    "user", [{}, {"NCCL_DEBUG": "WARN"}, {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "COLL"}, {"NCCL_DEBUG": "WARN", "NCCL_DEBUG_FILE": "FILE"}]
)
def test_the_transport_is_captured_whatever_nccl_debug_says(monkeypatch, tmp_path, capsys, user):
    """The stack sets NCCL_DEBUG=WARN: rank 0 still reads the INFO lines that name the
    transport, then the user's settings come back and their lines go where they asked."""
    for key in nccl._NcclLog.VARS:
        monkeypatch.delenv(key, raising=False)
    user = {k: str(tmp_path / "user.%p.log") if v == "FILE" else v for k, v in user.items()}
    for key, value in user.items():
        monkeypatch.setenv(key, value)
    with nccl._NcclLog(enabled=True) as log:
        # what NCCL does when the communicator is created: read the variables, write its log
        assert os.environ["NCCL_DEBUG"] == "INFO"
        assert {"INIT", "P2P", "SHM", "NET"} <= set(os.environ["NCCL_DEBUG_SUBSYS"].split(","))
        if user.get("NCCL_DEBUG") == "INFO":
            assert os.environ["NCCL_DEBUG_SUBSYS"] == "INIT,P2P,SHM,NET,COLL"
        Path(os.environ["NCCL_DEBUG_FILE"].replace("%p", str(os.getpid()))).write_text(NCCL_LOG_TWO_NODES)
        assert nccl.parse_nccl_transports(log.text()) == ["NET/Socket/0"]
    assert {k: os.environ.get(k) for k in nccl._NcclLog.VARS} == {k: user.get(k) for k in nccl._NcclLog.VARS}
    out = capsys.readouterr().out
    expected = nccl.user_lines(NCCL_LOG_TWO_NODES, user.get("NCCL_DEBUG"))
    if "NCCL_DEBUG_FILE" in user:
        assert out == "" and (tmp_path / f"user.{os.getpid()}.log").read_text() == expected
    else:
        assert out == expected
    assert not Path(log.dir.name).exists()  # the private log is gone


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
    # the sums are judged on every collective; on gloo the NVLink and transport gates do not apply
    status = {v["name"]: v["status"] for v in data["verdicts"]}
    assert status == {**{f"{name} exact": "passed" for name in nccl.COLLECTIVES}, "busbw_share": "not judged", "busbw": "not judged", "transport": "not judged"}


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
    assert data["reason"].startswith("busbw: ") and "expected >= 1e+09 GB/s" in data["reason"], data["reason"]
    assert data["figures"]["sizes"], "the measured sizes are still reported"
    busbw = next(v for v in data["verdicts"] if v["name"] == "busbw")
    assert (busbw["gate"], busbw["status"], busbw["expected"]) == (True, "failed", ">= 1e+09 GB/s")


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


@pytest.mark.parametrize("broken", ["all_to_all", "reduce_scatter"])
def test_one_wrong_collective_among_working_ones_fails_the_verdict(tmp_path, broken):
    """Only one collective broken, the other three right: the run fails, naming that one alone."""
    pytest.importorskip("torch")
    script = REPO / "tests" / "unit" / "data" / "corrupt_allreduce.py"
    proc = _run(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), "--cpu",
        "--max-bytes", "64K", "--iters", "2", "--repeats", "1", "--json", str(tmp_path / "r.json"),
        env={"CORRUPT_COLLECTIVES": broken},
    )  # fmt: skip
    data = json.loads((tmp_path / "r.json").read_text())
    assert proc.returncode == 1 and data["status"] == "failed", proc.stdout[-3000:] + proc.stderr[-3000:]
    assert data["reason"] == f"wrong results: {broken} 64 KiB on 1 rank(s)"
    assert list(data["figures"]["collectives"]) == list(nccl.COLLECTIVES)
    for name, rows in data["figures"]["collectives"].items():
        assert [r["correct"] for r in rows] == [name != broken], name
    status = {v["name"]: v["status"] for v in data["verdicts"] if v["name"].endswith(" exact")}
    assert status == {f"{name} exact": "failed" if name == broken else "passed" for name in nccl.COLLECTIVES}
