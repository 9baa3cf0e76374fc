"""runtime/secrets.py: how tokens reach containers without being environment values docker
keeps (Config.Env, which `docker inspect` shows): the files, their modes, the loader, the
watcher that removes a one-off container's folder, and compose stacks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from mlsyskit.compose.stacks import Devices, RenderOptions, load_stack, render
from mlsyskit.runtime import secrets

VALUES = {"HF_TOKEN": "hf_canary", "WANDB_API_KEY": "wandb canary 'quoted' $(touch pwned)", "https_proxy": "http://u:p@proxy:3128"}


def test_files_are_private_and_named_by_the_variables_the_tools_read(tmp_path):
    folder = tmp_path / "s"
    secrets.write(VALUES, folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE((folder / "env").stat().st_mode) == 0o700
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert set(files) == {"hf_token", "env/WANDB_API_KEY", "env/https_proxy"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    assert files["hf_token"].read_text() == "hf_canary"
    delivery = secrets.delivery(VALUES, folder)
    assert delivery is not None and delivery.volume == f"{folder}:/run/mlsyskit/secrets:ro"
    assert delivery.env == ("HF_TOKEN_PATH=/run/mlsyskit/secrets/hf_token",)  # a path, never a value
    assert delivery.wrap(("python", "x.py")) == ("sh", "-c", secrets.LOADER, "mlsyskit-secrets", "python", "x.py")
    hf_only = secrets.delivery({"HUGGING_FACE_HUB_TOKEN": "t"}, folder)
    assert hf_only is not None and hf_only.loader == () and hf_only.wrap(("bash",)) == ("bash",)


def test_the_loader_exports_each_value_exactly_and_runs_the_command(tmp_path):
    folder = tmp_path / "s"
    secrets.write(VALUES, folder)
    loader = secrets.LOADER.replace(secrets.IN_CONTAINER, str(folder))  # the folder where the bind would put it
    probe = "import os, sys; sys.stdout.write(os.environ['WANDB_API_KEY'] + '|' + os.environ['https_proxy'] + '|' + str('HF_TOKEN' in os.environ))"
    proc = subprocess.run(["sh", "-c", loader, "mlsyskit-secrets", sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{VALUES['WANDB_API_KEY']}|{VALUES['https_proxy']}|False"
    assert not (tmp_path / "pwned").exists()


def test_a_one_off_containers_folder_goes_when_its_docker_run_ends(tmp_path):
    folder = tmp_path / "s"
    secrets.write({"HF_TOKEN": "t"}, folder)
    stand_in = subprocess.Popen(["sleep", "1"])  # the process that becomes `docker run`
    secrets.remove_when_gone(folder, stand_in.pid)
    assert folder.exists()  # still there while it runs
    stand_in.wait()
    deadline = time.monotonic() + 10
    while folder.exists():
        assert time.monotonic() < deadline, "the folder outlived its container's docker run"
        time.sleep(0.1)


def test_private_folders_go_to_the_users_runtime_dir_when_there_is_one(tmp_path):
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    assert secrets.private_base({"XDG_RUNTIME_DIR": str(runtime)}) == runtime
    assert secrets.private_base({"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == Path(os.environ.get("TMPDIR", "/tmp"))
    with secrets.private_folder({"HF_TOKEN": "t"}, {"XDG_RUNTIME_DIR": str(runtime)}) as folder:
        assert folder is not None and folder.parent == runtime and (folder / "hf_token").read_text() == "t"
    assert not folder.exists()
    with secrets.private_folder({}, {}) as none:
        assert none is None


def test_stack_services_get_tokens_as_files_not_environment_values(tmp_path):
    stack = load_stack("sglang-serve")
    assert stack.compose["services"]["server"]["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"  # the file run on its own
    base = {"devices": Devices(gpus=("0",)), "hf_cache": Path("/home/u/.cache/huggingface")}
    given = render(stack, RenderOptions(**base, secrets={"HF_TOKEN": "hf_canary"}, secrets_at=tmp_path / "secrets"))
    declaring = {name for name, body in stack.compose["services"].items() if "HF_TOKEN" in (body.get("environment") or {})}
    assert declaring == {"model", "server"}
    for name, body in given["services"].items():
        env = body["environment"]
        assert "HF_TOKEN" not in env and "hf_canary" not in repr(body), name
        if name in declaring:
            assert env["HF_TOKEN_PATH"] == "/run/mlsyskit/secrets/hf_token"
            assert f"{tmp_path / 'secrets'}:/run/mlsyskit/secrets:ro" in body["volumes"]
        else:
            assert "HF_TOKEN_PATH" not in env
    none = render(stack, RenderOptions(**base))
    for body in none["services"].values():
        assert "HF_TOKEN" not in body["environment"] and "HF_TOKEN_PATH" not in body["environment"]
        assert not any("/run/mlsyskit/secrets" in v for v in body.get("volumes", []))
