"""`invoke devcontainer TOPIC`: the topic's container as a Dev Containers file
(`.devcontainer/devcontainer.json`) that VS Code, Cursor and the `devcontainer` CLI open.

What the container gets is not decided here: `runtime.shell.editor_spec` builds the
ContainerSpec by the rules `invoke shell` runs with, and this module only writes that spec
in the Dev Containers vocabulary. Whatever `engine.spec.run_call` would pass to `docker run`
that has no property of its own in the spec goes into `runArgs` as docker's own words, so a
rule added to the shell reaches the file without a change here.

Decisions (the README's "Working in an editor" section gives the user's view):
- `image` is the topic layer's content-hash tag (`mlsyskit/topic-NAME:HASH`), not the alias
  `mlsyskit/NAME:BASE` that every build moves: the file names one build. The image ID and the
  lock's sha256 are recorded under `customizations.mlsyskit`, so `--check` also tells a
  rebuilt image (same inputs, another ID) from a current file.
- GPUs: `hostRequirements.gpu` ("optional"; true where topic.toml's `gpus.min` > 0), never
  `--gpus` in `runArgs`: the Dev Containers CLI and VS Code add `--gpus all` where Docker has
  the NVIDIA runtime and run on the CPU elsewhere, so a file written on a laptop or a CI
  machine opens unchanged on a GPU host, with every GPU, as `invoke shell` takes them.
- Identity: `containerUser`/`remoteUser` are the UID:GID `invoke shell` runs as, with
  `updateRemoteUserUID` off: the images have no user to renumber, and for a UID:GID pair the
  CLI would build a `-uid` image to look for one.
- Secrets and proxies by name: `remoteEnv` `${localEnv:NAME}`, filled from the editor's own
  environment on each entry (the CLI passes them with `docker exec -e`): no value in the file,
  in the container's config or in its labels (`docker inspect`).
- The file holds this machine's facts (UID, the HF cache's path, whether the daemon lets
  containers raise memlock, the CA bundle's path): written per machine and user, like a lock.
  `--check` fails (exit 5, one line naming the fix) once it no longer matches."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlsyskit import IMAGE_PREFIX, LABEL_PREFIX
from mlsyskit.context import Context
from mlsyskit.data.catalog import Topic
from mlsyskit.data.fields import rel_path
from mlsyskit.engine import ContainerSpec, Engine, ImageInfo, run_call
from mlsyskit.errors import LockError, UsageError
from mlsyskit.images.ensure import ensure_image
from mlsyskit.images.plan import freshness, topic_alias
from mlsyskit.runtime.gpus import GpuSelection, host_has_gpus
from mlsyskit.runtime.host import Host, memlock_allowed, read_host
from mlsyskit.runtime.shell import LABEL_WORKSPACE, PASSTHROUGH, WORKSPACE, ShellOptions, editor_spec, kernel_cache

Log = Callable[[str], None]

FOLDER = ".devcontainer"
FILE = "devcontainer.json"
SCHEMA = "https://raw.githubusercontent.com/devcontainers/spec/main/schemas/devContainer.base.schema.json"
MARKER = "// Written by `invoke devcontainer "
WORKSPACE_VAR = "${localWorkspaceFolder}"
# The editor decides GPUs from hostRequirements; the label says so in `invoke ps`.
GPUS = GpuSelection(docker_value=None, label="auto")
_IMAGE_SLOT = "mlsyskit-image"  # where run_call puts the image: cut from runArgs


@dataclass(frozen=True, kw_only=True)
class DevcontainerOptions:
    topic: str
    output: str = ""  # the folder that gets .devcontainer/ and is mounted at /workspace
    check: bool = False
    base: str = ""


# --- pure: a spec -> devcontainer.json ----------------------------------------------------


def content_tag(info: ImageInfo, topic: str) -> str:
    """The topic layer's content-hash tag of this image (`invoke build` tags it beside the
    alias), from the image's inputs-hash label."""
    digest = info.labels.get(f"{LABEL_PREFIX}.inputs-hash", "")
    tag = f"{IMAGE_PREFIX}/topic-{topic}:{digest[:12]}"
    if not digest or tag not in info.tags:
        raise UsageError(f"image {info.id[:19]} of topic '{topic}' carries no content-hash tag ({tag})", fix=f"invoke build {topic}")
    return tag


