"""A container as the kit decides it, and the docker arguments it becomes. The rules that
fill a spec live with the commands (runtime/shell.py: GPUs, IPC, limits, identity...);
only the engine turns a spec into argv (`run_call`, `exec_call`), so a caller changes a
container by changing the spec (`dataclasses.replace`), never by editing argv."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mlsyskit.engine.emulation import emulation_volumes


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """A container to create, described once: what every way of running it (CLI argv, compose) is made from."""

    image: str
    command: tuple[str, ...] = ()
    name: str = ""
    hostname: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: str | None = None  # docker's --gpus value: "all", '"device=0,2"'; None: no GPU
    shm_size: str = ""  # a private /dev/shm of this size (--shm-size)
    host_ipc: bool = False  # share the host's IPC namespace (--ipc=host): NCCL and DataLoaders, not probes
    ulimits: tuple[str, ...] = ()  # "memlock=-1:-1", "stack=67108864"
    init: bool = True  # signals reach the command, zombies are reaped
    user: str = ""  # "UID:GID"; "": the image's (root)
    tmpfs: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()  # -v HOST:CONTAINER[:MODE]
    mounts: tuple[str, ...] = ()  # docker's --mount type=... form
    workdir: str = ""
    env: tuple[str, ...] = ()  # KEY=VALUE pairs that may show in argv
    # Values that must not show in argv (tokens, proxies with credentials): `-e NAME` in
    # argv, the value in the docker client's environment.
    env_by_name: Mapping[str, str] = field(default_factory=dict, repr=False)
    ports: tuple[str, ...] = ()  # docker -p values
    network: str = ""
    remove: bool = False  # --rm
    interactive: bool = False  # -i
    tty: bool = False  # -t
    entrypoint: str | None = None
    platform: str = ""  # linux/arm64: an image of another architecture, run under qemu


@dataclass(frozen=True)
class DockerCall:
    """A docker command line (without the client) and the values it passes by name: `-e
    NAME` in args, NAME's value in `env`, added to the docker client's environment."""

    args: tuple[str, ...]
    env: dict[str, str] = field(repr=False)


def _named_env(spec: ContainerSpec) -> list[str]:
    return [arg for key in spec.env_by_name for arg in ("-e", key)]


def run_call(spec: ContainerSpec, *, detach: bool = False) -> DockerCall:
    """`docker run` for the spec (`-d` with `detach`)."""
    args: list[str] = ["run"]
    if detach:
        args.append("-d")
    if spec.remove:
        args.append("--rm")
    if spec.interactive:
        args.append("-i")
    if spec.tty:
        args.append("-t")
    if spec.name:
        args += ["--name", spec.name]
    if spec.hostname:
        args += ["--hostname", spec.hostname]
    if spec.init:
        args.append("--init")
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    if spec.gpus:
        args += ["--gpus", spec.gpus]
    if spec.shm_size:
        args += ["--shm-size", spec.shm_size]
    elif spec.host_ipc:
        args.append("--ipc=host")
    for ulimit in spec.ulimits:
        args += ["--ulimit", ulimit]
    for volume in (*spec.volumes, *emulation_volumes(spec.platform)):
        args += ["-v", volume]
    if spec.workdir:
        args += ["-w", spec.workdir]
    if spec.user:
        args += ["--user", spec.user]
    for tmpfs in spec.tmpfs:
        args += ["--tmpfs", tmpfs]
    for pair in spec.env:
        args += ["-e", pair]
    for mount in spec.mounts:
        args += ["--mount", mount]
    if spec.network:
        args += ["--network", spec.network]
    if spec.network != "host":  # host networking publishes nothing: the ports are the host's
        for port in spec.ports:
            args += ["-p", port]
    args += _named_env(spec)
    if spec.entrypoint is not None:
        args += ["--entrypoint", spec.entrypoint]
    if spec.platform:
        args += ["--platform", spec.platform]
    return DockerCall((*args, spec.image, *spec.command), dict(spec.env_by_name))


def exec_call(
    container: str,
    command: tuple[str, ...],
    *,
    workdir: str = "",
    env: tuple[str, ...] = (),
    env_by_name: Mapping[str, str] | None = None,
    interactive: bool = True,
    tty: bool = False,
) -> DockerCall:
    """`docker exec` into a running container."""
    args: list[str] = ["exec"]
    if interactive:
        args.append("-i")
    if tty:
        args.append("-t")
    if workdir:
        args += ["-w", workdir]
    for pair in env:
        args += ["-e", pair]
    named = dict(env_by_name or {})
    for key in named:
        args += ["-e", key]
    return DockerCall((*args, container, *command), named)
