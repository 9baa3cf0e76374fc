"""`invoke devcontainer` opened by the real Dev Containers CLI (@devcontainers/cli, pinned in
.ci/devcontainer-cli/package-lock.json and installed there by .ci/run) on the real engine, the
way an editor opens it: as a non-root user in the docker group who owns the workspace (the
shell tests' user, created when the suite runs as root). For `distributed` and `docs`: the
file is valid for the published schema and holds no secret; `devcontainer up` starts it and
runs the topic's import check; `devcontainer exec` runs as the workspace owner, in the same
container `invoke shell` gives (the same probe, line for line), a gloo all-reduce over two
torchrun processes for `distributed`; files written in the workspace are the owner's; tokens
reach the container by name only; `--check` fails once the lock or the file changes. Every
container is removed at the end, however a test ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.engine import Engine
from mlsyskit.images.plan import topic_alias
from mlsyskit.runtime import devcontainer as dc
from tests.conftest import need
from tests.integration.conftest import KitUser, kit, run_kit, shared_dir, user_env
from tests.unit.test_devcontainer_file import jsonc_loads, schema_errors

CLI_DIR = REPO_ROOT / ".ci" / "devcontainer-cli"
CANARY = "hf_canary_5b1e0c"
TOKENS = {"HF_TOKEN": CANARY, "WANDB_API_KEY": CANARY + "_wandb"}
# What a container offers a user, in lines that must be the same from `invoke shell` and from
# `devcontainer exec`: identity, HOME, the working directory, limits, shared memory, init, the
# kit's environment and every mount the kit makes.
PROBE = r"""
echo "id $(id -u):$(id -g)"; echo "home $HOME"; echo "pwd $(pwd)"
echo "stack $(ulimit -s)"; echo "memlock $(ulimit -l)"; echo "shm $(df -k /dev/shm | awk 'NR==2 {print $2}')"
echo "init $(cat /proc/1/comm)"; echo "python $(command -v python)"
for v in HF_HOME USER LOGNAME UV_CACHE_DIR SSL_CERT_FILE REQUESTS_CA_BUNDLE VIRTUAL_ENV; do echo "env $v=$(printenv $v)"; done
awk '$2 ~ /^\/(workspace|home\/kit|root|etc\/mlsyskit)/ {split($4, o, ","); print "mount", $2, $3, o[1]}' /proc/self/mounts | sort
touch "$HOME/.probe" && echo "home writable"
"""
ALLREDUCE = """
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
values = torch.arange(4, dtype=torch.float64) + rank
dist.all_reduce(values)
expected = [float(sum(i + r for r in range(world))) for i in range(4)]
assert values.tolist() == expected, (values.tolist(), expected)
if rank == 0:
    with open("allreduce.out", "w") as out:
        out.write(f"world={world} sums={values.tolist()}\\n")
dist.destroy_process_group()
"""


@pytest.fixture(scope="session")
def owner(kit_user: KitUser) -> KitUser:
    """Who owns the workspaces and runs the editor: a non-root user in the docker group."""
    return kit_user


@pytest.fixture(scope="session")
def cli() -> str:
    """The pinned Dev Containers CLI (`npm ci --prefix .ci/devcontainer-cli`, as .ci/run does)."""
    pinned = json.loads((CLI_DIR / "package.json").read_text())["dependencies"]["@devcontainers/cli"]
    path = CLI_DIR / "node_modules" / ".bin" / "devcontainer"
    need(shutil.which("node") is not None and path.exists(), f"the Dev Containers CLI is not installed: `npm ci --prefix {CLI_DIR}` (as .ci/run does)")
    version = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == pinned, version.stdout + version.stderr
    return str(path)


def devcontainer(user: KitUser, cli: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The Dev Containers CLI as `user`, as an editor runs it (the user's own environment)."""
    identity = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)} if user.switch else {}
    return subprocess.run([cli, *args], env=user_env(user, env), cwd="/", capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **identity)


@dataclass(frozen=True)
class Opened:
    topic: str
    workspace: Path
    text: str  # the file as written
    up: subprocess.CompletedProcess[str]
    container: str


