"""`invoke doctor` on the real machine: one line per check, each failing one with a fix."""

from tests.integration.conftest import run_kit


def test_doctor_reports_engine_compose_and_disk(engine):
    proc = run_kit("doctor")
    daemon = next(line for line in proc.stdout.splitlines() if "docker daemon" in line)
    assert daemon.startswith("OK") and engine.server_version() in daemon and "BuildKit" in daemon
    compose = next(line for line in proc.stdout.splitlines() if " compose " in f" {line} ")
    assert compose.startswith("OK")
    for line in proc.stdout.splitlines():
        if line.startswith(("FAIL", "WARN")):
            assert "->" in line, f"a failing check must say its fix: {line}"
    assert proc.returncode == (3 if "FAIL" in proc.stdout else 0)


def test_doctor_without_daemon_fails_with_the_fix():
    proc = run_kit("doctor", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 3
    daemon = next(line for line in proc.stdout.splitlines() if "docker daemon" in line)
    assert daemon.startswith("FAIL") and "invoke doctor --fix" in daemon
