"""`invoke shell` and `invoke ps` on the real engine, run the way users run them: the CLI
in a subprocess, as a non-root user in the docker group (created here when the suite runs
as root). No Docker call is mocked. Every container a test starts carries the test's own
workspace (or name), so "nothing left behind" is checked without racing other tests."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsyskit import LABEL_PREFIX, REPO_ROOT
from mlsyskit.engine import ContainerInfo, ContainerSpec, Engine
from mlsyskit.runtime.shell import LABEL_WORKSPACE, MEMLOCK
from tests.integration.conftest import KitUser, kit, scratch_kit_tree, shared_dir

IMAGE = "mlsyskit/distributed:pypi"


@pytest.fixture
def workspace(kit_user: KitUser) -> Iterator[Path]:
    path = shared_dir(kit_user, "mlsyskit-ws-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def image(build_topic) -> str:
    build_topic("distributed")
    return IMAGE


def containers_of(engine: Engine, workspace: Path) -> list[ContainerInfo]:
    """Kit containers, running or not, that were started on `workspace`."""
    return engine.containers(f"{LABEL_WORKSPACE}={workspace}")


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line: the last line on stderr, and the only one starting `error:`."""
    lines = proc.stderr.strip().splitlines()
    assert lines, f"no error output (rc {proc.returncode})"
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], proc.stderr
    return lines[-1]


# --- what users rely on ---------------------------------------------------------------


def test_files_written_in_the_workspace_belong_to_the_user(kit_user, workspace, image):
    proc = kit(kit_user, "shell", "distributed", "--", "sh", "-c", "touch made-inside && mkdir sub && id -u && id -g && echo $HOME", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(kit_user.uid), str(kit_user.gid), "/root" if kit_user.uid == 0 else "/home/kit"]
    for path in (workspace / "made-inside", workspace / "sub"):
        assert (path.stat().st_uid, path.stat().st_gid) == (kit_user.uid, kit_user.gid)


