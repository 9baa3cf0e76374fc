"""Bad input through the real CLI: one clear line, a non-zero exit, nothing half-built."""

import shutil

from tests.integration.conftest import run_kit


def last_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_unknown_topic(engine):
    proc = run_kit("build", "nosuch")
    assert proc.returncode == 2
    assert last_line(proc).startswith("error: unknown topic 'nosuch'") and "distributed" in last_line(proc)


def test_daemon_not_running_says_how_to_start_it():
    proc = run_kit("images", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 3
    assert "Docker daemon is not reachable" in last_line(proc) and "invoke doctor --fix" in last_line(proc)


def test_malformed_topic_file_names_file_and_field(kit_tree):
    toml = kit_tree / "envs/distributed/topic.toml"
    toml.write_text(toml.read_text().replace("recommended = 2", "recommended = -2"))
    proc = run_kit("build", "distributed", env={"MLSYSKIT_ROOT": str(kit_tree)})
    assert proc.returncode == 2
    assert "envs/distributed/topic.toml: field 'gpus.recommended' must be a whole number" in last_line(proc)


def test_stale_lock_fails_the_check(kit_tree):
    pyproject = kit_tree / "envs/distributed/pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"psutil",', '"psutil",\n    "tabulate",'))
    proc = run_kit("lock", "--check", env={"MLSYSKIT_ROOT": str(kit_tree)})
    assert proc.returncode == 5
    assert "stale" in last_line(proc) and "envs/distributed" in last_line(proc)


def test_real_locks_are_fresh():
    proc = run_kit("lock", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_failed_build_leaves_no_image_and_shows_the_failing_step(engine, kit_tree):
    # Break the first step of the base layer: the failure comes quickly.
    dockerfile = kit_tree / "images/base.Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(" && apt-get $APT_OPTS update \\", " && echo 'broken on purpose' && false \\"))
    before = {i.id for i in engine.images("org.mlsyskit.kind")}
    proc = run_kit("build", "distributed", env={"MLSYSKIT_ROOT": str(kit_tree)})
    assert proc.returncode == 4
    assert last_line(proc).startswith("error: building mlsyskit/base-pypi:")
    assert "broken on purpose" in proc.stderr  # the failing step's log tail
    assert {i.id for i in engine.images("org.mlsyskit.kind")} == before


def test_workflow_passes_actionlint():
    from mlsyskit import REPO_ROOT

    actionlint = shutil.which("actionlint")
    assert actionlint, "actionlint comes with the dev dependencies"
    import subprocess

    proc = subprocess.run([actionlint, "-no-color"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
