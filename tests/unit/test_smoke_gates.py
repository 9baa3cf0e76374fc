"""Gates as data: every smoke test's declared thresholds, how a value is read and written back,
overrides in order, and the verdicts a gate gives (the worst figure decides, every low one named,
a gate that does not apply is not judged)."""

from __future__ import annotations

import argparse

import pytest

from mlsyskit.checks.smoke import registry
from smoke_tests._gates import Gate, add_gate_args, from_args, judge_floor, judge_switch, parse_item, settings
from smoke_tests._result import Report

SHARE = Gate("bf16_gemm_share", "share", 0.5, "every bf16 GEMM's share of peak")
LINK = Gate("pcie_link", "switch", True, "the link at its maximum")
WORDS = Gate("transport", "words", ("auto",), "NCCL's transports", pattern=r"(auto|P2P|SHM|NVLS|NET)(/[A-Za-z0-9_]+)*")
FLOOR = Gate("busbw", "number", None, "busbw at the largest size", unit="GB/s")
GATES = (SHARE, LINK, WORDS, FLOOR)


def test_every_declared_gate_has_a_reason_and_a_default_it_accepts():
    declared = {name: test.gates for name, test in registry().items()}
    # the gates: GEMM and HBM shares, the PCIe link, busbw share, transport, flashinfer, the KV link
    assert {g.name for g in declared["gpu_health"]} >= {"bf16_gemm_share", "fp8_gemm_share", "hbm_share", "pcie_link"}
    assert {g.name for g in declared["nccl"]} >= {"busbw_share", "transport"}
    assert {g.name for g in declared["cuda_jit"]} == {"flashinfer"} and {g.name for g in declared["sglang_pd"]} == {"kv_link"}
    for test, gates in declared.items():
        for gate in gates:
            assert gate.what, (test, gate.name)
            if gate.default is not None and gate.kind != "switch":
                assert gate.basis, f"{test}.{gate.name}: a default threshold says where it comes from"
            assert gate.parse(gate.format(gate.default)) == gate.default


@pytest.mark.parametrize(
    ("gate", "text", "value"),
    [
        (SHARE, "0.6", 0.6), (SHARE, "off", None), (SHARE, " 1 ", 1.0),
        (LINK, "on", True), (LINK, "off", None), (LINK, "no", None),
        (WORDS, "P2P,NET/IB", ("P2P", "NET/IB")), (WORDS, "auto", ("auto",)),
        (FLOOR, "300", 300.0), (FLOOR, "off", None),
    ],
)  # fmt: skip
def test_values_read_and_write_back(gate, text, value):
    assert gate.parse(text) == value
    assert gate.parse(gate.format(value)) == value


