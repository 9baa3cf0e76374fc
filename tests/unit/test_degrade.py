"""benchmarks/gpu/degrade.py, the GPU demonstration of issue 22, on a CPU: the real script with
stand-ins for gpu_health (it fails a gate while the load runs or the clocks are locked), the
load process and nvidia-smi. What runs for real: the order of the runs, starting and stopping
the load (its whole process group), locking and always resetting the clocks, the verdict, the
summary and the exit code."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "degrade.py"

# gpu_health as it answers: a pass, or a failed gate named in the reason (while STATE/load or
# STATE/locked exists); MODE=pass-anyway ignores the load, MODE=fail-healthy fails at once,
# MODE=hang sleeps (to be interrupted), MODE=no-gate fails without naming a gate.
FAKE_SMOKE = r"""
import json, os, sys, time
from pathlib import Path
state, mode = Path(os.environ["STATE"]), os.environ.get("MODE", "")
out = sys.argv[sys.argv.index("--json") + 1]
degraded = (state / "load").exists() or (state / "locked").exists()
if mode == "hang" and degraded:
    time.sleep(120)
verdicts = [{"name": "GEMM products", "gate": False, "status": "passed", "measured": "error 1.7e-03", "expected": "<= 0.02", "detail": ""}]
if (degraded and mode != "pass-anyway") or mode == "fail-healthy":
    verdicts.append({"name": "bf16_gemm_share", "gate": True, "status": "failed", "measured": "36% (GPU0 bf16 n=8192)",
                     "expected": ">= 50% of peak", "detail": "under it: GPU0 bf16 n=8192 36%"})
    reason = "under its gate: bf16_gemm_share: 36% (GPU0 bf16 n=8192), expected >= 50% of peak"
    if mode == "no-gate":
        verdicts.pop()
        reason = "RuntimeError: CUDA error: an illegal memory access was encountered"
    status, code = "failed", 1
else:
    verdicts.append({"name": "bf16_gemm_share", "gate": True, "status": "passed", "measured": "71% (GPU0 bf16 n=8192)",
                     "expected": ">= 50% of peak", "detail": ""})
    status, code, reason = "passed", 0, ""
result = {"test": "gpu_health", "status": status, "reason": reason, "seconds": 1.0, "figures": {},
          "environment": {"image_id": os.environ.get("KIT_IMAGE_ID")}, "verdicts": verdicts}
Path(out).write_text(json.dumps(result))
sys.exit(code)
"""

# The load: marks the GPU busy until SIGTERM, as degrade.py's own --load does with GEMMs.
FAKE_LOAD = r"""
import json, os, signal, sys, time
from pathlib import Path
state, ready, stats = Path(os.environ["STATE"]), Path(sys.argv[1]), Path(sys.argv[2])
if os.environ.get("MODE") == "load-dies":
    print("ImportError: libcudart.so.13: cannot open shared object file", flush=True)
    sys.exit(3)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
(state / "load").touch()
(state / f"pid.{os.getpid()}").touch()
ready.write_text(json.dumps({"pid": os.getpid(), "tflops_alone": 771.0, "size": 8192}))
count = 0
while not stop:
    time.sleep(0.01)
    count += 1
(state / "load").unlink(missing_ok=True)
stats.write_text(json.dumps({"pid": os.getpid(), "gemms_while_busy": count}))
"""

FAKE_SMI = """#!/bin/sh
echo "$*" >> "$STATE/smi.log"
case "$1" in
  -lgc) [ "${LGC_RC:-0}" = 0 ] || { echo "Setting locked GPU clocks is not supported for GPU 00000000:00:07.0." >&2; exit "$LGC_RC"; }
        touch "$STATE/locked"; echo "GPU clocks set to \\"(gpc: $2)\\"";;
  -rgc) rm -f "$STATE/locked"; echo "All done.";;
  *) echo "NVIDIA H100 80GB HBM3, 580.159.04, 00000000:00:07.0, 1980 MHz, 700.00 W";;
