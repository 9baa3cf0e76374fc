"""GPU health test logic: the peaks table and its lookup, PCIe link arithmetic and nvidia-smi
parsing, GEMM and copy arithmetic, the share gate; and, where torch is installed (inside the
distributed image in CI), every measurement run on the CPU so that its checks can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoke_tests import _hardware as hw
from smoke_tests import gpu_health as gh

REPO = Path(__file__).resolve().parents[2]

# Device names as torch.cuda.get_device_name() gives them.
NAMES = {
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA A100-SXM4-80GB": "A100 SXM4 80GB",
    "NVIDIA A100-SXM4-40GB": "A100 SXM4 40GB",
    "NVIDIA A100 80GB PCIe": "A100 PCIe 80GB",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe 40GB",
    "NVIDIA B200": "B200",
    "NVIDIA L40S": "L40S",
    "NVIDIA GeForce RTX 4090": "GeForce RTX 4090",
}


@pytest.mark.parametrize(("name", "model"), sorted(NAMES.items()))
def test_peaks_lookup_finds_the_right_model(name, model):
    peaks = hw.peaks_for(name)
    assert peaks is not None and peaks.model == model
    assert peaks.bf16_tflops > 0 and peaks.memory_gbps > 0 and peaks.source


def test_an_unknown_gpu_gets_no_peak_not_a_guess():
    for name in ("NVIDIA GeForce GTX 1080", "Tesla V100-SXM2-32GB", "NVIDIA H800", ""):
        assert hw.peaks_for(name) is None
    assert hw.share(500.0, None) is None and hw.pct(None) == "-"


def test_peaks_table_values_and_sources():
    by_model = {p.model: p for p in hw.load_peaks()}
    # the datasheets' with-sparsity figures, halved
    assert by_model["H200 SXM"].bf16_tflops == 989.5 and by_model["H200 SXM"].fp8_tflops == 1979
    assert by_model["H200 SXM"].memory_gbps == 4800 and by_model["H200 SXM"].nvlink_gbps == 450
    assert by_model["A100 SXM4 80GB"].fp8_tflops is None  # no FP8 tensor cores
    assert by_model["L40S"].nvlink_gbps is None  # PCIe only
    assert all("datasheet" in p.source or "specifications" in p.source or "whitepaper" in p.source for p in by_model.values())
    assert len(by_model) == len(hw.load_peaks())  # no model twice


def test_share_of_peak():
    assert hw.share(775.0, 989.5) == pytest.approx(0.7832, abs=1e-4)
    assert hw.pct(0.7832) == "78%"


@pytest.mark.parametrize(
    ("gen", "width", "gbps"),
    [(5, 16, 63.015), (4, 16, 31.508), (3, 16, 15.754), (2, 16, 8.0), (1, 1, 0.25), (4, 8, 15.754), (6, 16, 121.0)],
)
def test_pcie_link_math(gen, width, gbps):
    assert hw.pcie_link_gbps(gen, width) == pytest.approx(gbps, abs=0.01)


def test_pcie_link_math_refuses_nonsense():
    with pytest.raises(ValueError):
        hw.pcie_link_gbps(7, 16)
    with pytest.raises(ValueError):
        hw.pcie_link_gbps(5, 0)


# `nvidia-smi --query-gpu=PCIE_QUERY --format=csv,noheader,nounits`: an idle H200 pair, one
# card under load, one in a slot that trained at x8, and a field nvidia-smi cannot read.
PCIE_CSV = """\
0, 00000000:18:00.0, 1, 5, 16, 16
1, 00000000:2A:00.0, 5, 5, 16, 16
2, 00000000:3B:00.0, 5, 5, 8, 16
3, 00000000:4C:00.0, [N/A], 4, 16, 16
"""


def test_parse_pcie_query_and_the_callout():
    links = hw.parse_pcie_query(PCIE_CSV)
    assert sorted(links) == [0, 1, 2, 3]
    bus, idle = links[0]
    assert bus == "00000000:18:00.0" and idle.describe() == "Gen1 x16 (max Gen5 x16)"
    assert idle.below_max() == "Gen1 of Gen5"  # (an idle link; the test reads it under load)
    loaded = links[1][1]
    assert loaded.below_max() is None and loaded.gbps == pytest.approx(63.015, abs=0.01) and loaded.describe() == "Gen5 x16"
    narrow = links[2][1]
    assert narrow.below_max() == "width x8 of x16" and narrow.gbps_max == pytest.approx(63.015, abs=0.01)
    unknown = links[3][1]
    assert unknown.gen is None and unknown.gbps is None and unknown.below_max() is None
    assert hw.link_for_bus(links, (0, 0x2A, 0)) == (1, loaded)
    assert hw.link_for_bus(links, (0, 0x99, 0)) is None and hw.link_for_bus(links, None) is None
    assert hw.parse_pcie_query("") == {} and hw.parse_pcie_query("No devices were found") == {}


def test_gemm_arithmetic():
    assert gh.gemm_flop(8192) == 2 * 8192**3
    # 775 TFLOP/s at n = 4096 (the reference loop on H200): 2 * 4096^3 / 775e12 s
    assert gh.tflops(4096, 2 * 4096**3 / 775e12) == pytest.approx(775.0)
    assert gh.gemm_iters(16384, 10) == 10 and gh.gemm_iters(4096, 10) == 146 and gh.gemm_iters(256, 10) == 200
    assert gh.has_fp8((9, 0)) and gh.has_fp8((8, 9)) and not gh.has_fp8((8, 0))
    with pytest.raises(ValueError):
        gh.tflops(4096, 0)


def test_copy_arithmetic_counts_read_and_write_for_device_copies():
    # 1 GiB copied in 0.5 ms: 2.15 TB/s of traffic, read + write
    assert gh.copy_gbps(1 << 30, 0.5e-3, read_and_write=True) == pytest.approx(4294.97, abs=0.01)
    assert gh.copy_gbps(1 << 30, 0.5e-3) == pytest.approx(2147.48, abs=0.01)


def test_share_gate_names_every_low_figure():
    gpus = [{"index": 0, "rows": [
        {"what": "bf16 GEMM", "size": "n=8192", "share": 0.80},
        {"what": "memory copy", "size": "1 GiB", "share": 0.40},
        {"what": "host to device", "size": "256 MiB", "share": None},  # unknown link: never gated
    ]}]  # fmt: skip
    pairs = [{"src": 0, "dst": 1, "link": "NV18", "share": 0.5}, {"src": 1, "dst": 0, "link": "NV18", "share": 0.9}]
    assert gh.share_failures(gpus, pairs, 0.7) == ["GPU0 memory copy 1 GiB: 40% of peak", "GPU0->GPU1: 50% of NV18"]
    assert gh.share_failures(gpus, pairs, None) == []


def test_key_figure():
    figures = {
        "gpus": [{"index": 0, "rows": [
            {"what": "bf16 GEMM", "value": 690.0, "share": 0.697}, {"what": "bf16 GEMM", "value": 794.0, "share": 0.802},
            {"what": "memory copy", "value": 4270.0, "share": 0.89}, {"what": "host to device", "value": 55.3, "share": 0.878},
        ]}],
        "pairs": [{"gbps": 395.0}, {"gbps": 380.0}],
    }  # fmt: skip
    assert gh.key_figure(figures) == "bf16 794 TFLOP/s (80%), HBM 4270 GB/s (89%), H2D 55 GB/s (88%), GPU pairs >= 380 GB/s"
    assert gh.SMOKE.figure({}) == "-"


def test_matrix_table():
    headers, rows = hw.matrix_table(["GPU0", "GPU1"], {(0, 1): "395 NV18", (1, 0): "391 NV18"})
    assert headers == ["from \\ to", "GPU0", "GPU1"]
    assert rows == [["GPU0", "-", "395 NV18"], ["GPU1", "391 NV18", "-"]]


def test_gemm_sizes_must_be_multiples_of_16():
    parser = gh.build_parser()
    assert parser.parse_args(["--gemm-sizes", "256,512"]).gemm_sizes == [256, 512]
    with pytest.raises(SystemExit):
        parser.parse_args(["--gemm-sizes", "100"])


# --- with torch (inside the distributed image in CI): the measurements on the CPU ---------


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_gemm_measurement_checks_its_product(kind):
    torch = pytest.importorskip("torch")
    cpu = torch.device("cpu")
    r = gh.measure_gemm(torch, cpu, 64, kind, iters=2, repeats=1)
    assert r["correct"] and r["error"] < 0.01 and r["tflops"] > 0
    # a wrong product is caught: the same check against a disturbed reference
    a = torch.randn(64, 64)
    assert gh.relative_error(torch, a @ a, (a @ a) * 1.1) > gh.GEMM_TOLERANCE


def test_copy_measurements_check_every_byte():
    torch = pytest.importorskip("torch")
    cpu = torch.device("cpu")
    device = gh.measure_device_copy(torch, cpu, 1 << 16, iters=2, repeats=1)
    host = gh.measure_host_copies(torch, cpu, 1 << 16, iters=2, repeats=1, during_load=lambda: "probed")
    pair = gh.measure_pair(torch, cpu, cpu, 1 << 16, iters=2, repeats=1)
    assert device["correct"] and host["correct"] and pair["correct"]
    assert host["under_load"] == "probed" and device["gbps"] > 0 and host["h2d_gbps"] > 0 and pair["gbps"] > 0


def test_a_copy_that_loses_a_byte_is_wrong(monkeypatch):
    torch = pytest.importorskip("torch")
    real_equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: False if a.dtype == torch.uint8 else real_equal(a, b))
    assert not gh.measure_device_copy(torch, torch.device("cpu"), 1 << 12, iters=1, repeats=1)["correct"]


def test_without_gpu_the_test_skips_and_fails_when_gpus_were_asked_for(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _run("smoke_tests.gpu_health", "--json", str(tmp_path / "skip.json"))
    data = json.loads((tmp_path / "skip.json").read_text())
    assert proc.returncode == 0 and data["status"] == "skipped"
    assert "the GPU health test measures GPUs" in data["reason"]
    proc = _run("smoke_tests.gpu_health", "--json", str(tmp_path / "fail.json"), env={"SMOKE_REQUIRE_GPU": "1"})
    data = json.loads((tmp_path / "fail.json").read_text())
    assert proc.returncode == 1 and data["status"] == "failed"
    assert data["reason"].startswith("GPUs were asked for, but none is visible")
    proc = _run("smoke_tests.gpu_health", "--cpu", "--json", str(tmp_path / "cpu.json"))
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert proc.returncode == 0 and data["status"] == "skipped" and "no CPU variant" in data["reason"]