def bind_mount(volume: str) -> str:
    """`-v HOST:CTR[:ro|rw]` as a Dev Containers `mounts` entry (docker's --mount syntax),
    or "" where that syntax cannot say it (other modes, commas or quotes in a path)."""
    parts = volume.split(":")
    if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]):
        return ""
    source, target, mode = parts[0], parts[1], parts[2] if len(parts) == 3 else ""
    if mode not in ("", "ro", "rw") or any(c in source + target for c in ',"'):
        return ""
    return f"type=bind,source={source},target={target}" + (",readonly" if mode == "ro" else "")


def run_args(spec: ContainerSpec) -> list[str]:
    """What `docker run` would get for the spec, less the image and the command."""
    args = run_call(replace(spec, image=_IMAGE_SLOT, command=())).args
    if args[0] != "run" or args[-1] != _IMAGE_SLOT:
        raise ValueError(f"unexpected docker run arguments: {args!r}")
    return list(args[1:-1])


def import_check(topic: Topic) -> list[str]:
    """The topic's import check (topic.toml `imports`), as the postCreateCommand runs it."""
    modules = list(topic.imports)
    script = f"import importlib; mods = {modules!r}; [importlib.import_module(m) for m in mods]; print('imports ok: ' + ', '.join(mods))"
    return ["python", "-c", script]


def config(spec: ContainerSpec, *, workspace: Path, topic: Topic, base: str, image: ImageInfo) -> dict[str, Any]:
    """devcontainer.json's object for the spec. The parts the Dev Containers spec names
    (workspace, user, env, bind mounts, init) get their own properties; everything else the
    spec gives `docker run` is kept in `runArgs`, word for word."""
    workspace_volume = f"{workspace}:{WORKSPACE}"
    if workspace_volume not in spec.volumes or spec.workdir != WORKSPACE:
        raise ValueError(f"the spec does not work in {workspace} at {WORKSPACE}")
    mounts: list[str] = []
    volumes: list[str] = []
    for volume in spec.volumes:
        if volume != workspace_volume:
            as_mount = bind_mount(volume)
            (mounts if as_mount else volumes).append(as_mount or volume)
    labels = {key: WORKSPACE_VAR if key == LABEL_WORKSPACE else value for key, value in spec.labels.items()}
    # What the Dev Containers CLI owns (the container's name, stdio, entrypoint and command)
    # or what has a property below is left out of runArgs.
    rest = replace(
        spec, labels=labels, volumes=tuple(volumes), mounts=(), env=(), env_by_name={}, user="", workdir="", init=False,
        gpus=None, name="", remove=False, interactive=False, tty=False, entrypoint=None,
    )  # fmt: skip
    env = dict(pair.split("=", 1) for pair in spec.env)
    tag = content_tag(image, topic.name)
    data: dict[str, Any] = {
        "$schema": SCHEMA,
        "name": f"mlsyskit {topic.name} ({base})",
        "image": tag,
        "workspaceMount": f"type=bind,source={WORKSPACE_VAR},target={WORKSPACE}",
        "workspaceFolder": WORKSPACE,
    }
    if spec.user:
        data["containerUser"] = data["remoteUser"] = spec.user
    data["updateRemoteUserUID"] = False
    data["init"] = spec.init
    data["hostRequirements"] = {"gpu": True if topic.gpus_min > 0 else "optional"}
    data["runArgs"] = run_args(rest)
    if mounts or spec.mounts:
        data["mounts"] = [*mounts, *spec.mounts]
    data["containerEnv"] = env
    data["remoteEnv"] = {name: f"${{localEnv:{name}}}" for name in spec.env_by_name}
    if topic.ports:
        data["forwardPorts"] = list(topic.ports)
    data["postCreateCommand"] = import_check(topic)
    data["customizations"] = {
        "mlsyskit": {
            "topic": topic.name, "base": base, "image": topic_alias(topic.name, base), "image-id": image.id,
            "lock-sha256": image.labels.get(f"{LABEL_PREFIX}.lock-sha256", ""),
        }
    }  # fmt: skip
    host_given = [*data["runArgs"], *data.get("mounts", []), *env.values()]
    if any("${" in text.replace(WORKSPACE_VAR, "") for text in host_given):
        raise UsageError("a path or value for the container contains '${', which the Dev Containers CLI would read as a variable", fix="rename it")
    return data


