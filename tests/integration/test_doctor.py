"""`invoke doctor` on the real machine: one line per check, each failing one with a fix, and
the exit code the checks call for (0 when none fails, 3 when one does), never either."""

import os
import resource
import stat

from mlsyskit.runtime.gpus import host_has_gpus
from tests.integration.conftest import run_kit


def statuses(stdout: str) -> dict[str, tuple[str, str]]:
    """{check: (status, detail)} from doctor's table (columns found from its header)."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("status"))
    head = lines[header]
    check_at, detail_at = head.index("check"), head.index("detail")
    rows = {}
    for line in lines[header + 2 :]:
        if line.strip():
            rows[line[check_at:detail_at].strip()] = (line[:check_at].strip(), line[detail_at:].strip())
    return rows


def test_doctor_on_this_machine_says_what_its_facts_call_for(engine):
    """Each check's status from facts the test reads itself; this machine (the CI runner) has
    an engine, compose, no GPU and a memlock limit it cannot raise: nothing fails, exit 0."""
    proc = run_kit("doctor")
    found = statuses(proc.stdout)
    assert found["docker daemon"][0] == "OK" and engine.server_version() in found["docker daemon"][1]
    assert "BuildKit" in found["docker daemon"][1]
    assert found["compose"][0] == "OK"
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    assert found["memlock limit"][0] == ("OK" if hard == resource.RLIM_INFINITY else "WARN")
    if not host_has_gpus():
        assert found["nvidia driver"] == ("SKIP", "no NVIDIA GPU on this machine: images run on CPU (gloo)")
    for status, detail in found.values():
        if status in ("FAIL", "WARN"):
            assert "->" in detail, f"a failing check must say its fix: {detail}"
    failing = [name for name, (status, _) in found.items() if status == "FAIL"]
    assert failing == [], proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_driver_too_old_for_the_frameworks_fails_doctor_with_exit_3(engine, tmp_path):
    """An nvidia-smi that answers for a driver offering CUDA 12.0 (the frameworks need 13.0):
    doctor fails that check, names the fix, and exits 3."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--query-gpu*) echo "not supported here" >&2; exit 9;; esac\n'
        'echo "| NVIDIA-SMI 525.60.13    Driver Version: 525.60.13    CUDA Version: 12.0 |"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = run_kit("doctor", env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    found = statuses(proc.stdout)
    assert found["nvidia driver"][0] == "OK" and "525.60.13" in found["nvidia driver"][1]
    too_old = [detail for status, detail in found.values() if status == "FAIL" and "12.0" in detail]
    assert too_old and all("->" in detail for detail in too_old), proc.stdout
    assert proc.returncode == 3, proc.stdout + proc.stderr


def test_doctor_without_daemon_fails_with_the_fix():
    proc = run_kit("doctor", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 3
    daemon = next(line for line in proc.stdout.splitlines() if "docker daemon" in line)
    assert daemon.startswith("FAIL") and "invoke doctor --fix" in daemon
