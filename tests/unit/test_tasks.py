"""tasks.py's argument handling with invoke's MockContext: no engine is touched."""

import pytest
from invoke import Exit, MockContext

import tasks
from mlsyskit.checks.doctor import parse_nvidia_smi
from mlsyskit.commands import split_names
from mlsyskit.engine import Client


def test_unknown_topic_is_one_line_with_known_topics_and_exit_2():
    with pytest.raises(Exit) as err:
        tasks.build(MockContext(), "no-such-topic")
    assert err.value.code == 2
    message = str(err.value.message)
    assert message.startswith("error: unknown topic 'no-such-topic'") and "distributed" in message
    assert "\n" not in message


def test_unknown_base_fails_before_any_engine_call():
    with pytest.raises(Exit) as err:
        tasks.build(MockContext(), "distributed", base="conda")
    assert err.value.code == 2 and "unknown base 'conda'" in err.value.message


@pytest.mark.parametrize(("text", "names"), [("", []), ("all", []), ("a,b", ["a", "b"]), ("a, b", ["a", "b"])])
def test_topic_lists(text, names):
    assert split_names(text) == names


def test_buildkit_capability_by_client():
    assert Client("/usr/bin/docker", "20.10.24+dfsg1", buildx=False).buildkit
    assert not Client("/usr/local/bin/docker", "28.2.2", buildx=False).buildkit
    assert Client("/usr/local/bin/docker", "28.2.2", buildx=True).buildkit


def test_nvidia_smi_header():
    header = "| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: 13.0  |"
    assert parse_nvidia_smi(header) == ("580.95.05", "13.0")


def test_export_takes_the_readmes_short_output_flag(tmp_path):
    """README: `invoke export k8s STACK [-o DIR]` (invoke's own short flags are off there)."""
    import subprocess
    import sys

    from mlsyskit import REPO_ROOT

    out = tmp_path / "manifests"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "export", "k8s", "nccl-2node", "-o", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "nccl-2node.yaml").is_file() and f"wrote {out / 'nccl-2node.yaml'}" in proc.stdout
    helptext = subprocess.run([sys.executable, "-m", "invoke", "--help", "export"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "-o STRING, --output=STRING" in helptext.stdout
    assert "--host-ipc" in helptext.stdout and "-h, --host-ipc" not in helptext.stdout


def test_the_driver_is_judged_against_each_images_cuda():
    from mlsyskit.checks.doctor import judge_driver, load_cuda_drivers, required_cuda
    from mlsyskit.data.catalog import load_catalog

    table = load_cuda_drivers(load_catalog())
    assert required_cuda({"NVIDIA_REQUIRE_CUDA": "cuda>=13.0"}) == "13.0" and required_cuda({}) == ""
    assert judge_driver("580.159.04", "13.0", "13.0", table)[0] == "ok"  # the H100/H200 machines
    status, detail, fix = judge_driver("550.54.15", "12.4", "13.0", table)
    assert status == "warn" and "forward compatibility" in detail and "cuda-compat" in fix and "580.65.06" in fix
    status, detail, fix = judge_driver("470.256.02", "11.4", "13.0", table)
    assert status == "fail" and "too old" in detail and fix == "upgrade the NVIDIA driver to >= 580.65.06"
    # every framework's CUDA has a row: a new framework cannot go unjudged
    assert {framework.cuda for framework in load_catalog().frameworks.values()} <= set(table)
