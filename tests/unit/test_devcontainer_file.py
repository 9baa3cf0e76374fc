"""`invoke devcontainer`'s file, decided without Docker: what it says, that it says what
`invoke shell` runs, that it is valid for the published schema, and that no secret's value
gets into it. tests/integration/test_devcontainer.py opens the files with the real CLI."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections import Counter
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import Config
from mlsyskit.engine import ContainerSpec, ImageInfo
from mlsyskit.engine.spec import run_call
from mlsyskit.errors import UsageError
from mlsyskit.runtime import devcontainer as dc
from mlsyskit.runtime import shell
from mlsyskit.runtime.gpus import GpuSelection
from mlsyskit.runtime.shell import Host, ShellOptions

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "devcontainer"
HASH = "0123456789ab" + "c" * 52
CANARY = "canary-7f3e1d"


def jsonc_loads(text: str) -> Any:
    """JSON with comments (the Dev Containers format): `//` and `/* */` outside strings."""
    out, i, in_string = [], 0, False
    while i < len(text):
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\":
                out.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_string = False
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            in_string = ch == '"'
            out.append(ch)
        i += 1
    return json.loads("".join(out))


@cache
def schema_sources() -> list[dict[str, str]]:
    return tomllib.loads((SCHEMAS / "SOURCES.toml").read_text())["schema"]


@cache
def validator() -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / "devContainer.base.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2019-09/schema"
    return jsonschema.Draft201909Validator(schema)


def schema_errors(data: Any) -> list[str]:
    return [f"{list(e.path)}: {e.message[:200]}" for e in validator().iter_errors(data)]


def make_host(tmp_path: Path, **changes: Any) -> Host:
    values: dict[str, Any] = dict(uid=1000, gid=1000, user="ada", cwd=tmp_path, hf_cache=tmp_path / "hf", environ={"PATH": "/usr/bin"}, memlock=True)
    return Host(**(values | changes))


def image_for(topic: str) -> ImageInfo:
    return ImageInfo(
        id="sha256:" + "a" * 64,
        tags=(f"mlsyskit/{topic}:pypi", f"mlsyskit/topic-{topic}:{HASH[:12]}"),
        labels={"org.mlsyskit.inputs-hash": HASH, "org.mlsyskit.lock-sha256": "b" * 64},
    )


def editor(tmp_path: Path, topic: str = "distributed", base: str = "pypi", config: Config | None = None, **host: Any) -> tuple[ContainerSpec, Path]:
    workspace = tmp_path / "project"
    workspace.mkdir(exist_ok=True)
    spec = shell.editor_spec(
        ShellOptions(topic=topic), make_host(tmp_path, **host), config or Config(), dc.GPUS,
        workspace=workspace, topic=topic, base=base, image=f"mlsyskit/topic-{topic}:{HASH[:12]}",
    )  # fmt: skip
    return spec, workspace


def written(tmp_path: Path, topic: str = "distributed", base: str = "pypi", config: Config | None = None, **host: Any) -> tuple[str, dict[str, Any]]:
    spec, workspace = editor(tmp_path, topic, base, config, **host)
    text = dc.render(spec, workspace=workspace, topic=load_catalog().topic(topic), base=base, image=image_for(topic))
    return text, jsonc_loads(text)


# --- what the Dev Containers CLI makes of a file, and what `invoke shell` runs ---------------


def cli_run_args(data: dict[str, Any]) -> list[str]:
    """The `docker run` options @devcontainers/cli 0.89.0 gives for these properties
    (singleContainer.ts, spawnDevContainer), its own (-a, labels, entrypoint) left out."""
    args = ["--mount", data["workspaceMount"]]
    for mount in data.get("mounts", []):
        args += ["--mount", mount]
    for key, value in data.get("containerEnv", {}).items():
        args += ["-e", f"{key}={value}"]
    if data.get("containerUser"):
        args += ["-u", data["containerUser"]]
    args += data.get("runArgs", [])
    if data.get("init"):
        args.append("--init")
    return args


def options(args: list[str] | tuple[str, ...]) -> Counter[tuple[str, str]]:
    """docker run options as (flag, value) pairs, in one vocabulary: `-v A:B[:ro]` as the
    `--mount` it means, `--user` as `-u`; bare flags get ""."""
    pairs: Counter[tuple[str, str]] = Counter()
    with_value = {
        "--mount",
        "-v",
        "-e",
        "-u",
        "--user",
        "--label",
        "--ulimit",
        "--tmpfs",
        "-w",
        "--shm-size",
        "--network",
        "-p",
        "--platform",
        "--hostname",
        "--gpus",
        "--name",
    }
    i = 0
    while i < len(args):
        flag = args[i]
        value = args[i + 1] if flag in with_value else ""
        i += 2 if flag in with_value else 1
        if flag == "-v" and dc.bind_mount(value):
            flag, value = "--mount", dc.bind_mount(value)
        pairs[("-u" if flag == "--user" else flag, value)] += 1
    return pairs


def shell_run_options(spec: ContainerSpec, workspace: Path) -> Counter[tuple[str, str]]:
    """`invoke shell`'s docker run options for the same container, in the file's terms: the
    workspace as ${localWorkspaceFolder}, the working directory and the values passed by
    name left out (the file has workspaceFolder and remoteEnv for them)."""
    args = list(run_call(replace(spec, env_by_name={})).args[1:-1])  # no image or command here
    found = options([a.replace(str(workspace), dc.WORKSPACE_VAR) for a in args])
    del found[("-w", shell.WORKSPACE)]
    found[("--mount", f"type=bind,source={dc.WORKSPACE_VAR},target={shell.WORKSPACE}")] += 1
    del found[("-v", f"{dc.WORKSPACE_VAR}:{shell.WORKSPACE}")]
    return found


# --- tests ----------------------------------------------------------------------------------


def test_vendored_schema_is_the_published_file_byte_for_byte():
    [source] = schema_sources()
    assert {p.name for p in SCHEMAS.glob("*.json")} == {source["file"]}
    data = (SCHEMAS / source["file"]).read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == source["blob"]  # git's blob id
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and source["path"].endswith(source["file"])
    assert dc.SCHEMA.endswith("/" + source["path"])  # the file's `$schema` names the same document


@pytest.mark.parametrize(("topic", "uid"), [("distributed", 1000), ("docs", 1000), ("sglang", 1000), ("distributed", 0)])
def test_the_file_is_valid_for_the_published_schema(tmp_path, topic, uid):
    text, data = written(tmp_path, topic, uid=uid, gid=uid)
    assert text.startswith(dc.MARKER)
    assert schema_errors(data) == []
    # and the schema is strict enough to notice a wrong file
    assert schema_errors({**data, "hostRequirements": {"gpu": "sometimes"}})
    assert schema_errors({**data, "runArgs": "--ipc=host"})
    assert schema_errors({**data, "no-such-property": 1})


def test_the_file_runs_what_invoke_shell_runs(tmp_path):
    """Every docker run option `invoke shell` gives this container reaches the container the
    Dev Containers CLI makes from the file, and nothing else does."""
    spec, workspace = editor(tmp_path, config=Config(ca_bundle="/etc/ssl/certs/ca-certificates.crt"))
    data = jsonc_loads(dc.render(spec, workspace=workspace, topic=load_catalog().topic("distributed"), base="pypi", image=image_for("distributed")))
    assert options(cli_run_args(data)) == shell_run_options(spec, workspace)
    # the rules themselves are the shell's: the same as a one-off shell's container but for
    # its kind label, its stdio and command, and values passed only when set
    one_off = shell.one_off_spec(ShellOptions(topic="distributed"), make_host(tmp_path), Config(ca_bundle="/etc/ssl/certs/ca-certificates.crt"),
                                 dc.GPUS, workspace=workspace, topic="distributed", base="pypi", image=spec.image)  # fmt: skip
    same = replace(one_off, labels=spec.labels, command=(), remove=False, interactive=False, tty=False, env_by_name=spec.env_by_name)
    assert same == spec
    for option in [("--ipc=host", ""), ("--ulimit", "memlock=-1:-1"), ("--ulimit", "stack=67108864"), ("-u", "1000:1000"), ("--init", ""),
                   ("--tmpfs", "/home/kit:exec,uid=1000,gid=1000,mode=0755"), ("-e", "HOME=/home/kit"),
                   ("--mount", f"type=bind,source={tmp_path / 'hf'},target=/home/kit/.cache/huggingface"),
                   ("--mount", "type=bind,source=/etc/ssl/certs/ca-certificates.crt,target=/etc/mlsyskit/ca.pem,readonly")]:  # fmt: skip
        assert options(cli_run_args(data))[option] == 1, option


def test_every_spec_field_reaches_the_file(tmp_path):
    """A rule that sets any field of the spec (another helper's mount, a private /dev/shm, a
    network, ports, an arm64 platform) reaches the file with no change to devcontainer.py."""
    spec, workspace = editor(tmp_path)
    full = replace(
        spec, hostname="box", shm_size="16g", ulimits=(*spec.ulimits, "nofile=1024:1024"), tmpfs=(*spec.tmpfs, "/scratch"),
        volumes=(*spec.volumes, f"{tmp_path}:/kernels", f"{tmp_path}:/odd:z"), mounts=("type=volume,source=cache,target=/cache",),
        env=(*spec.env, "A=1"), network="kit-net", ports=("8000:8000",), platform="linux/arm64", labels={**spec.labels, "extra": "1"},
    )  # fmt: skip
    data = jsonc_loads(dc.render(full, workspace=workspace, topic=load_catalog().topic("distributed"), base="pypi", image=image_for("distributed")))
    assert options(cli_run_args(data)) == shell_run_options(full, workspace)
    assert ("-v", f"{tmp_path}:/odd:z") in options(data["runArgs"])  # --mount cannot say `z`: kept as docker's -v
    assert schema_errors(data) == []


def test_gpus_are_the_hosts_requirement_not_a_run_argument(tmp_path):
    """The same file on a laptop and on a GPU host: the CLI adds --gpus all where Docker has
    the NVIDIA runtime; a topic that needs a GPU says so (the CLI warns where there is none)."""
    spec, workspace = editor(tmp_path)
    with_gpus = replace(spec, gpus="all")  # as `invoke shell` decides on a GPU host
    catalog = load_catalog()
    for topic, wanted in (("distributed", "optional"), ("docs", "optional"), ("sglang", True), ("verl", True)):
        data = dc.config(with_gpus, workspace=workspace, topic=catalog.topic(topic), base="pypi", image=image_for(topic))
        assert data["hostRequirements"] == {"gpu": wanted}
        assert "--gpus" not in data["runArgs"]
    assert dc.config(spec, workspace=workspace, topic=catalog.topic("distributed"), base="pypi", image=image_for("distributed")) == dc.config(
        with_gpus, workspace=workspace, topic=catalog.topic("distributed"), base="pypi", image=image_for("distributed")
    )


def test_secrets_are_named_never_written(tmp_path):
    environ = {"PATH": "/usr/bin", "HF_TOKEN": CANARY, "WANDB_API_KEY": CANARY + "w", "HTTPS_PROXY": f"http://ada:{CANARY}@proxy:3128"}
    config = Config(https_proxy=f"http://ada:{CANARY}@proxy:3128", hf_endpoint="https://hf-mirror.example")
    text, data = written(tmp_path, config=config, environ=environ)
    assert CANARY not in text and "hf-mirror" not in text
    assert data["remoteEnv"]["HF_TOKEN"] == "${localEnv:HF_TOKEN}"
    names = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "HTTPS_PROXY", "https_proxy", "HF_ENDPOINT"}
    assert set(data["remoteEnv"]) == names and all(v == f"${{localEnv:{k}}}" for k, v in data["remoteEnv"].items())
    assert not any("TOKEN" in key or "PROXY" in key.upper() for key in data["containerEnv"])
    # the tokens are named whether or not they are set now: the file does not depend on it
    assert written(tmp_path, environ={"PATH": "/usr/bin"})[1]["remoteEnv"].keys() == {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"}


def test_the_file_names_the_content_hash_tag_and_records_the_build(tmp_path):
    _, data = written(tmp_path)
    assert data["image"] == f"mlsyskit/topic-distributed:{HASH[:12]}"
    assert data["customizations"]["mlsyskit"] == {
        "topic": "distributed", "base": "pypi", "image": "mlsyskit/distributed:pypi", "image-id": "sha256:" + "a" * 64, "lock-sha256": "b" * 64,
    }  # fmt: skip
    untagged = replace(image_for("distributed"), tags=("mlsyskit/distributed:pypi",))
    with pytest.raises(UsageError, match="no content-hash tag"):
        dc.content_tag(untagged, "distributed")


def test_a_rebuilt_image_or_other_rules_make_the_file_stale_and_say_why(tmp_path):
    spec, workspace = editor(tmp_path)
    topic = load_catalog().topic("distributed")
    old = dc.render(spec, workspace=workspace, topic=topic, base="pypi", image=image_for("distributed"))
    rebuilt = replace(image_for("distributed"), id="sha256:" + "d" * 64)  # same inputs, built again
    new = dc.render(spec, workspace=workspace, topic=topic, base="pypi", image=rebuilt)
    assert new != old and "sha256:aaaaaaaaaaaa" in dc.difference(old, new) and "sha256:dddddddddddd" in dc.difference(old, new)
    other_uid = dc.render(editor(tmp_path, uid=1001)[0], workspace=workspace, topic=topic, base="pypi", image=image_for("distributed"))
    assert dc.difference(old, other_uid).startswith("its containerUser, remoteUser, runArgs differ")
    assert dc.difference(old, "{ not json") == "it is no longer the JSON the kit wrote"


def test_the_workspace_is_where_the_editor_opens_it(tmp_path):
    _, data = written(tmp_path)
    assert data["workspaceMount"] == "type=bind,source=${localWorkspaceFolder},target=/workspace" and data["workspaceFolder"] == "/workspace"
    assert str(tmp_path / "project") not in json.dumps(data)  # the folder may move: nothing names it
    assert "org.mlsyskit.shell.workspace=${localWorkspaceFolder}" in data["runArgs"]


def test_the_import_check_runs_after_creation(tmp_path):
    _, data = written(tmp_path, "docs")
    assert data["postCreateCommand"][:2] == ["python", "-c"]
    assert "['mkdocs', 'material', 'mkdocs_jupyter', 'nbconvert', 'ipykernel']" in data["postCreateCommand"][2]
    assert data["forwardPorts"] == [8000]  # topic.toml's ports: the editor forwards them
    assert "forwardPorts" not in written(tmp_path, "distributed")[1]


def test_a_value_the_cli_would_substitute_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"contains '\$\{'"):
        written(tmp_path, hf_cache=tmp_path / "${HOME}")


def test_an_arm64_file_runs_under_emulation(tmp_path):
    _, data = written(tmp_path, base="pypi-arm64")
    assert options(data["runArgs"])[("--platform", "linux/arm64")] == 1
    assert schema_errors(data) == []


def test_a_file_not_written_by_the_kit_is_left_alone(tmp_path, monkeypatch):
    (tmp_path / ".devcontainer").mkdir()
    mine = tmp_path / ".devcontainer" / "devcontainer.json"
    mine.write_text('{"image": "ubuntu"}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="not written by `invoke devcontainer`") as err:
        dc.devcontainer(dc.DevcontainerOptions(topic="docs"), print)
    assert err.value.exit_code == 2 and mine.read_text() == '{"image": "ubuntu"}\n'
    with pytest.raises(UsageError, match="not a directory"):
        dc.devcontainer(dc.DevcontainerOptions(topic="docs", output=str(tmp_path / "missing")), print)


def test_the_task_is_there():
    import tasks

    assert tasks.devcontainer.help["check"].startswith("write nothing")
    assert sorted(a.name for a in tasks.devcontainer.get_arguments()) == ["arch", "base", "check", "output", "topic"]


def test_config_json_dump_is_stable(tmp_path):
    assert written(tmp_path)[0] == written(tmp_path)[0]


def test_unknown_topic_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="unknown topic 'nope'"):
        dc.devcontainer(dc.DevcontainerOptions(topic="nope"), print)


def test_a_spec_without_the_workspace_is_a_bug_not_a_file(tmp_path):
    spec, workspace = editor(tmp_path)
    with pytest.raises(ValueError):
        dc.config(
            replace(spec, workdir="/elsewhere"), workspace=workspace, topic=load_catalog().topic("distributed"), base="pypi", image=image_for("distributed")
        )


def test_gpus_label_says_the_editor_decides(tmp_path):
    assert editor(tmp_path)[0].labels["org.mlsyskit.shell.gpus"] == "auto" == dc.GPUS.label
    assert GpuSelection(None, "auto") == dc.GPUS


def test_a_proxy_only_kit_toml_knows_is_named_in_a_note(tmp_path):
    """The editor fills remoteEnv from its own environment: a proxy set in kit.toml and not
    in the environment would be empty there, so the command says to export it."""
    config = Config(https_proxy="http://proxy:3128")
    text, _ = written(tmp_path, config=config, environ={"PATH": "/usr/bin"})
    assert dc.from_config_only(make_host(tmp_path), text) == ["HTTPS_PROXY", "https_proxy"]
    exported = make_host(tmp_path, environ={"HTTPS_PROXY": "http://proxy:3128", "https_proxy": "http://proxy:3128"})
    assert dc.from_config_only(exported, text) == []
