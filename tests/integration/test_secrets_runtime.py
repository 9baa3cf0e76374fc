"""Secrets are not in `docker inspect`: with canary tokens in the environment, a one-off
`invoke shell` container, a named one entered with `docker exec`, an `invoke smoke` container
and a compose stack's container are inspected while they run. No canary is anywhere in the
inspect output (Config.Env, Args, Mounts, labels...), while the programs inside read them:
Hugging Face's token from the file HF_TOKEN_PATH names, the others from their environment.
The private folders holding the files are gone once the containers are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.checks import smoke
from mlsyskit.engine import Engine
from mlsyskit.runtime.secrets import IN_CONTAINER
from tests.integration.conftest import kit, run_kit, user_env
from tests.integration.test_shell import containers_of, image, workspace  # noqa: F401 (fixtures)

CANARY = f"kitcanary{uuid.uuid4().hex[:12]}"
TOKENS = {"HF_TOKEN": f"{CANARY}-hf", "WANDB_API_KEY": f"{CANARY}-wandb", "https_proxy": f"http://user:{CANARY}-proxy@127.0.0.1:9"}
# What the process inside sees: the HF token from its file, the rest from its environment.
READ = 'echo "$(cat "$HF_TOKEN_PATH")|${HF_TOKEN:-none}|$WANDB_API_KEY|$https_proxy"'
EXPECTED = f"{TOKENS['HF_TOKEN']}|none|{TOKENS['WANDB_API_KEY']}|{TOKENS['https_proxy']}"


def inspected(engine: Engine, container: str) -> dict:
    data = engine._inspect_cli("container", container)()  # `docker container inspect`, as anyone with the socket would
    assert data is not None
    return data


def assert_no_canary(data: dict) -> None:
    text = json.dumps(data)
    assert CANARY not in text, [e for e in data["Config"]["Env"] if CANARY in e] or text[text.index(CANARY) - 200 : text.index(CANARY) + 50]


def secrets_source(data: dict) -> Path:
    (mount,) = [m for m in data["Mounts"] if m["Destination"] == IN_CONTAINER]
    assert mount["RW"] is False
    return Path(mount["Source"])


def wait_gone(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} outlived its container"
        time.sleep(0.2)


def test_a_one_off_shell_keeps_its_tokens_out_of_docker_inspect(kit_user, workspace, image, engine):  # noqa: F811 (fixtures)
    script = f"{READ} > seen; while [ ! -e go ]; do sleep 0.2; done"
    proc = subprocess.Popen(
        [kit_user.python, "-m", "invoke", "-r", str(REPO_ROOT), "shell", "distributed", "--", "sh", "-c", script],
        cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=user_env(kit_user, TOKENS),
        **({"user": kit_user.uid, "group": kit_user.gid, "extra_groups": list(kit_user.groups)} if kit_user.switch else {}),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (workspace / "seen").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        (running,) = containers_of(engine, workspace)
        data = inspected(engine, running.id)
        assert_no_canary(data)
        assert f"HF_TOKEN_PATH={IN_CONTAINER}/hf_token" in data["Config"]["Env"]
        folder = secrets_source(data)
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == kit_user.uid
    finally:
        (workspace / "go").touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (workspace / "seen").read_text().strip() == EXPECTED
    wait_gone(folder)  # the watcher removed it once `docker run` ended
    assert containers_of(engine, workspace) == []


def test_a_named_shell_gets_its_tokens_with_each_exec_not_in_inspect(kit_user, workspace, image, engine):  # noqa: F811 (fixtures)
    name = f"mlsyskit-test-{uuid.uuid4().hex[:8]}"
    try:
        first = kit(kit_user, "shell", "distributed", "--name", name, "--", "sh", "-c", 'echo "$HF_TOKEN|$WANDB_API_KEY"', cwd=workspace, env=TOKENS)
        assert first.returncode == 0 and first.stdout.strip() == f"{TOKENS['HF_TOKEN']}|{TOKENS['WANDB_API_KEY']}", first.stderr
        assert_no_canary(inspected(engine, name))  # an exec's environment is not the container's
    finally:
        engine.remove_containers([name])


def test_a_smoke_container_keeps_its_tokens_out_of_docker_inspect(engine, build_topic):
    build_topic("distributed")
    run = subprocess.Popen(
        [sys.executable, "-m", "invoke", "smoke", "distributed", "--cpu", "--tests", "nccl", "--no-stacks"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **TOKENS},
    )  # fmt: skip
    seen, folder = "", None
    try:
        deadline = time.monotonic() + 600
        while run.poll() is None and not seen:
            assert time.monotonic() < deadline
            for found in engine.containers(smoke.LABEL):
                if not found.running:
                    continue
                data = inspected(engine, found.id)
                assert_no_canary(data)
                folder = secrets_source(data)
                # the test's own process has them (the loader exported the rest before exec)
                probe = engine.exec_in(
                    found.id, ["sh", "-c", 'cat "$HF_TOKEN_PATH"; echo; cat /proc/[0-9]*/environ 2>/dev/null | tr "\\0" "\\n" | grep -m1 "^WANDB_API_KEY="']
                )
                if probe.returncode == 0:
                    seen = probe.stdout
            time.sleep(0.2)
    finally:
        out, _ = run.communicate(timeout=900)
    assert run.returncode == 0, out[-3000:]
    assert seen.split() == [TOKENS["HF_TOKEN"], f"WANDB_API_KEY={TOKENS['WANDB_API_KEY']}"], seen
    assert folder is not None
    wait_gone(folder)


def test_a_stack_container_keeps_its_tokens_out_of_docker_inspect(engine, build_topic):
    build_topic("verl")
    if engine.project_containers("mlsyskit-verl"):
        pytest.skip("the verl stack is up on this engine (someone else's): not taking it over")
    up = run_kit("up", "verl", "--cpu", env=TOKENS, timeout=900)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr
        containers = engine.project_containers("mlsyskit-verl")
        assert containers
        for container in containers:
            assert_no_canary(inspected(engine, container.id))
        head = next(c for c in containers if c.service == "ray-head")
        probe = engine.exec_in(head.id, ["sh", "-c", 'cat "$HF_TOKEN_PATH"; echo "|${HF_TOKEN:-none}"'])
        assert probe.stdout.strip() == f"{TOKENS['HF_TOKEN']}|none", probe.stdout + probe.stderr
        folder = secrets_source(inspected(engine, head.id))
        assert folder == REPO_ROOT / ".kit" / "stacks" / "verl" / "secrets" and folder.stat().st_mode & 0o777 == 0o700
    finally:
        down = run_kit("down", "verl", timeout=300)
    assert down.returncode == 0, down.stderr
    assert not folder.exists()
