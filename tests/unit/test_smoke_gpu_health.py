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


# What each datasheet prints, in its own units, written here from the source (not from
# gpu_peaks.toml): tensor TFLOPS dense where the sheet prints them, else "with sparsity" (the
# table holds half: dense), memory in TB/s, NVLink both directions (the table holds one).
DATASHEETS = {
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM / PCIe / NVL columns
    "H100 SXM": {"bf16_sparse": 1979, "fp8_sparse": 3958, "memory_tbps": 3.35, "nvlink_both_gbps": 900},
    "H100 PCIe": {"bf16_sparse": 1513, "fp8_sparse": 3026, "memory_tbps": 2.0},
    "H100 NVL": {"bf16_sparse": 1671, "fp8_sparse": 3341, "memory_tbps": 3.9},
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): SXM / NVL columns
    "H200 SXM": {"bf16_sparse": 1979, "fp8_sparse": 3958, "memory_tbps": 4.8, "nvlink_both_gbps": 900},
    "H200 NVL": {"bf16_sparse": 1671, "fp8_sparse": 3341, "memory_tbps": 4.8},
    # NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): BF16 312 | 624* TFLOPS, no FP8
    "A100 SXM4 80GB": {"bf16_dense": 312, "memory_tbps": 2.039, "nvlink_both_gbps": 600},
    "A100 SXM4 40GB": {"bf16_dense": 312, "memory_tbps": 1.555, "nvlink_both_gbps": 600},
    "A100 PCIe 80GB": {"bf16_dense": 312, "memory_tbps": 1.935},
    "A100 PCIe 40GB": {"bf16_dense": 312, "memory_tbps": 1.555},
    # NVIDIA HGX B200 specifications, 8 GPUs: BF16 36 / FP8 72 PFLOPS sparse, 64 TB/s, NVLink 1.8 TB/s per GPU
    "B200": {"bf16_sparse": 36_000 / 8, "fp8_sparse": 72_000 / 8, "memory_tbps": 64 / 8, "nvlink_both_gbps": 1800},
    # NVIDIA L40S datasheet: BF16 362.05 | 733* / FP8 733 | 1,466* TFLOPS, 864 GB/s, PCIe only
    "L40S": {"bf16_dense": 362.05, "fp8_sparse": 1466, "memory_tbps": 0.864},
    # NVIDIA Ada Lovelace architecture whitepaper v1.0, appendix table 2 (RTX 4090, FP32 accumulate):
    # BF16 330.4 / FP8 660.6 TFLOPS with sparsity, 1,008 GB/s
    "GeForce RTX 4090": {"bf16_sparse": 330.4, "fp8_sparse": 660.6, "memory_tbps": 1.008},
}


@pytest.mark.parametrize("model", sorted(DATASHEETS))
def test_peaks_table_matches_the_datasheets(model):
    """gpu_peaks.toml against the datasheets' own figures: dense is half of "with sparsity",
    NVLink per direction half of both directions, GB/s a thousand times TB/s."""
    sheet = DATASHEETS[model]
    peaks = {p.model: p for p in hw.load_peaks()}[model]
    assert peaks.bf16_tflops == pytest.approx(sheet["bf16_dense"] if "bf16_dense" in sheet else sheet["bf16_sparse"] / 2, abs=0.1)
    if "fp8_sparse" in sheet:
        assert peaks.fp8_tflops == pytest.approx(sheet["fp8_sparse"] / 2, abs=0.1)
    else:
        assert peaks.fp8_tflops is None  # no FP8 tensor cores
    assert peaks.memory_gbps == pytest.approx(sheet["memory_tbps"] * 1000, abs=1)
    if "nvlink_both_gbps" in sheet:
        assert peaks.nvlink_gbps == sheet["nvlink_both_gbps"] / 2
    else:
        assert peaks.nvlink_gbps is None  # PCIe only, or a bridge
    assert any(word in peaks.source for word in ("datasheet", "specifications", "whitepaper"))


def test_every_model_in_the_table_is_checked_once():
    models = [p.model for p in hw.load_peaks()]
    assert sorted(models) == sorted(DATASHEETS) and len(set(models)) == len(models)


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


H100 = hw.peaks_for("NVIDIA H100 80GB HBM3")
H200 = hw.peaks_for("NVIDIA H200")
GEN5_X16 = {"now": "Gen5 x16", "gen": 5, "width": 16, "gen_max": 5, "width_max": 16, "below_max": None}