def render(spec: ContainerSpec, *, workspace: Path, topic: Topic, base: str, image: ImageInfo) -> str:
    """The file's text: a comment that says where it came from, then the JSON (the Dev
    Containers format is JSON with comments)."""
    data = config(spec, workspace=workspace, topic=topic, base=base, image=image)
    header = (
        f"{MARKER}{topic.name}` (mlsyskit, base {base}) for this machine and user,\n"
        f"// from the rules `invoke shell {topic.name}` runs with. Regenerate it rather than edit it:\n"
        f"// `invoke devcontainer {topic.name} --check` fails when the image, its lock or those rules changed.\n"
    )
    return header + json.dumps(data, indent=2) + "\n"


def parse(text: str) -> dict[str, Any] | None:
    """A file this module wrote, read back (its comments are whole lines); None if it is
    not JSON any more."""
    try:
        data = json.loads("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//")))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def difference(old: str, new: str) -> str:
    """What changed between the file on disk and the one the rules give now, in words."""
    before, after = parse(old), parse(new)
    if before is None or after is None:
        return "it is no longer the JSON the kit wrote"
    was = before.get("customizations", {}).get("mlsyskit", {}) if isinstance(before.get("customizations"), dict) else {}
    now = after["customizations"]["mlsyskit"]
    if before.get("image") != after["image"] or was.get("image-id") != now["image-id"]:
        return f"it names {before.get('image')} ({str(was.get('image-id', '?'))[:19]}), but {now['image']} is now {after['image']} ({now['image-id'][:19]})"
    keys = sorted({*before, *after} - {key for key in {*before, *after} if before.get(key) == after.get(key)})
    return f"its {', '.join(keys)} differ from what `invoke shell` would run now (the kit's rules, your UID, HF cache or CA bundle, or the daemon's limits)"


# --- doing it ---------------------------------------------------------------------------


def resolve_output(output: str, host: Host) -> Path:
    folder = (host.cwd / Path(output).expanduser()).resolve() if output else host.cwd.resolve()
    if not folder.is_dir():
        raise UsageError(f"--output {output}: not a directory", fix="create it first; it becomes the container's /workspace")
    return folder


def write_atomically(path: Path, text: str) -> None:
    """The whole file or none of it: written beside, then renamed over."""
    path.parent.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as out:
        out.write(text)
    try:
        os.chmod(out.name, 0o644)
        os.replace(out.name, path)
    except OSError:
        os.unlink(out.name)
        raise