@pytest.mark.parametrize(
    ("gate", "text", "message"),
    [
        (SHARE, "2", "between 0 and 1"), (SHARE, "0", "positive"), (SHARE, "nan", "positive"), (SHARE, "half", "a number or off"),
        (FLOOR, "-3", "positive"), (LINK, "maybe", "on or off"),
        (WORDS, "P2P;reboot", "not a word it takes"), (WORDS, "$(id)", "not a word it takes"), (WORDS, "", "nothing"),
        (WORDS, "TCP", "not a word it takes"),
    ],
)  # fmt: skip
def test_hostile_or_wrong_values_are_refused(gate, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        gate.parse(text)


def test_expected_says_what_a_measurement_must_be():
    assert SHARE.expected(0.5) == ">= 50% of peak" and FLOOR.expected(300.0) == ">= 300 GB/s"
    assert LINK.expected(True) == "required" and WORDS.expected(("P2P", "NVLS")) == "P2P or NVLS" and SHARE.expected(None) == "off"


def test_a_gate_is_declared_sanely():
    with pytest.raises(ValueError, match="kind"):
        Gate("x", "percent", 0.5, "?")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Gate("x", "share", 50.0, "?")
    with pytest.raises(ValueError, match="lower-case"):
        Gate("X-Y", "share", 0.5, "?")


def test_overrides_apply_in_order_after_no_gates_and_the_old_flags():
    got = settings(GATES)
    assert got.values == {"bf16_gemm_share": 0.5, "pcie_link": True, "transport": ("auto",), "busbw": None}
    got = settings(GATES, no_gates=True, aliases={"busbw": 300.0}, items=[parse_item("bf16_gemm_share=0.7", GATES)])
    assert got.values == {"bf16_gemm_share": 0.7, "pcie_link": None, "transport": None, "busbw": 300.0}
    assert got.off_reason("pcie_link") == "off (--no-gates)" and got.sources["bf16_gemm_share"] == "--gate bf16_gemm_share=0.7"
    got = settings(GATES, items=[parse_item("pcie_link=off", GATES), parse_item("pcie_link=on", GATES)])
    assert got["pcie_link"] is True  # the last word wins


def test_the_command_line_checks_each_gate_as_it_is_parsed(capsys):
    parser = argparse.ArgumentParser()
    add_gate_args(parser, GATES)
    args = parser.parse_args(["--no-gates", "--gate", "transport=P2P"])
    assert from_args(args, GATES).values == {"bf16_gemm_share": None, "pcie_link": None, "transport": ("P2P",), "busbw": None}
    for bad, message in (("hbm_share=0.5", "no gate 'hbm_share' here: the gates are bf16_gemm_share"), ("transport", "give NAME=VALUE")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--gate", bad])
        assert message in capsys.readouterr().err


def test_a_floor_names_the_worst_figure_and_every_one_under_it():
    report = Report()
    gates = settings(GATES)
    measured = [("GPU0 n=4096", 0.75), ("GPU0 n=8192", 0.36), ("GPU1 n=8192", 0.41), ("GPU1 n=16384", 0.7)]
    verdict = judge_floor(report, gates, "bf16_gemm_share", measured)
    assert (verdict.ok, verdict.measured, verdict.expected) == (False, "36% (GPU0 n=8192)", ">= 50% of peak")
    assert verdict.detail == "under it: GPU0 n=8192 36%, GPU1 n=8192 41%" and verdict.gate
    assert judge_floor(report, gates, "bf16_gemm_share", measured[:1]).ok is True
    # nothing it applies to: not judged, with why; a gate turned off: not judged, with how
    unknown = judge_floor(report, gates, "bf16_gemm_share", [], not_judged="NVIDIA H800 not in gpu_peaks.toml")
    assert (unknown.ok, unknown.status, unknown.detail) == (None, "not judged", "NVIDIA H800 not in gpu_peaks.toml")
    off = judge_floor(report, settings(GATES, no_gates=True), "bf16_gemm_share", measured)
    assert (off.ok, off.detail, off.measured) == (None, "off (--no-gates)", "36% (GPU0 n=8192)")
    floor = judge_floor(report, settings(GATES, aliases={"busbw": 300.0}), "busbw", [("1 GiB", 28.4)])
    assert (floor.ok, floor.measured, floor.expected) == (False, "28.4 GB/s", ">= 300 GB/s")


def test_a_switch_that_cannot_be_measured_fails_unless_it_is_off():
    report = Report()
    unknown = judge_switch(report, settings(GATES), "pcie_link", None, "", "nvidia-smi did not report GPU0's link")
    assert (unknown.ok, unknown.measured, unknown.detail) == (False, "unknown", "nvidia-smi did not report GPU0's link")
    assert judge_switch(report, settings(GATES, no_gates=True), "pcie_link", None, "").ok is None
    below = judge_switch(report, settings(GATES), "pcie_link", False, "GPU0 Gen4 x16 (max Gen5 x16)", "below its maximum")
    assert below.describe() == "pcie_link: GPU0 Gen4 x16 (max Gen5 x16), expected required (below its maximum)"