def gpu_figures(index, name, peaks, bf16, fp8=(), memory=None, host=None, pcie=GEN5_X16):
    """check_gpu's figures for one GPU, from measured values (TFLOP/s at n = 4096/8192/16384, GB/s)."""
    rows = [gh._row("bf16 GEMM", f"n={n}", v, "TFLOP/s", peaks.bf16_tflops if peaks else None, "dense peak", True, error=1.7e-3)
            for n, v in zip(gh.GEMM_SIZES, bf16)]  # fmt: skip
    rows += [gh._row("fp8 GEMM", f"n={n}", v, "TFLOP/s", peaks.fp8_tflops if peaks else None, "dense peak", True, error=1.7e-3)
             for n, v in zip(gh.GEMM_SIZES, fp8)]  # fmt: skip
    if memory:
        rows.append(gh._row("memory copy", "1 GiB", memory, "GB/s", peaks.memory_gbps if peaks else None, "memory peak", True))
    link_max = hw.pcie_link_gbps(5, 16) if pcie else None
    for what, value in zip(("host to device", "device to host"), host or ()):
        rows.append(gh._row(what, "256 MiB", value, "GB/s", link_max, "PCIe Gen5 x16", True))
    return {"index": index, "name": name, "peaks": None if peaks is None else {"model": peaks.model}, "rows": rows, "pcie": pcie}


def verdicts(gpus, pairs=(), **overrides):
    report = gh.Report()
    gates = gh.from_args(gh.build_parser().parse_args([f"--gate={k}={v}" for k, v in overrides.items()]), gh.GATES)
    gh.judge(report, gates, gpus, list(pairs))
    return {v.name: v for v in report.verdicts}


# What healthy cards measured (BENCHMARKS.md): the H200 pair on 2026-11-30 (GPU0 and GPU1, natively)
# and one H100 on 2026-12-05 (in the sglang image; bf16 only), its memory copy from KINDS.md.
HEALTHY = [
    gpu_figures(0, "NVIDIA H200", H200, (771, 737, 704), (1357, 1462, 1322), 4211, (55.0, 55.2)),
    gpu_figures(1, "NVIDIA H200", H200, (736, 699, 687), (1238, 1427, 1255), 4081, (54.9, 55.2)),
]
HEALTHY_H100 = [gpu_figures(0, "NVIDIA H100 80GB HBM3", H100, (739, 701, 720), (), 3000, (55.0, 55.2))]
HEALTHY_PAIRS = [
    {"src": 0, "dst": 1, "link": "NV18", "gbps": 384.0, "peak": 450, "share": 384 / 450, "correct": True},
    {"src": 1, "dst": 0, "link": "NV18", "gbps": 383.2, "peak": 450, "share": 383.2 / 450, "correct": True},
]


@pytest.mark.parametrize("gpus", [HEALTHY, HEALTHY_H100], ids=["h200x2", "h100"])
def test_healthy_h100_and_h200_figures_pass_every_default_gate(gpus):
    found = verdicts(gpus, HEALTHY_PAIRS if len(gpus) == 2 else ())
    judged = {name: v for name, v in found.items() if v.gate and v.ok is not None}
    assert all(v.ok for v in found.values() if v.ok is not None), [v.describe() for v in found.values() if v.ok is False]
    assert set(judged) >= {"bf16_gemm_share", "hbm_share", "pcie_link", "host_copy_share"}
    assert found["GEMM products"].ok and found["copies"].ok


def test_half_clocks_fail_the_compute_gates_naming_each_low_figure():
    """The same H200 at half its clocks: each GEMM at about half its healthy rate."""
    halved = [gpu_figures(0, "NVIDIA H200", H200, (385, 368, 352), (678, 731, 661), 4211, (55.0, 55.2))]
    found = verdicts(halved)
    assert found["bf16_gemm_share"].ok is False and found["bf16_gemm_share"].measured == "36% (GPU0 bf16 n=16384)"
    assert found["bf16_gemm_share"].detail == "under it: GPU0 bf16 n=4096 39%, GPU0 bf16 n=8192 37%, GPU0 bf16 n=16384 36%"
    assert found["fp8_gemm_share"].ok is False and found["hbm_share"].ok is True


def test_a_gpu_shared_with_a_busy_process_fails_compute_and_memory_gates():
    shared = [gpu_figures(0, "NVIDIA H100 80GB HBM3", H100, (380, 350, 360), (), 1500, (55.0, 55.2))]
    found = verdicts(shared)
    assert found["bf16_gemm_share"].ok is False and found["hbm_share"].ok is False
    assert found["hbm_share"].measured == "45%" and found["hbm_share"].expected == ">= 60% of peak"
    # who knows their machine turns a gate down, or off
    assert verdicts(shared, bf16_gemm_share=0.3, hbm_share="off")["bf16_gemm_share"].ok is True


def test_a_link_below_its_maximum_or_unread_fails_the_pcie_gate():
    narrow = {**GEN5_X16, "now": "Gen5 x8 (max Gen5 x16)", "width": 8, "below_max": "width x8 of x16"}
    found = verdicts([gpu_figures(0, "NVIDIA H200", H200, (771, 737, 704), (), 4211, (27.5, 27.6), pcie=narrow)])
    assert found["pcie_link"].ok is False and found["pcie_link"].measured == "GPU0 Gen5 x8 (max Gen5 x16)"
    assert found["host_copy_share"].ok is False  # 27.5 of 63 GB/s
    unread = verdicts([gpu_figures(0, "NVIDIA H200", H200, (771, 737, 704), (), 4211, (55.0, 55.2), pcie=None)])
    assert unread["pcie_link"].ok is False and "nvidia-smi did not report the link of GPU0" in unread["pcie_link"].detail
    assert unread["host_copy_share"].ok is None  # no maximum to share
    assert verdicts([gpu_figures(0, "NVIDIA H200", H200, (771,), pcie=None)], pcie_link="off")["pcie_link"].ok is None