def devcontainer(opts: DevcontainerOptions, log: Log) -> str:
    """Write (or with `check`, compare) FOLDER/.devcontainer/devcontainer.json for the topic."""
    ctx = Context.resolve(opts.base, connect=Engine.for_running)  # an unknown base: one line
    topic = ctx.catalog.topic(opts.topic)  # unknown: the known ones listed
    ctx.topics_for_arch([topic])
    host = read_host()
    folder = resolve_output(opts.output, host)
    path = folder / FOLDER / FILE
    again = f"invoke devcontainer {topic.name}" + (f" --output {shlex.quote(str(folder))}" if folder != host.cwd.resolve() else "")
    existing = path.read_text() if path.is_file() else None
    alias = topic_alias(topic.name, ctx.base_name)
    if opts.check:
        if existing is None:
            raise LockError(f"{path} does not exist", fix=f"`{again}` writes it")
        if not existing.startswith(MARKER):
            raise LockError(f"{path} was not written by `invoke devcontainer`", fix=f"move it aside, then `{again}`")
        info = ctx.engine.image(alias)
        if info is None:
            raise LockError(f"{path} is stale: {alias} is not built", fix=f"`invoke build {topic.name}`, then `{again}`")
        fresh = freshness(ctx.catalog, ctx.config, topic, ctx.base, info.labels)
        if not fresh.current:
            raise LockError(f"{path} is stale: {alias} was built before {fresh.what} changed", fix=f"`invoke build {topic.name}`, then `{again}`")
        expected = render_for(ctx, topic, host, folder, info, log)
        if expected != existing:
            raise LockError(f"{path} is stale: {difference(existing, expected)}", fix=f"`{again}` rewrites it (then rebuild the container in the editor)")
        return f"{rel_path(path)} is current: {content_tag(info, topic.name)}"
    if existing is not None and not existing.startswith(MARKER):
        raise UsageError(f"{path} exists and was not written by `invoke devcontainer`", fix="move it aside, or write elsewhere with --output DIR")
    info = ensure_image(ctx, topic, log).info  # built when missing; a stale one gets a warning, not a rebuild
    host.hf_cache.mkdir(parents=True, exist_ok=True)  # a bind mount's source must exist, and be yours
    text = render_for(ctx, topic, host, folder, info, log)
    for name in from_config_only(host, text):
        log(f"note: kit.toml sets {name}; the dev container reads it from the editor's environment (${{localEnv:{name}}}): export it there")
    if text == existing:
        return f"{rel_path(path)} is current: {content_tag(info, topic.name)}"
    write_atomically(path, text)
    user = f"as {host.uid}:{host.gid}" if host.uid else "as root"
    gpus = "GPUs required" if topic.gpus_min else "GPUs where the host has them"
    lines = [
        f"{'updated' if existing else 'wrote'} {rel_path(path)}: {content_tag(info, topic.name)} {user}, {gpus}",
        f"open {folder} in VS Code or Cursor (Dev Containers: Reopen in Container), or: devcontainer up --workspace-folder {folder}",
    ]
    if existing:
        lines.append("a container made from the old file runs on as it was: rebuild it (Rebuild Container, devcontainer up --remove-existing-container)")
    return "\n".join(lines)


def render_for(ctx: Context, topic: Topic, host: Host, folder: Path, info: ImageInfo, log: Log) -> str:
    tag = content_tag(info, topic.name)
    host = replace(host, memlock=memlock_allowed(ctx.engine, tag, host.environ, log))
    # The editor gives the container every GPU where Docker can (hostRequirements.gpu): the
    # kernel cache is this host's GPUs' (the file is written per machine).
    kernels = kernel_cache(ctx, topic, info.id, GpuSelection("all", "all") if host_has_gpus() else GpuSelection(None, "none"), root=host.as_root, host=host)
    spec = editor_spec(
        ShellOptions(topic=topic.name), host, ctx.config, GPUS, workspace=folder, topic=topic.name, base=ctx.base_name, image=tag, kernels=kernels,
    )  # fmt: skip
    return render(spec, workspace=folder, topic=topic, base=ctx.base_name, image=info)


def from_config_only(host: Host, text: str) -> list[str]:
    """Names the file passes from the editor's environment whose value here comes from
    kit.toml, not the environment (a proxy, HF_ENDPOINT): the editor would not have it."""
    data = parse(text) or {}
    return [name for name in data.get("remoteEnv", {}) if name not in PASSTHROUGH and not host.environ.get(name)]