def test_home_and_its_cache_are_writable(kit_user, workspace, image):
    script = 'mkdir -p ~/.cache/torch ~/.triton && echo ok > ~/.cache/torch/x && cat ~/.cache/torch/x && echo "$USER"'
    proc = kit(kit_user, "shell", "distributed", "--", "sh", "-c", script, cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", kit_user.name]


@pytest.mark.parametrize(("command", "code"), [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 7"], 7)])
def test_exit_codes_propagate(kit_user, workspace, image, command, code):
    proc = kit(kit_user, "shell", "distributed", "--", *command, cwd=workspace)
    assert proc.returncode == code, proc.stderr


def test_hf_cache_and_env_are_visible_inside(kit_user, workspace, image):
    hf = kit_user.home / ".cache" / "huggingface"
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    hf.mkdir(parents=True, exist_ok=True)
    (hf / marker).write_text("from the host\n")
    for path in (hf.parent, hf, hf / marker):
        if kit_user.switch:
            os.chown(path, kit_user.uid, kit_user.gid)
    try:
        # HF's token as the file HF_TOKEN_PATH names (runtime/secrets.py), not a variable
        script = f'cat ~/.cache/huggingface/{marker}; cat "$HF_HOME/{marker}"; echo "$(cat "$HF_TOKEN_PATH")|${{HF_TOKEN:-none}}|$FOO|$WANDB_API_KEY"'
        proc = kit(
            kit_user,
            "shell", "distributed", "-e", "FOO=bar", "--", "sh", "-c", script,
            cwd=workspace,
            env={"HF_TOKEN": "hf_test_token", "WANDB_API_KEY": "wandb_test_key"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["from the host", "from the host", "hf_test_token|none|bar|wandb_test_key"]
    finally:
        (hf / marker).unlink()


def test_hf_cache_is_created_for_the_user_when_missing(kit_user, workspace, image):
    cache = shared_dir(kit_user, "mlsyskit-hfhome-")
    hf_home = cache / "hf"
    try:
        proc = kit(kit_user, "shell", "distributed", "--", "sh", "-c", "touch $HF_HOME/written", cwd=workspace, env={"HF_HOME": str(hf_home)})
        assert proc.returncode == 0, proc.stderr
        assert hf_home.stat().st_uid == kit_user.uid and (hf_home / "written").stat().st_uid == kit_user.uid
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_no_tty_errors_when_stdin_is_not_a_terminal(kit_user, workspace, image):
    proc = kit(kit_user, "shell", "distributed", "--", "sh", "-c", "test -t 0 && echo TTY || echo NOTTY", cwd=workspace)
    assert (proc.returncode, proc.stdout.strip()) == (0, "NOTTY"), proc.stderr
    assert "TTY" not in proc.stderr
    # With no command, the shell reads its script from a pipe (CI, `... | invoke shell`).
    piped = kit(kit_user, "shell", "distributed", cwd=workspace, input="echo from-a-pipe; exit 4\n")
    assert (piped.returncode, piped.stdout.strip()) == (4, "from-a-pipe"), piped.stderr
    assert "TTY" not in piped.stderr


def test_a_terminal_gets_a_tty(kit_user, workspace, image):
    check = ["shell", "distributed", "--", "sh", "-c", "test -t 0 && test -t 1 && echo TTY || echo NOTTY"]
    leader, follower = pty.openpty()
    try:
        # stdin a terminal but stdout captured: no TTY, so redirected output has no CRLF
        half = kit(kit_user, *check, cwd=workspace, stdin=follower)
        done = kit(kit_user, *check, cwd=workspace, stdin=follower, stdout=follower, stderr=subprocess.DEVNULL)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert (half.returncode, half.stdout.strip()) == (0, "NOTTY"), half.stderr
    assert done.returncode == 0 and b"TTY" in out and b"NOTTY" not in out, out


def test_shared_memory_and_limits(kit_user, workspace, image, engine):
    script = "df -k /dev/shm | tail -1 | awk '{print $2}'; ulimit -s; ulimit -l"
    proc = kit(kit_user, "shell", "distributed", "--", "sh", "-c", script, cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    shm_kb, stack_kb, memlock = proc.stdout.split()
    assert int(shm_kb) > 64 * 1024  # --ipc=host: the host's /dev/shm, not docker's 64 MB
    assert stack_kb == str(67108864 // 1024)
    assert (memlock == "unlimited") == engine.ulimit_allowed(image, MEMLOCK)
    sized = kit(kit_user, "shell", "distributed", "--shm-size", "256m", "--", "sh", "-c", script, cwd=workspace)
    assert sized.returncode == 0, sized.stderr
    assert sized.stdout.split()[0] == str(256 * 1024)


def test_memlock_fallback_is_detected_and_warned_once(kit_user, workspace, image, engine):
    cache = shared_dir(kit_user, "mlsyskit-xdg-")
    try:
        runs = [kit(kit_user, "shell", "distributed", "--", "true", cwd=workspace, env={"XDG_CACHE_HOME": str(cache)}) for _ in range(2)]
        assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
        warned = ["memlock" in r.stderr for r in runs]
        assert warned == ([False, False] if engine.ulimit_allowed(image, MEMLOCK) else [True, False])
        assert (cache / "mlsyskit" / "engine-facts.json").is_file()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_workspace_option_and_extra_mounts(kit_user, workspace, image):
    other = shared_dir(kit_user, "mlsyskit-data-")
    try:
        (other / "input.txt").write_text("data\n")
        (workspace / "code.py").write_text("print('hi')\n")
        proc = kit(
            kit_user,
            "shell", "distributed", "--workspace", str(workspace), "--mount", f"{other}:/data:ro", "--",
            "sh", "-c", "pwd; cat /data/input.txt; python code.py; touch /data/nope 2>/dev/null || echo read-only",
            cwd=other,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["/workspace", "data", "hi", "read-only"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_named_container_is_reentered_with_its_state(kit_user, workspace, image, engine):
    name = f"mlsyskit-test-{uuid.uuid4().hex[:8]}"
    try:
        first = kit(kit_user, "shell", "distributed", "--name", name, "--", "sh", "-c", "echo kept > /tmp/state; hostname", cwd=workspace)
        assert (first.returncode, first.stdout.strip()) == (0, name), first.stderr
        created = engine.container_info(name)
        assert created and created.running
        again = kit(kit_user, "shell", "--name", name, "--", "sh", "-c", "cat /tmp/state; pwd; exit 3", cwd=workspace)
        assert (again.returncode, again.stdout.split()) == (3, ["kept", "/workspace"]), again.stderr
        assert engine.container_info(name).id == created.id
        listed = kit(kit_user, "ps", cwd=workspace)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith(name))
        assert row.split()[1:4] == ["distributed", "named", "running"] and str(workspace) in row
        # stopped (a reboot, `docker stop`): re-entering starts it again, /tmp and all
        engine.stop_container(name, timeout=1)
        revived = kit(kit_user, "shell", "--name", name, "--", "cat", "/tmp/state", cwd=workspace)
        assert (revived.returncode, revived.stdout.strip()) == (0, "kept"), revived.stderr
        # creation options on re-entry are named in one warning, not silently dropped
        warned = kit(kit_user, "shell", "--name", name, "--gpus", "none", "--", "true", cwd=workspace)
        assert warned.returncode == 0 and "--gpus" in warned.stderr
        wrong = kit(kit_user, "shell", "no-such-topic", "--name", name, "--", "true", cwd=workspace)
        assert wrong.returncode == 2
    finally:
        engine.remove_containers([name])


def test_one_off_containers_are_labelled_and_removed(kit_user, workspace, image, engine):
    proc = kit(kit_user, "shell", "distributed", "--", "sh", "-c", "echo running", cwd=workspace)
    assert proc.returncode == 0
    assert containers_of(engine, workspace) == []


def test_ps_without_containers_says_how_to_start_one(kit_user, workspace, engine):
    proc = kit(kit_user, "ps", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert "name" in proc.stdout or "no kit containers" in proc.stdout


# --- a missing image is built first -----------------------------------------------------


def tiny_tree(user: KitUser, topic: str, apt_packages: list[str]) -> Path:
    """A kit tree (MLSYSKIT_ROOT) with the real images/ and one small topic on the bare base:
    building it reuses the base layer and adds a topic layer in seconds."""
    packages = ", ".join(f'"{p}"' for p in apt_packages)
    return scratch_kit_tree(user, topic, f'description = "invoke shell test topic"\nframework = ""\napt_packages = [{packages}]\n')


def remove_topic_images(engine: Engine, topic: str) -> None:
    refs = [ref for image in engine.images(f"{LABEL_PREFIX}.topic={topic}") for ref in image.tags]
    engine.remove_images([*refs, f"mlsyskit/{topic}:pypi"])


def test_a_missing_image_is_built_first_with_progress(kit_user, workspace, engine, build_topic):
    build_topic("distributed")  # the base layer this topic reuses
    topic = f"shelltest-{uuid.uuid4().hex[:6]}"
    root = tiny_tree(kit_user, topic, [])
    try:
        proc = kit(kit_user, "shell", topic, "--", "sh", "-c", "echo built-and-ran", cwd=workspace, env={"MLSYSKIT_ROOT": str(root)})
        assert (proc.returncode, proc.stdout.strip()) == (0, "built-and-ran"), proc.stderr
        assert f"mlsyskit/{topic}:pypi is not built yet" in proc.stderr
        assert "base pypi: reusing" in proc.stderr and f"topic {topic}: building" in proc.stderr
    finally:
        remove_topic_images(engine, topic)
        shutil.rmtree(root, ignore_errors=True)


# --- errors: one line, non-zero exit, nothing left running --------------------------------


def test_unknown_topic_lists_the_known_ones(kit_user, workspace, engine):
    proc = kit(kit_user, "shell", "no-such-topic", "--", "true", cwd=workspace)
    line = error_line(proc)
    assert proc.returncode == 2
    assert line.startswith("error: unknown topic 'no-such-topic'") and "distributed" in line
    assert containers_of(engine, workspace) == []


def test_daemon_not_reachable_says_how_to_start_it(kit_user, workspace):
    proc = kit(kit_user, "shell", "distributed", "--gpus", "none", "--", "true", cwd=workspace, env={"DOCKER_HOST": "unix:///tmp/mlsyskit-no-daemon.sock"})
    line = error_line(proc)
    assert proc.returncode == 3
    assert "Docker daemon is not reachable" in line and "invoke doctor --fix" in line


def test_a_user_outside_the_docker_group_is_told_how_to_join(kit_user, workspace):
    if not kit_user.switch:  # a non-root suite cannot drop its own groups; not a missing part
        pytest.skip("needs root to start the CLI without the docker group")
    outsider = KitUser(**{**kit_user.__dict__, "groups": ()})
    proc = kit(outsider, "shell", "distributed", "--gpus", "none", "--", "true", cwd=workspace)
    line = error_line(proc)
    assert proc.returncode == 3 and "no permission to use the Docker daemon" in line and "usermod -aG docker" in line


def test_a_failing_build_shows_the_failing_step(kit_user, workspace, engine, build_topic):
    build_topic("distributed")
    topic = f"shellbroken-{uuid.uuid4().hex[:6]}"
    root = tiny_tree(kit_user, topic, ["mlsyskit-no-such-package"])
    try:
        proc = kit(kit_user, "shell", topic, "--", "true", cwd=workspace, env={"MLSYSKIT_ROOT": str(root)})
        line = error_line(proc)
        assert proc.returncode == 4
        assert line.startswith(f"error: building mlsyskit/topic-{topic}:") and "failed" in line
        assert "Unable to locate package mlsyskit-no-such-package" in proc.stderr  # the failing step's lines
        assert containers_of(engine, workspace) == []
        assert engine.image(f"mlsyskit/{topic}:pypi") is None
    finally:
        remove_topic_images(engine, topic)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    ("gpus", "message"),
    [("999,", "GPU 999 does not exist"), ("0,999", "does not exist"), ("999", "`--gpus 999` asks for more GPUs than there are")],
)
def test_gpu_requests_the_host_cannot_meet(kit_user, workspace, engine, image, gpus, message):
    proc = kit(kit_user, "shell", "distributed", "--gpus", gpus, "--", "true", cwd=workspace)
    line = error_line(proc)
    assert proc.returncode == 2 and message in line
    assert containers_of(engine, workspace) == []


def test_a_missing_mount_source_is_refused(kit_user, workspace, engine, image):
    proc = kit(kit_user, "shell", "distributed", "--mount", "/nonexistent/mlsyskit:/data", "--", "true", cwd=workspace)
    assert proc.returncode == 2 and "does not exist" in error_line(proc)
    assert not Path("/nonexistent/mlsyskit").exists()


@pytest.mark.parametrize("named", [True, False], ids=["named", "one-off"])
def test_a_taken_port_is_one_line_and_leaves_no_container(kit_user, workspace, engine, image, named):
    """Another container holds the port: exit 3 and one line (not docker's 125 and its
    paragraph), and no container is left, not even one in state `Created`."""
    name = f"mlsyskit-test-{uuid.uuid4().hex[:8]}"
    blocker = ContainerSpec(image=image, command=("sleep", "60"), ports=("0:80",))
    with engine.container(blocker) as holder:
        port = engine.published_port(holder.name, "80/tcp")
        args = ["shell", "distributed", *(["--name", name] if named else []), "-p", f"{port}:80", "--", "true"]
        proc = kit(kit_user, *args, cwd=workspace)
        line = error_line(proc)
        assert (
            proc.returncode == 3
            and line == f"error: port {port}/tcp is already in use on this host (fix: pick another (-p {port + 1}:...) or stop what holds it)"
        )
        assert proc.stderr.strip() == line
        assert engine.container_info(name) is None and containers_of(engine, workspace) == []


def test_kit_shell_is_invoke_shell_without_invoke(engine, image, tmp_path):
    """`./kit shell` (the fast entry, no invoke start-up): the same container on the caller's
    folder, the same exit code, the same one-line errors. Run by the suite's own user: the
    kit's environment is theirs (the test user of the tests above cannot read it)."""
    workspace = tmp_path / "work"
    workspace.mkdir()
    (workspace / "hello.txt").write_text("from the host\n")
    # The caller's folder is the container's, not the kit's: Python files in it that shadow
    # the standard library are never imported by the kit's own process (python -I).
    for module in ("json", "typing", "subprocess", "argparse"):
        (workspace / f"{module}.py").write_text(f'raise SystemExit("the kit imported the workspace\'s {module}.py")\n')
    assert (REPO_ROOT / ".venv" / ".kit-synced").stat().st_mtime > (REPO_ROOT / "uv.lock").stat().st_mtime, "./kit shell would not take its fast path"

    def fast(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO_ROOT / "kit"), "shell", *args], cwd=workspace, capture_output=True, text=True, timeout=600,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": "/from/the/caller"},
        )  # fmt: skip

    proc = fast("distributed", "--gpus", "none", "-e", "PYTHONPATH", "--", "sh", "-c", "cat hello.txt; pwd; echo $PYTHONPATH; exit 7")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.split() == ["from", "the", "host", "/workspace", "/from/the/caller"]
    bad = fast("no-such-topic")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown topic 'no-such-topic'")
    assert containers_of(engine, workspace) == []