@pytest.fixture(scope="module", params=["distributed", "docs"])
def opened(request, owner, cli, build_topic, engine: Engine) -> Iterator[Opened]:
    """The topic's devcontainer.json written by `invoke devcontainer` in a workspace the user
    owns, then `devcontainer up` on it; the container is removed however the tests end."""
    topic = request.param
    build_topic(topic)
    workspace = shared_dir(owner, f"mlsyskit-devcontainer-{topic}-")
    label = f"devcontainer.local_folder={workspace}"
    try:
        wrote = kit(owner, "devcontainer", topic, cwd=workspace, env=TOKENS)
        assert wrote.returncode == 0, wrote.stdout + wrote.stderr
        text = (workspace / ".devcontainer" / "devcontainer.json").read_text()
        up = devcontainer(owner, cli, "up", "--workspace-folder", str(workspace), env=TOKENS)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        result = json.loads(up.stdout.strip().splitlines()[-1])
        assert result["outcome"] == "success", result
        yield Opened(topic, workspace, text, up, result["containerId"])
    finally:
        engine.remove_containers(c.id for c in engine.containers(label))
        assert engine.containers(label) == []
        shutil.rmtree(workspace, ignore_errors=True)


def exec_in(user: KitUser, cli: str, opened: Opened, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return devcontainer(user, cli, "exec", "--workspace-folder", str(opened.workspace), *command, env=env)


# --- the file ---------------------------------------------------------------------------------


def test_the_file_is_the_users_valid_and_names_the_built_image(opened, owner, engine, cli):
    path = opened.workspace / ".devcontainer" / "devcontainer.json"
    assert (path.stat().st_uid, path.stat().st_gid) == (owner.uid, owner.gid)
    assert sorted(p.name for p in (opened.workspace / ".devcontainer").iterdir()) == ["devcontainer.json"]  # nothing else
    data = jsonc_loads(opened.text)
    assert schema_errors(data) == []
    info = engine.image(topic_alias(opened.topic, "pypi"))
    assert data["image"] == dc.content_tag(info, opened.topic) and data["customizations"]["mlsyskit"]["image-id"] == info.id
    assert data["containerUser"] == f"{owner.uid}:{owner.gid}"
    # the CLI reads it as the kit wrote it (JSON with comments)
    read = devcontainer(owner, cli, "read-configuration", "--workspace-folder", str(opened.workspace))
    assert read.returncode == 0, read.stderr[-2000:]
    assert json.loads(read.stdout.strip().splitlines()[-1])["configuration"]["image"] == data["image"]


def test_no_secret_value_is_written_or_kept_by_the_container(opened, owner, cli, engine):
    assert CANARY not in opened.text  # the tokens were set when it was written
    assert json.loads(opened.text.split("\n", 3)[3])["remoteEnv"]["HF_TOKEN"] == "${localEnv:HF_TOKEN}"
    info = engine.container_info(opened.container)
    assert info is not None and not any(CANARY in value for value in info.labels.values())  # the CLI's metadata label included
    # PID 1's environment is the container's own (what `docker inspect` shows as Config.Env)
    pid1 = exec_in(owner, cli, opened, "sh", "-c", "tr '\\0' '\\n' < /proc/1/environ")
    assert pid1.returncode == 0 and "HF_HOME=" in pid1.stdout and CANARY not in pid1.stdout, pid1.stderr[-2000:]
    # ... while a command run in it gets the tokens of the environment the editor runs in
    seen = exec_in(owner, cli, opened, "sh", "-c", 'echo "$HF_TOKEN|$WANDB_API_KEY"', env={"HF_TOKEN": "hf_later", "WANDB_API_KEY": "w_later"})
    assert seen.stdout.strip().splitlines()[-1] == "hf_later|w_later", seen.stderr[-2000:]


# --- the container ---------------------------------------------------------------------------


def test_up_ran_the_import_check(opened):
    data = jsonc_loads(opened.text)
    assert data["postCreateCommand"] == dc.import_check(load_catalog().topic(opened.topic))
    assert "imports ok: " in opened.up.stdout + opened.up.stderr


def test_exec_runs_the_import_check_as_the_workspace_owner(opened, owner, cli):
    data = jsonc_loads(opened.text)
    check = exec_in(owner, cli, opened, *data["postCreateCommand"])
    assert check.returncode == 0, check.stderr[-2000:]
    assert "imports ok: " in check.stdout
    who = exec_in(owner, cli, opened, "sh", "-c", "id -u; id -g; pwd")
    assert who.stdout.split()[-3:] == [str(owner.uid), str(owner.gid), "/workspace"], who.stderr[-2000:]


def test_files_written_in_the_workspace_belong_to_its_owner(opened, owner, cli):
    made = exec_in(owner, cli, opened, "sh", "-c", "echo inside > made-in-devcontainer && mkdir -p made-dir")
    assert made.returncode == 0, made.stderr[-2000:]
    for path in (opened.workspace / "made-in-devcontainer", opened.workspace / "made-dir"):
        assert (path.stat().st_uid, path.stat().st_gid) == (owner.uid, owner.gid)
    assert (opened.workspace / "made-in-devcontainer").read_text() == "inside\n"


def test_it_is_the_container_invoke_shell_gives(opened, owner, cli):
    """The same probe, line for line, in the dev container and in `invoke shell TOPIC` on the
    same workspace: user, HOME and its tmpfs, limits, shared memory, init, environment, mounts."""
    in_editor = exec_in(owner, cli, opened, "sh", "-c", PROBE)
    in_shell = kit(owner, "shell", opened.topic, "--", "sh", "-c", PROBE, cwd=opened.workspace)
    assert in_editor.returncode == 0 and in_shell.returncode == 0, in_editor.stderr[-2000:] + in_shell.stderr
    lines = [
        line
        for line in in_editor.stdout.splitlines()
        if line.split(" ", 1)[0] in {"id", "home", "pwd", "stack", "memlock", "shm", "init", "python", "env", "mount"} or line == "home writable"
    ]
    assert lines == in_shell.stdout.splitlines()
    assert f"id {owner.uid}:{owner.gid}" in lines and "home /home/kit" in lines and "home writable" in lines
    assert "init docker-init" in lines and "stack 65536" in lines
    assert any(line.startswith("mount /home/kit tmpfs") for line in lines)


@pytest.mark.parametrize("opened", ["distributed"], indirect=True)  # docs has no torch
def test_gloo_all_reduce_over_two_processes(opened, owner, cli):
    script = opened.workspace / "allreduce.py"
    script.write_text(ALLREDUCE)
    if owner.switch:
        os.chown(script, owner.uid, owner.gid)
    run = exec_in(owner, cli, opened, "torchrun", "--nproc-per-node", "2", "allreduce.py")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = opened.workspace / "allreduce.out"
    assert out.read_text() == "world=2 sums=[1.0, 3.0, 5.0, 7.0]\n"
    assert (out.stat().st_uid, out.stat().st_gid) == (owner.uid, owner.gid)


# --- staleness -------------------------------------------------------------------------------


def test_check_passes_on_a_fresh_file_and_fails_on_an_edited_one(opened, owner):
    fresh = kit(owner, "devcontainer", opened.topic, "--check", cwd=opened.workspace)
    assert fresh.returncode == 0, fresh.stderr
    assert "is current" in fresh.stdout
    path = opened.workspace / ".devcontainer" / "devcontainer.json"
    try:
        path.write_text(opened.text.replace('"--ipc=host",', ""))
        edited = kit(owner, "devcontainer", opened.topic, "--check", cwd=opened.workspace)
        assert edited.returncode == 5
        [line] = edited.stderr.strip().splitlines()
        assert "is stale: its runArgs differ" in line and f"`invoke devcontainer {opened.topic}` rewrites it" in line
    finally:
        path.write_text(opened.text)


def test_a_changed_lock_makes_the_file_stale(build_topic, kit_tree, tmp_path):
    """The lock changes after the file was written (a `invoke lock` or a pull): `--check`
    says so, naming the fix, although the file itself did not change."""
    build_topic("docs")
    workspace = tmp_path / "project"
    workspace.mkdir()
    wrote = run_kit("devcontainer", "docs", "--output", str(workspace))
    assert wrote.returncode == 0, wrote.stderr
    assert run_kit("devcontainer", "docs", "--output", str(workspace), "--check").returncode == 0
    lock = kit_tree / "envs" / "docs" / "uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    stale = run_kit("devcontainer", "docs", "--output", str(workspace), "--check", env={"MLSYSKIT_ROOT": str(kit_tree)})
    assert stale.returncode == 5
    [line] = stale.stderr.strip().splitlines()
    assert "is stale: mlsyskit/docs:pypi was built before envs/docs/uv.lock changed" in line and "`invoke build docs`, then `invoke devcontainer docs" in line
    missing = run_kit("devcontainer", "docs", "--output", str(tmp_path), "--check")
    assert missing.returncode == 5 and "does not exist" in missing.stderr
