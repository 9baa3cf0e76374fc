"""`invoke shell`'s first stages: the options checked, the GPUs chosen, the context resolved
(the topic, its architecture, and the engine asked for the topic's image: the docker CLI
answers while the next stages run), or for `--name` the container looked for. Apart from
runtime/shell.py, which holds the stages after these, so that `./kit shell` imports that
module, the image stage's and the kernel caches' while the engine answers (shell_cli.py;
BENCHMARKS.md, "The shell's start-up")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlsyskit.context import Context
from mlsyskit.data.catalog import Topic
from mlsyskit.engine import ContainerInfo, Engine
from mlsyskit.errors import UsageError
from mlsyskit.runtime.gpus import GpuSelection, choose_gpus, parse_request

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHM_RE = re.compile(r"\d+(\.\d+)?[bkmgBKMG]?")


@dataclass(frozen=True, kw_only=True)
class ShellOptions:
    """What the user asked for, as typed (validated by `check_options`)."""

    topic: str = ""
    base: str = ""
    command: tuple[str, ...] = ()
    workspace: str = ""
    gpus: str = ""
    shm_size: str = ""
    mounts: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    network: str = ""
    name: str = ""
    root: bool = False


def check_options(opts: ShellOptions) -> None:
    """Refuse malformed options before anything is started (one line each)."""
    if opts.name and not NAME_RE.fullmatch(opts.name):
        raise UsageError(f"--name '{opts.name}' is not a valid container name", fix="letters, digits, '_', '.', '-'")
    if not opts.topic and not opts.name:
        raise UsageError("no topic given", fix="invoke shell TOPIC, or invoke shell --name NAME to re-enter one")
    if opts.shm_size and not SHM_RE.fullmatch(opts.shm_size):
        raise UsageError(f"--shm-size '{opts.shm_size}' is not a size", fix="e.g. --shm-size 16g")
    for item in opts.env:
        key = item.split("=", 1)[0]
        if not ENV_KEY_RE.fullmatch(key):
            raise UsageError(f"-e '{item}' is not KEY=VALUE (or KEY, to pass the host's value)")
    for port in opts.ports:
        if not re.fullmatch(r"[\w.:\[\]-]+(/(tcp|udp|sctp))?", port):
            raise UsageError(f"-p '{port}' is not a port", fix="-p 8000, -p 8080:80 or -p 127.0.0.1:8000:8000")
    parse_request(opts.gpus)


@dataclass(frozen=True)
class Request:
    """What the first stages resolved: the context with the topic and GPUs of a container to
    make, or, for `--name`, the container of that name where one exists (re-entered)."""

    opts: ShellOptions
    ctx: Context
    topic: Topic | None = None
    gpus: GpuSelection | None = None
    existing: ContainerInfo | None = None


def resolve_request(opts: ShellOptions) -> Request:
    """The options checked, then the GPUs and the context (an unknown base or topic: one
    line); for `--name`, the container looked up first and, where there is none, the
    topic it is to be made from."""
    check_options(opts)
    if not opts.name:
        gpus = choose_gpus(opts.gpus)  # before the engine is asked anything: nvidia-smi, /dev
        ctx = Context.resolve(opts.base, connect=Engine.for_running, topics=[opts.topic], look_up=True)
        (topic,) = ctx.topics
        return Request(opts, ctx, topic, gpus)
    ctx = Context.resolve(opts.base, connect=Engine.for_running)  # an unknown base: one line
    named = ctx.catalog.topic(opts.topic) if opts.topic else None  # unknown: the known ones listed
    existing = ctx.engine.container_info(opts.name)
    if existing is not None:
        return Request(opts, ctx, named, existing=existing)
    if named is None:
        raise UsageError(f"no container named '{opts.name}'", fix=f"create it with `invoke shell TOPIC --name {opts.name}`")
    ctx.topics_for_arch([named])  # no image for this architecture, or no emulation: one line
    return Request(opts, ctx, named, choose_gpus(opts.gpus))
