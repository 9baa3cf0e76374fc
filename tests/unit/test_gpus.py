"""GPU selection against recorded `nvidia-smi --query-gpu` outputs (tests/unit/data/):
h100x4_* were recorded on a 4 x H100 machine (record_nvidia_smi.sh says how), idle and with
GPU 0 holding 29 GB while idle, GPU 2 busy with little memory and GPU 3 busy and holding
memory; 8gpu_shared is written by hand: a shared box with [N/A] readings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mlsyskit.errors import UsageError
from mlsyskit.runtime import gpus
from mlsyskit.runtime.gpus import GpuRequest, least_used, parse_query, parse_request, select

DATA = Path(__file__).parent / "data"


def recorded(name: str) -> list[gpus.Gpu]:
    return parse_query((DATA / f"nvidia_smi_{name}.csv").read_text())


def never() -> list[gpus.Gpu]:
    raise AssertionError("nvidia-smi must not be asked for this request")


def test_parses_a_recorded_h100_answer():
    found = recorded("h100x4_loaded")
    assert [g.index for g in found] == [0, 1, 2, 3]
    assert found[0].uuid == "GPU-b9a9f497-0844-5028-008b-beb7496f13c2"
    assert (found[0].memory_used_mib, found[0].memory_total_mib, found[0].utilization_pct) == (29141, 81559, 0)
    assert found[3].utilization_pct == 100 and found[3].name == "NVIDIA H100 80GB HBM3"


def test_not_available_readings_count_as_zero():
    gpu5 = recorded("8gpu_shared")[5]
    assert (gpu5.memory_used_mib, gpu5.utilization_pct) == (0, 0)


def test_rejects_an_answer_in_another_format():
    with pytest.raises(ValueError):
        parse_query("index, uuid\n0, GPU-1\n")


@pytest.mark.parametrize(
    ("fixture", "count", "chosen"),
    [
        ("h100x4_idle", 2, [0, 1]),  # all equal: the lowest indices, every time
        ("h100x4_idle", 4, [0, 1, 2, 3]),
        ("h100x4_loaded", 1, [1]),  # the one nobody uses
        # GPU 0 holds a third of its memory but computes nothing; 2 and 3 are at 100%
        ("h100x4_loaded", 2, [0, 1]),
        ("h100x4_loaded", 3, [0, 1, 2]),  # 2 is busy but nearly empty; 3 is busy and holds 10 GB
        ("8gpu_shared", 3, [3, 5, 6]),  # 5 reads [N/A] (as 0); 4 is 45% busy; 1 holds 512 MiB
        ("8gpu_shared", 4, [1, 3, 5, 6]),
        ("8gpu_shared", 6, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_least_used_gpus(fixture, count, chosen):
    assert [g.index for g in least_used(recorded(fixture), count)] == chosen


def test_count_selection_gives_docker_a_device_list():
    selection = select(GpuRequest("count", count=2), lambda: recorded("h100x4_loaded"), host_has_gpus=True)
    assert selection.docker_value == '"device=0,1"' and selection.label == "0,1" and not selection.warning


def test_count_larger_than_the_gpu_count_is_refused():
    with pytest.raises(UsageError, match=r"`--gpus 5` asks for more GPUs than there are \(this host has 4: 0, 1, 2, 3\)"):
        select(GpuRequest("count", count=5), lambda: recorded("h100x4_idle"), host_has_gpus=True)


def test_count_on_a_host_without_gpus_is_refused():
    with pytest.raises(UsageError, match="this host has no NVIDIA GPU"):
        select(GpuRequest("count", count=1), list, host_has_gpus=False)


def test_devices_by_index_and_uuid_keep_the_order_given():
    request = parse_request("3,GPU-7260051a-22f5-7ddb-e2f6-318ebb5c8fbe,3")
    selection = select(request, lambda: recorded("h100x4_idle"), host_has_gpus=True)
    assert selection.docker_value == '"device=3,1"'


def test_a_device_that_does_not_exist_is_refused():
    with pytest.raises(UsageError, match=r"GPU 4 does not exist \(this host has 4: 0, 1, 2, 3\)"):
        select(parse_request("0,4"), lambda: recorded("h100x4_idle"), host_has_gpus=True)
    with pytest.raises(UsageError, match="GPU 0 does not exist"):
        select(parse_request("0,"), list, host_has_gpus=False)


def test_default_and_all_need_no_nvidia_smi():
    assert select(GpuRequest("default"), never, host_has_gpus=True).docker_value == "all"
    assert select(GpuRequest("all"), never, host_has_gpus=True).docker_value == "all"
    assert select(GpuRequest("none"), never, host_has_gpus=True).docker_value is None


def test_no_gpu_host_runs_anyway_with_one_warning_line():
    selection = select(GpuRequest("default"), never, host_has_gpus=False)
    assert selection.docker_value is None and selection.label == "none"
    assert selection.warning and "\n" not in selection.warning and "--gpus none" in selection.warning
    assert not select(GpuRequest("none"), never, host_has_gpus=False).warning


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        (None, GpuRequest("default")),
        ("", GpuRequest("default")),
        ("all", GpuRequest("all")),
        ("none", GpuRequest("none")),
        ("2", GpuRequest("count", count=2)),
        ("0,1", GpuRequest("devices", devices=("0", "1"))),
        ("3,", GpuRequest("devices", devices=("3",))),
        ("device=2,3", GpuRequest("devices", devices=("2", "3"))),
        ("GPU-abc-123", GpuRequest("devices", devices=("GPU-abc-123",))),
    ],
)
def test_request_syntax(text, request_):
    assert parse_request(text) == request_


@pytest.mark.parametrize("text", ["0", "-1", "a,b", "1.5", ",", "gpu0"])
def test_bad_requests_are_one_line_errors(text):
    with pytest.raises(UsageError) as err:
        parse_request(text)
    assert "\n" not in str(err.value)


def fake_smi(tmp_path: Path, monkeypatch, body: str, code: int = 0) -> None:
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{body}EOF\nexit {code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_query_runs_nvidia_smi(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, (DATA / "nvidia_smi_h100x4_loaded.csv").read_text())
    assert [g.memory_used_mib for g in gpus.query_gpus()] == [29141, 4, 1141, 10679]


def test_query_reads_no_devices_as_none(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, (DATA / "nvidia_smi_no_devices.txt").read_text(), code=6)
    assert gpus.query_gpus() == []


def test_a_failing_nvidia_smi_is_one_line(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "Failed to initialize NVML: Driver/library version mismatch\n", code=18)
    with pytest.raises(UsageError, match="nvidia-smi failed: Failed to initialize NVML"):
        gpus.query_gpus()


def test_proc_count(tmp_path):
    (tmp_path / "0000:00:06.0").mkdir()
    (tmp_path / "0000:00:07.0").mkdir()
    assert gpus.proc_gpu_count(str(tmp_path)) == 2
    assert gpus.proc_gpu_count(str(tmp_path / "missing")) is None


def test_a_host_with_gpu_device_nodes_has_gpus_even_when_nvidia_smi_fails(tmp_path, monkeypatch):
    """nvidia-smi failing and no /proc/driver/nvidia entry: /dev/nvidia0 still says GPUs are
    here (with a broken driver), so `invoke smoke` asks for them and GPU tests fail, not skip."""
    dev, proc = tmp_path / "dev", tmp_path / "proc-gpus"
    dev.mkdir()
    fake_smi(tmp_path, monkeypatch, "Failed to initialize NVML: Driver/library version mismatch\n", code=18)
    (dev / "nvidiactl").touch()
    (dev / "nvidia-uvm").touch()
    assert gpus.gpu_device_nodes(str(dev)) == [] and not gpus.host_has_gpus(str(dev), str(proc))
    (dev / "nvidia0").touch()
    (dev / "nvidia1").touch()
    assert gpus.gpu_device_nodes(str(dev)) == ["nvidia0", "nvidia1"] and gpus.host_has_gpus(str(dev), str(proc))


def test_doctor_fails_a_failing_nvidia_smi_where_gpu_devices_are(tmp_path, monkeypatch):
    import subprocess

    from mlsyskit.checks import doctor

    dev, proc = tmp_path / "dev", tmp_path / "proc-gpus"
    dev.mkdir()
    failed = subprocess.CompletedProcess(["nvidia-smi"], 18, "", "Failed to initialize NVML: Driver/library version mismatch\n")
    nothing = doctor.check_failing_nvidia_smi(failed, str(dev), str(proc))
    assert (nothing.status, nothing.detail) == ("skip", "no NVIDIA GPU on this machine: images run on CPU (gloo)")
    (dev / "nvidia0").touch()
    broken = doctor.check_failing_nvidia_smi(failed, str(dev), str(proc))
    assert broken.status == "fail" and broken.name == "nvidia driver"
    assert broken.detail.startswith("/dev/nvidia0 present, but nvidia-smi exited with 18: Failed to initialize NVML: Driver/library version mismatch")
    assert "`nvidia-smi`" in broken.fix
    (dev / "nvidia0").unlink()
    (proc / "0000:00:06.0").mkdir(parents=True)  # the driver lists a GPU, nvidia-smi does not answer
    assert doctor.check_failing_nvidia_smi(None, str(dev), str(proc)).status == "fail"