def test_an_unknown_gpu_is_not_judged_on_shares_and_one_gpu_has_no_pair():
    found = verdicts([gpu_figures(0, "NVIDIA H800", None, (500, 500, 500), (), 2000, (55.0, 55.2))])
    assert found["bf16_gemm_share"].ok is None and found["bf16_gemm_share"].detail == "NVIDIA H800 not in gpu_peaks.toml: no peak to share"
    assert found["hbm_share"].ok is None and found["nvlink_copy_share"].detail == "one GPU: no pair to copy between"
    assert found["fp8_gemm_share"].ok is None and found["GEMM products"].ok  # correctness is still judged


def test_a_slow_nvlink_pair_fails_and_a_pcie_pair_is_not_judged():
    slow = [{**HEALTHY_PAIRS[0], "gbps": 40.0, "share": 40 / 450}, HEALTHY_PAIRS[1]]
    found = verdicts(HEALTHY, slow)
    assert found["nvlink_copy_share"].ok is False and found["nvlink_copy_share"].detail == "under it: GPU0->GPU1 9%"
    pcie = [{**p, "link": "PIX", "peak": None, "share": None} for p in HEALTHY_PAIRS]
    assert verdicts(HEALTHY, pcie)["nvlink_copy_share"].detail == "no pair over NVLink with a known peak (links: PIX)"


def test_min_share_and_require_full_links_still_set_the_gates():
    args = gh.build_parser().parse_args(["--min-share", "0.8", "--no-gates", "--require-full-links"])
    gates = gh.gate_settings(args)
    assert {name: gates[name] for name in gh.SHARE_GATES} == dict.fromkeys(gh.SHARE_GATES, 0.8) and gates["pcie_link"] is True


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


@pytest.mark.parametrize(("gemm", "message"), [("", "selects nothing"), (",", "selects nothing"), ("int8", "selects int8"), ("bf16,fp4", "selects fp4")])
def test_an_empty_or_unknown_gemm_selection_is_refused(capsys, gemm, message):
    with pytest.raises(SystemExit) as exit_info:
        gh.build_parser().parse_args(["--gemm", gemm])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert gh.build_parser().parse_args(["--gemm", "fp8,bf16,fp8"]).gemm == ["fp8", "bf16"]


# --- with torch (inside the distributed image in CI): the measurements on the CPU ---------


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_gemm_measurement_checks_its_product(kind):
    torch = pytest.importorskip("torch")
    r = gh.measure_gemm(torch, torch.device("cpu"), 64, kind, iters=2, repeats=1)
    assert r["correct"] and r["error"] < 0.01 and r["tflops"] > 0


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_a_wrong_product_is_caught(monkeypatch, kind):
    """The GEMM under test really computes a wrong product (one operand transposed): the
    measurement's own check against float32 calls it wrong."""
    torch = pytest.importorskip("torch")
    if kind == "bf16":
        real = torch.matmul
        monkeypatch.setattr(torch, "matmul", lambda a, b: real(a, b.t()))
    else:
        real_mm = torch._scaled_mm
        monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, **kw: real_mm(a, b.t().contiguous().t(), **kw).t().contiguous())
    r = gh.measure_gemm(torch, torch.device("cpu"), 64, kind, iters=1, repeats=1)
    assert not r["correct"] and r["error"] > gh.GEMM_TOLERANCE


def test_copy_measurements_check_every_byte():
    torch = pytest.importorskip("torch")
    cpu = torch.device("cpu")
    device = gh.measure_device_copy(torch, cpu, 1 << 16, iters=2, repeats=1)
    host = gh.measure_host_copies(torch, cpu, 1 << 16, iters=2, repeats=1, during_load=lambda: "probed")
    pair = gh.measure_pair(torch, cpu, cpu, 1 << 16, iters=2, repeats=1)
    assert device["correct"] and host["correct"] and pair["correct"]
    assert host["under_load"] == "probed" and device["gbps"] > 0 and host["h2d_gbps"] > 0 and pair["gbps"] > 0


def test_a_copy_that_loses_a_byte_is_wrong():
    """A copy that really loses a byte (the last one is never written): the byte-for-byte check catches it."""
    torch = pytest.importorskip("torch")

    def lossy(dst, src):
        dst[:-1].copy_(src[:-1])
        dst[-1] = src[-1] ^ 0xFF

    assert gh.measure_device_copy(torch, torch.device("cpu"), 1 << 12, iters=1, repeats=1)["correct"]
    assert not gh.measure_device_copy(torch, torch.device("cpu"), 1 << 12, iters=1, repeats=1, copy=lossy)["correct"]


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