esac
"""


@pytest.fixture
def rig(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    for name, text in (("smoke.py", FAKE_SMOKE), ("load.py", FAKE_LOAD), ("nvidia-smi", FAKE_SMI)):
        (tmp_path / name).write_text(text)
    smi = tmp_path / "nvidia-smi"
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def degrade(rig: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True):
    cmd = [
        sys.executable, str(SCRIPT), str(rig / "out"), "--smoke-cmd", f"{sys.executable} {rig / 'smoke.py'}",
        "--load-cmd", f"{sys.executable} {rig / 'load.py'} {{ready}} {{stats}}", "--nvidia-smi", str(rig / "nvidia-smi"), *args,
    ]  # fmt: skip
    full_env = {**os.environ, "STATE": str(rig / "state"), "KIT_IMAGE_ID": "sha256:9f4ddc5a2db2", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=120)


def summary(rig: Path) -> dict:
    return json.loads((rig / "out" / "summary.json").read_text())


def no_load_left(rig: Path) -> bool:
    pids = [int(p.name.split(".")[1]) for p in (rig / "state").glob("pid.*")]
    assert pids, "the load never started"
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_healthy_passes_loaded_fails_on_a_gate_and_nothing_is_left(rig):
    proc = degrade(rig)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = summary(rig)
    assert got["demonstration"] == "held" and got["problems"] == [] and got["image_id"] == "sha256:9f4ddc5a2db2"
    healthy, loaded = got["runs"]["healthy"], got["runs"]["loaded"]
    assert (healthy["status"], healthy["exit"], healthy["gates_failed"]) == ("passed", 0, [])
    assert (loaded["status"], loaded["exit"], loaded["gates_failed"]) == ("failed", 1, ["bf16_gemm_share"])
    assert loaded["gates"][0] == {"name": "bf16_gemm_share", "status": "failed", "measured": "36% (GPU0 bf16 n=8192)", "expected": ">= 50% of peak",
                                  "detail": "under it: GPU0 bf16 n=8192 36%"}  # fmt: skip
    assert loaded["image_id"] == "sha256:9f4ddc5a2db2"
    # the load ran through the whole run and was stopped after it
    assert loaded["load"]["alive_at_the_end"] and loaded["load"]["stats"][0]["gemms_while_busy"] > 0
    assert got["runs"]["capped"]["skipped"].startswith("not asked for")
    assert no_load_left(rig) and not (rig / "state" / "load").exists()
    assert sorted(p.name for p in (rig / "out").iterdir()) == ["healthy.json", "loaded.json", "summary.json"]
    assert "loaded   1     failed   bf16_gemm_share 36% (GPU0 bf16 n=8192) (>= 50% of peak)" in proc.stdout
    assert "demonstration held" in proc.stdout


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("pass-anyway", "loaded did not fail: passed (exit 0): the default gates let a degraded GPU pass"),
        ("fail-healthy", "healthy did not pass: failed (exit 1)"),
        ("no-gate", "loaded failed, but not on a gate: RuntimeError: CUDA error"),
        ("load-dies", "loaded did not run: the load did not start: load process 0 exited with 3 before it was ready: ImportError: libcudart"),
    ],
)
def test_the_demonstration_fails_when_any_part_of_it_does(rig, mode, problem):
    proc = degrade(rig, env={"MODE": mode})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = summary(rig)
    assert got["demonstration"] == "did not hold"
    assert any(p.startswith(problem) for p in got["problems"]), got["problems"]


def test_a_refused_clock_cap_is_reported_and_the_rest_still_counts(rig):
    proc = degrade(rig, "--clock-cap", "990", env={"LGC_RC": "4"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    capped = summary(rig)["runs"]["capped"]
    assert capped["skipped"].startswith("nvidia-smi -lgc 990,990 refused (exit 4): Setting locked GPU clocks is not supported")
    assert "-rgc" not in (rig / "state" / "smi.log").read_text()  # nothing was locked, nothing to reset


def test_locked_clocks_fail_a_gate_and_are_reset(rig):
    proc = degrade(rig, "--clock-cap", "990")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    capped = summary(rig)["runs"]["capped"]
    assert (capped["status"], capped["gates_failed"]) == ("failed", ["bf16_gemm_share"])
    calls = [line.split()[0] for line in (rig / "state" / "smi.log").read_text().splitlines()]
    assert calls.count("-lgc") == 1 and calls.count("-rgc") == 1 and calls.index("-rgc") > calls.index("-lgc")
    assert not (rig / "state" / "locked").exists()


def test_sigterm_stops_the_load_and_resets_the_clocks(rig):
    proc = degrade(rig, "--clock-cap", "990", env={"MODE": "hang"}, wait=False)
    deadline = time.monotonic() + 60
    while not (rig / "state" / "load").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # inside the loaded run now (the stand-in hangs while the load runs)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, out
    got = summary(rig)
    assert got["interrupted"] and got["demonstration"] == "did not hold"
    assert no_load_left(rig) and not (rig / "state" / "locked").exists()
    assert "-lgc" not in (rig / "state" / "smi.log").read_text()  # interrupted before the capped run


@pytest.mark.parametrize(
    ("args", "message"), [((), "give the folder"), (("x", "--load-procs", "0"), "at least 1"), (("x", "--clock-cap", "99999"), "an SM clock in MHz")]
)
def test_bad_arguments_exit_2(args, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_it_runs_on_debian_python_without_the_kits_packages(rig):
    """The image's Python has none of the kit's packages: the script is standard library only."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    proc = subprocess.run([python, "-I", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--clock-cap" in proc.stdout
