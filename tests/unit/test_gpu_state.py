"""`invoke doctor`'s passive GPU checks against recorded nvidia-smi output: the healthy H200
pair of 2026-11-30 (benchmarks/gpu/2026-11-30-h200x2-health/gpu_state.csv) and made-up rows
for each thing that can be wrong, each with its fix."""

from __future__ import annotations

from pathlib import Path

from mlsyskit.checks import gpu_state

REPO = Path(__file__).resolve().parents[2]
H200 = (REPO / "benchmarks" / "gpu" / "2026-11-30-h200x2-health" / "gpu_state.csv").read_text()
HEALTHY = "0, NVIDIA H200, 00000000:00:06.0, Enabled, Enabled, 0, 0, [N/A], No, No, 5, 5, 16, 16, 0x0000000000000001"


def row(**changes: str) -> dict[str, str]:
    gpu = gpu_state.parse(HEALTHY)[0]
    gpu.update({k.replace("__", "."): v for k, v in changes.items()})
    return gpu


def by_name(findings: list[gpu_state.Finding]) -> dict[str, gpu_state.Finding]:
    return {f.name.split(" ", 2)[-1]: f for f in findings}


def test_the_recorded_h200_pair_is_healthy():
    gpus = gpu_state.parse(H200)
    assert [g["index"] for g in gpus] == ["0", "1"] and gpus[0]["name"] == "NVIDIA H200"
    findings = [f for g in gpus for f in gpu_state.assess(g)]
    assert {f.status for f in findings} == {"ok"}, findings
    assert by_name(gpu_state.assess(gpus[0]))["PCIe"].detail == "Gen5 x16"


def test_uncorrected_ecc_errors_fail_with_the_fix():
    ecc = by_name(gpu_state.assess(row(ecc__errors__uncorrected__volatile__total="3")))["ECC"]
    assert ecc.status == "fail" and "3 uncorrected ECC error(s)" in ecc.detail and "nvidia-smi -q -d ECC" in ecc.fix
    off = by_name(gpu_state.assess(row(ecc__mode__current="Disabled")))["ECC"]
    assert off.status == "warn" and off.fix == "sudo nvidia-smi -e 1, then reboot"
    consumer = by_name(gpu_state.assess(row(ecc__mode__current="[N/A]", ecc__errors__uncorrected__volatile__total="[N/A]")))["ECC"]
    assert consumer.status == "ok" and "not reported" in consumer.detail


def test_pending_and_failed_memory_repairs():
    pending = by_name(gpu_state.assess(row(remapped_rows__pending="Yes")))["memory repair"]
    assert pending.status == "warn" and "row remap is pending" in pending.detail and "nvidia-smi -r" in pending.fix
    retired = by_name(gpu_state.assess(row(retired_pages__pending="Yes")))["memory repair"]
    assert retired.status == "warn" and "page retirement" in retired.detail
    failed = by_name(gpu_state.assess(row(remapped_rows__failure="Yes")))["memory repair"]
    assert failed.status == "fail" and failed.fix == "have the GPU replaced"


def test_pcie_width_below_max_warns_but_an_idle_generation_drop_does_not():
    narrow = by_name(gpu_state.assess(row(pcie__link__width__current="8")))["PCIe"]
    assert narrow.status == "warn" and "x8 of x16" in narrow.detail and "reseat" in narrow.fix
    idle = by_name(gpu_state.assess(row(pcie__link__gen__current="1")))["PCIe"]
    assert idle.status == "ok" and "Gen1 of Gen5 at idle" in idle.detail


def test_persistence_mode_off_warns():
    off = by_name(gpu_state.assess(row(persistence_mode="Disabled")))["persistence"]
    assert off.status == "warn" and off.fix == "sudo nvidia-smi -pm 1"


def test_clock_reasons():
    assert gpu_state.clock_reasons("0x0000000000000001") == ([], [])  # idle
    hot = by_name(gpu_state.assess(row(clocks_event_reasons__active="0x0000000000000048")))["clocks"]
    assert hot.status == "fail" and "hardware slowdown" in hot.detail and "hardware thermal slowdown" in hot.detail
    capped = by_name(gpu_state.assess(row(clocks_event_reasons__active="0x0000000000000004")))["clocks"]
    assert capped.status == "ok" and "software power cap" in capped.detail
    assert gpu_state.clock_reasons("[N/A]") == ([], [])


def test_old_drivers_get_the_old_clock_field_and_no_nvidia_smi_is_one_warning():
    asked = []

    def old_driver(cmd):
        asked.append(cmd[1])
        return None if "clocks_event_reasons" in cmd[1] else HEALTHY + "\n"

    findings = gpu_state.findings(old_driver)
    assert len(asked) == 2 and asked[1].endswith("clocks_throttle_reasons.active")
    assert {f.status for f in findings} == {"ok"} and len(findings) == 5
    (nothing,) = gpu_state.findings(lambda cmd: None)
    assert nothing.status == "warn" and "nvidia-smi -q" in nothing.fix
