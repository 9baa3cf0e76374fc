"""`invoke shell` and `invoke ps`: a correct, GPU-ready working container in one command.

The container is decided by pure functions (`one_off_spec`, `named_spec`, `enter_call`)
from the options, the host's facts (`Host`) and the config, as a `ContainerSpec` the
engine turns into docker's arguments, and tested without Docker. `shell()` gathers those facts, builds the image when it is missing, and then
becomes the docker client (exec), so the terminal, signals and exit code are docker's own.

Decisions the issue leaves open (the README's `invoke shell` section gives the user's view):
- A TTY is allocated only when stdin *and* stdout are terminals: with stdout redirected a
  TTY would turn newlines into CRLF and merge stderr into the file.
- Every container gets `--init`, so signals reach the command and worker zombies are reaped.
- As the host user, HOME is a tmpfs owned by that user (exec allowed: triton and torch
  extensions load .so files from it); `~/.cache` is a second one so the HF cache mount
  inside it leaves `~/.cache` writable. uv's cache moves there too (the image points it at
  /root). There is no passwd entry for the UID: prompts say "I have no name!", USER and
  LOGNAME are set so getpass and torch's caches work.
- Tokens, proxies and the HF endpoint are passed at run time, never baked, and never in argv
  (`ps`). Secrets (tokens, a proxy with credentials, what `-e KEY` takes from the host) reach
  a one-off container as files of a private folder (runtime/secrets.py: HF_TOKEN_PATH, and a
  loader that exports the rest), so they are not in `docker inspect` either; the folder is
  removed when the container's `docker run` ends. A named container gets them on every
  `docker exec -e NAME`, whose environment inspect does not show, not at its creation.
- The config's CA bundle (the host's, by default) is mounted read-only and named in
  SSL_CERT_FILE / REQUESTS_CA_BUNDLE, so downloads work behind a TLS-inspecting proxy.
- `--mount HOST:CTR[:ro]` refuses a host path that does not exist (docker would create it,
  owned by root); `--mount type=...` is docker's long form, passed through.
- `memlock=-1` is probed once per Docker daemon (cached in ~/.cache/mlsyskit/); where the
  daemon may not raise it the container runs with the default and one warning says so.
- JIT and compile caches outlive the container: one host folder per image ID, GPU
  architecture and container user at /var/cache/mlsyskit/kernels (runtime/caches.py)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from mlsyskit import LABEL_PREFIX
from mlsyskit.context import Context
from mlsyskit.data.catalog import Topic
from mlsyskit.data.config import Config
from mlsyskit.engine import ContainerInfo, ContainerSpec, DockerCall, Engine, exec_call, foreign_platform, run_call
from mlsyskit.errors import EngineError, UsageError
from mlsyskit.images.ensure import ensure_image
from mlsyskit.report import table
from mlsyskit.runtime import secrets
from mlsyskit.runtime.caches import KernelMount
from mlsyskit.runtime.gpus import GpuSelection
from mlsyskit.runtime.host import (
    MEMLOCK,
    MEMLOCK_WARNING,
    Host,
    first_taken_port,
    forget_memlock,
    memlock_allowed,
    port_taken,
    read_host,
)
from mlsyskit.runtime.shell_request import Request, resolve_request
from mlsyskit.runtime.shell_request import ShellOptions as ShellOptions  # the options: defined with the first stages
from mlsyskit.runtime.shell_request import check_options as check_options

Log = Callable[[str], None]

WORKSPACE = "/workspace"
USER_HOME = "/home/kit"
ROOT_HOME = "/root"
HF_IN_HOME = ".cache/huggingface"
CA_PATH = "/etc/mlsyskit/ca.pem"
STACK_BYTES = 67108864
SHELL = ("bash",)
KEEP_ALIVE = ("sleep", "infinity")
PASSTHROUGH = secrets.TOKENS

LABEL = f"{LABEL_PREFIX}.shell"  # on every container the kit starts: "named" or "one-off"
LABEL_TOPIC = f"{LABEL}.topic"
LABEL_BASE = f"{LABEL}.base"
LABEL_WORKSPACE = f"{LABEL}.workspace"
LABEL_GPUS = f"{LABEL}.gpus"
LABEL_USER = f"{LABEL}.user"

# Options that shape a container when it is created; re-entering a named one ignores them.
CREATION_OPTIONS = {
    "base": "--base",
    "workspace": "--workspace",
    "gpus": "--gpus",
    "shm_size": "--shm-size",
    "mounts": "--mount",
    "ports": "-p",
    "network": "--network",
    "root": "--root",
}


# --- pure: options -> docker arguments ---------------------------------------------------


def home_in_container(host: Host, root: bool) -> str:
    return ROOT_HOME if root or host.as_root else USER_HOME


#: `--mount` values parsed: (bind volumes, docker `--mount` values).
Binds = tuple[tuple[str, ...], tuple[str, ...]]


def parse_mounts(specs: Sequence[str], cwd: Path) -> Binds:
    """`--mount` values as (bind volumes, docker `--mount` values). HOST:CTR[:MODE] (HOST
    relative to the current directory, `~` expanded) must exist; `type=...` is docker's own
    syntax, passed on."""
    volumes: list[str] = []
    mounts: list[str] = []
    for spec in specs:
        if spec.startswith(("type=", "source=", "src=", "target=", "dst=")):
            mounts.append(spec)
            continue
        parts = spec.split(":")
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise UsageError(f"--mount '{spec}' is not HOST[:CONTAINER[:ro]]")
        source = (cwd / Path(parts[0]).expanduser()).resolve()
        target = parts[1] if len(parts) > 1 and parts[1] else str(source)
        if not source.exists():
            raise UsageError(f"--mount '{spec}': {source} does not exist", fix="create it first (docker would make it, owned by root)")
        if not target.startswith("/"):
            raise UsageError(f"--mount '{spec}': the container path must be absolute")
        volumes.append(":".join([str(source), target, *parts[2:3]]))
    return tuple(volumes), tuple(mounts)


def check_ports_free(opts: ShellOptions, taken: Callable[[str, int, str], bool] = port_taken) -> None:
    """Refuse a `-p` whose host port is in use before any container exists: docker would
    create the container, fail to start it (exit 125, several lines) and, for a one-off
    run that has become docker, nobody would remove what it left."""
    if opts.network == "host":
        return
    if found := first_taken_port(opts.ports, taken):
        where, port, proto = found
        raise EngineError(f"port {where}/{proto} is already in use on this host", fix=f"pick another (-p {port + 1}:...) or stop what holds it")


def port_values(ports: Sequence[str]) -> tuple[str, ...]:
    """`-p 8000` publishes 8000 on 8000 (docker alone would pick a random host port)."""
    values = []
    for port in ports:
        number, _, proto = port.partition("/")
        published = f"{number}:{number}" if number.isdigit() else number
        values.append(f"{published}/{proto}" if proto else published)
    return tuple(values)


def runtime_env(opts: ShellOptions, host: Host, config: Config) -> tuple[tuple[str, ...], dict[str, str]]:
    """What is passed at run time, never baked: tokens, proxies, the HF endpoint and the
    user's `-e`, as (KEY=VALUE pairs typed by the user, values passed by name). Host and
    config values travel by name (out of argv); `-e KEY=VAL` as typed."""
    by_name: dict[str, str] = {}
    for key in PASSTHROUGH:
        if host.environ.get(key):
            by_name[key] = host.environ[key]
    by_name.update(config.proxy)
    endpoint = config.hf_endpoint or host.environ.get("HF_ENDPOINT", "")
    if endpoint:
        by_name["HF_ENDPOINT"] = endpoint
    typed: list[str] = []
    for item in opts.env:
        if "=" in item:
            typed.append(item)
        elif item in host.environ:
            by_name[item] = host.environ[item]
    return tuple(typed), by_name


@dataclass(frozen=True)
class Identity:
    """Who runs inside, where HOME is, and where the HF cache and CA bundle appear."""

    user: str
    tmpfs: tuple[str, ...]
    env: tuple[str, ...]
    volumes: tuple[str, ...]


def identity(host: Host, root: bool, config: Config) -> Identity:
    home = home_in_container(host, root)
    user, env = "", [f"HF_HOME={home}/{HF_IN_HOME}"]
    tmpfs: tuple[str, ...] = ()
    if home == USER_HOME:
        owner = f"uid={host.uid},gid={host.gid},mode=0755"
        user = f"{host.uid}:{host.gid}"
        tmpfs = (f"{USER_HOME}:exec,{owner}", f"{USER_HOME}/.cache:exec,{owner}")
        env = [
            f"HOME={USER_HOME}", f"USER={host.user}", f"LOGNAME={host.user}", f"UV_CACHE_DIR={USER_HOME}/.cache/uv", *env,
        ]  # fmt: skip
    volumes = [f"{host.hf_cache}:{home}/{HF_IN_HOME}"]
    if config.ca_bundle:
        volumes.append(f"{config.ca_bundle}:{CA_PATH}:ro")
        env += [f"SSL_CERT_FILE={CA_PATH}", f"REQUESTS_CA_BUNDLE={CA_PATH}"]
    return Identity(user, tmpfs, tuple(env), tuple(volumes))


def container_spec(
    opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, image: str, kind: str,
    kernels: KernelMount | None = None, binds: Binds | None = None, platform: str | None = None,
) -> ContainerSpec:  # fmt: skip
    """The container every kit command starts for a topic (shell, smoke): GPUs, shared
    memory, limits, workspace, identity, HF cache, kernel cache, labels. Not the command,
    stdio or the runtime env. `binds`: `--mount`s as `parse_mounts` gave them (else parsed
    here); `platform`: as the context decided it (`Context.platform`; else from `base`)."""
    root = opts.root or host.as_root
    who = identity(host, root, config)
    volumes, mounts = binds if binds is not None else parse_mounts(opts.mounts, host.cwd)
    kernel_volumes, kernel_env = (kernels.volumes, kernels.env) if kernels else ((), ())
    ulimits = (MEMLOCK,) if host.memlock else ()  # RDMA (NCCL over InfiniBand) pins memory
    return ContainerSpec(
        image=image,
        labels={
            LABEL: kind,
            LABEL_TOPIC: topic,
            LABEL_BASE: base,
            LABEL_WORKSPACE: str(workspace),
            LABEL_GPUS: gpus.label,
            LABEL_USER: "root" if root else f"{host.uid}:{host.gid}",
        },
        gpus=gpus.docker_value,
        # NCCL and DataLoader workers need far more than docker's 64 MB /dev/shm.
        shm_size=opts.shm_size,
        host_ipc=not opts.shm_size,
        ulimits=(*ulimits, f"stack={STACK_BYTES}"),
        volumes=(f"{workspace}:{WORKSPACE}", *who.volumes, *kernel_volumes, *volumes),
        mounts=mounts,
        workdir=WORKSPACE,
        user=who.user,
        tmpfs=who.tmpfs,
        env=(*who.env, *kernel_env),
        network=opts.network,
        ports=port_values(opts.ports),
        platform=platform_of(base) if platform is None else platform,
    )


def platform_of(base: str) -> str:
    """`linux/arm64` for an image of another architecture than this host's (run under qemu);
    "" for the host's own, so docker's default applies."""
    from mlsyskit.data.catalog import arch_of

    return foreign_platform(arch_of(base) or "amd64")


def secret_values(opts: ShellOptions, host: Host, config: Config) -> dict[str, str]:
    """The run-time values that must stay out of `docker inspect` (runtime/secrets.py)."""
    return secrets.split(runtime_env(opts, host, config)[1])[1]


def one_off_spec(
    opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, image: str,
    secrets_at: Path | None = None, kernels: KernelMount | None = None, binds: Binds | None = None, platform: str | None = None,
) -> ContainerSpec:  # fmt: skip
    """`invoke shell TOPIC [-- CMD...]`: removed when the command ends. Secrets come from the
    private folder `secrets_at`, where the caller wrote `secret_values` (secrets.write)."""
    typed, by_name = runtime_env(opts, host, config)
    plain, hidden = secrets.split(by_name)
    command = opts.command or SHELL
    delivered: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # (volumes, env) that bring the secrets
    if hidden:
        if secrets_at is None:
            raise ValueError("a one-off container with secrets needs the private folder they were written to")
        delivery = secrets.delivery(hidden, secrets_at)
        assert delivery is not None
        delivered, command = ((delivery.volume,), delivery.env), delivery.wrap(command)
    shape = container_spec(
        opts, host, config, gpus, workspace=workspace, topic=topic, base=base, image=image, kind="one-off", kernels=kernels, binds=binds, platform=platform,
    )  # fmt: skip
    return replace(
        shape, command=command, remove=True, interactive=True, tty=host.tty, volumes=(*shape.volumes, *delivered[0]),
        env=(*shape.env, *typed, *delivered[1]), env_by_name=plain,
    )  # fmt: skip


def named_spec(
    opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, image: str,
    kernels: KernelMount | None = None, binds: Binds | None = None, platform: str | None = None,
) -> ContainerSpec:  # fmt: skip
    """A named, long-lived container (`sleep infinity`, entered with exec). Tokens are not
    given here: each `docker exec` passes the current ones."""
    shape = container_spec(
        opts, host, config, gpus, workspace=workspace, topic=topic, base=base, image=image, kind="named", kernels=kernels, binds=binds, platform=platform,
    )  # fmt: skip
    typed = tuple(item for item in opts.env if "=" in item)
    return replace(shape, name=opts.name, hostname=opts.name, command=KEEP_ALIVE, env=(*shape.env, *typed))


def editor_spec(
    opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, image: str,
    kernels: KernelMount | None = None,
) -> ContainerSpec:  # fmt: skip
    """The container an editor opens on a workspace (`invoke devcontainer`): a named
    container's rules, labelled `devcontainer`. What `runtime_env` passes by name is named
    in `env_by_name` without a value (the tokens always, set now or not): the editor gives
    the values on each entry from its own environment, as `invoke shell --name` does."""
    shape = container_spec(opts, host, config, gpus, workspace=workspace, topic=topic, base=base, image=image, kind="devcontainer", kernels=kernels)
    typed, by_name = runtime_env(opts, host, config)
    return replace(shape, env=(*shape.env, *typed), env_by_name=dict.fromkeys((*PASSTHROUGH, *by_name), ""))


def enter_call(opts: ShellOptions, host: Host, config: Config, *, container: str) -> DockerCall:
    """`docker exec` into a named container, with the runtime env of this invocation."""
    typed, by_name = runtime_env(opts, host, config)
    return exec_call(container, opts.command or SHELL, workdir=WORKSPACE, env=typed, env_by_name=by_name, tty=host.tty)


def creation_options_given(opts: ShellOptions) -> list[str]:
    defaults = ShellOptions()
    return [flag for name, flag in CREATION_OPTIONS.items() if getattr(opts, name) != getattr(defaults, name)]


def command_from_argv(remainder: str, argv: Sequence[str]) -> tuple[str, ...]:
    """The command after `--`, word for word. invoke's `Context.remainder` joins the words
    with spaces (`sh -c 'exit 7'` would come back as `sh -c exit 7`), so the words are taken
    from argv when argv agrees with the remainder; else the remainder is split like a shell."""
    if not remainder:
        return ()
    argv = list(argv)
    if "--" in argv:
        tail = argv[argv.index("--") + 1 :]
        if " ".join(tail) == remainder:
            return tuple(tail)
    return tuple(shlex.split(remainder))


# --- doing it ---------------------------------------------------------------------------


def resolve_workspace(opts: ShellOptions, host: Host) -> Path:
    workspace = (host.cwd / Path(opts.workspace).expanduser()).resolve() if opts.workspace else host.cwd.resolve()
    if not workspace.is_dir():
        raise UsageError(f"--workspace {opts.workspace}: not a directory")
    return workspace


def shell(opts: ShellOptions, log: Log) -> NoReturn:
    """Run `invoke shell`: never returns (becomes `docker run` or `docker exec`) unless it
    raises a KitError, in which case nothing was left running. One straight pipeline, each
    stage handed what the one before gave, none calling back into an earlier one: the
    options checked -> the GPUs chosen -> the context resolved (topic, architecture, the
    engine asked for the image) -> the host's facts -> the image (its answer read; built
    when missing, freshness) -> the kernel cache -> the secrets -> the container spec -> the
    engine. The stages up to the context are runtime/shell_request.py's (`./kit shell`
    imports this module while the engine answers), the rest `run`'s."""
    run(resolve_request(opts), log)


def run(request: Request, log: Log) -> NoReturn:
    """The stages after the context: a named container that exists is re-entered; else the
    container is made from the request's context, topic and GPUs, and the process becomes it."""
    opts, ctx = request.opts, request.ctx
    if request.existing is not None:
        reenter(ctx.engine, opts, read_host(), ctx.config, request.existing, log)
    topic, gpus = request.topic, request.gpus
    assert topic is not None and gpus is not None, "resolve_request gives both where no container exists"
    config, base, engine = ctx.config, ctx.base_name, ctx.engine
    host = read_host(known_memlock=True)
    workspace = resolve_workspace(opts, host)
    binds = parse_mounts(opts.mounts, host.cwd)  # refuses a missing path before anything is built
    check_ports_free(opts)
    found = ensure_image(ctx, topic, log)
    image = found.ref
    if gpus.warning:
        log(f"warning: {gpus.warning}")
    if opts.network == "host" and opts.ports:
        log("warning: -p is ignored with --network host (the container uses the host's ports)")
    host.hf_cache.mkdir(parents=True, exist_ok=True)  # else docker creates it, owned by root
    if host.memlock is None:  # the first container since the daemon started: ask it, with the image
        host = replace(host, memlock=memlock_allowed(engine, image, host.environ, log))
    kernels = kernel_cache(ctx, topic, found.id, gpus, root=opts.root or host.as_root, host=host)
    where = Where(workspace=workspace, topic=topic.name, base=base, image=image, kernels=kernels, binds=binds, platform=ctx.platform)
    if not opts.name:
        become_one_off(engine, opts, host, config, gpus, where)
    create_named(engine, opts, host, config, gpus, where, log)
    engine.become(enter_call(opts, host, config, container=opts.name))


def become_one_off(engine: Engine, opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, where: Where) -> NoReturn:
    """Become the one-off container's `docker run`. Its secrets go to a private folder that a
    detached watcher removes once that `docker run` (this very process, after exec) ends."""
    hidden = secret_values(opts, host, config)
    folder = None
    if hidden:
        folder = secrets.new_folder(host.environ)
        secrets.write(hidden, folder)
        secrets.remove_when_gone(folder, os.getpid())  # this process, once it is docker run
    engine.become(run_call(one_off_spec(opts, host, config, gpus, **vars(where), secrets_at=folder)))


@dataclass(frozen=True)
class Where:
    """Which image a topic container runs and where: shared by one-off and named ones."""

    workspace: Path
    topic: str
    base: str
    image: str
    kernels: KernelMount | None = None
    binds: Binds | None = None  # the `--mount`s, parsed once
    platform: str | None = None  # as the context decided it (None: from the base)


def kernel_cache(ctx: Context, topic: Topic, image_id: str, gpus: GpuSelection, *, root: bool, host: Host) -> KernelMount | None:
    """The container's kernel cache (runtime/caches.py): keyed by the image's ID, the
    architecture of the GPUs it gets and whether it runs as root or as the host's UID."""
    from mlsyskit.runtime import caches

    user = caches.ROOT_USER if root else caches.user_dim(host.uid)
    return caches.for_container(ctx.catalog, topic, image_id, gpus=gpus.label, user=user, environ=host.environ)


def create_named(engine: Engine, opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, where: Where, log: Log) -> None:
    """Start the long-lived container. The engine removes what docker left when it fails
    (a container created but not started), so nothing stays behind."""
    for attempt in (1, 2):
        try:
            engine.start(named_spec(opts, host, config, gpus, **vars(where)))
            return
        except EngineError as exc:
            if attempt == 1 and host.memlock and "rlimit" in exc.message:
                forget_memlock(host.environ)  # the cached fact is stale: the daemon changed
                log(MEMLOCK_WARNING)
                host = replace(host, memlock=False)
                continue
            raise


def reenter(engine: Engine, opts: ShellOptions, host: Host, config: Config, existing: ContainerInfo, log: Log) -> NoReturn:
    name = opts.name
    labels = existing.labels
    if labels.get(LABEL) != "named":
        raise UsageError(f"container '{name}' was not started by `invoke shell --name`", fix="pick another --name")
    if opts.topic and labels.get(LABEL_TOPIC) != opts.topic:
        raise UsageError(
            f"container '{name}' runs topic '{labels.get(LABEL_TOPIC)}', not '{opts.topic}'",
            fix=f"`invoke shell --name {name}` re-enters it; pick another --name for {opts.topic}",
        )
    ignored = creation_options_given(opts)
    if ignored:
        log(f"warning: '{name}' exists, so {', '.join(ignored)} had no effect: they shape a container when it is created (`docker rm -f {name}` to start over)")
    workspace = labels.get(LABEL_WORKSPACE, "")
    if workspace and Path(workspace) != host.cwd.resolve() and not opts.workspace:
        log(f"note: '{name}' works in {workspace} (mounted at {WORKSPACE} when it was created)")
    if not existing.running:
        engine.start_container(name)
    engine.become(enter_call(opts, host, config, container=name))


# --- invoke ps --------------------------------------------------------------------------


def ps() -> str:
    engine = Engine.for_running()
    listed = engine.containers(LABEL)
    if not listed:
        return "no kit containers: `invoke shell TOPIC --name NAME` starts a long-lived one"
    rows = []
    for info in sorted(listed, key=lambda c: c.name):
        labels = info.labels
        status = f"exited ({info.exit_code})" if info.status == "exited" else info.status
        rows.append(
            (
                info.name,
                labels.get(LABEL_TOPIC, "?"),
                labels.get(LABEL, "?"),
                status,
                labels.get(LABEL_GPUS, "?"),
                labels.get(LABEL_USER, "?"),
                labels.get(LABEL_WORKSPACE, "?"),
                info.created[:19].replace("T", " "),
            )
        )
    headers = ("name", "topic", "kind", "status", "gpus", "user", "workspace", "created (UTC)")
    return table(headers, rows) + "\nre-enter: invoke shell --name NAME    remove: docker rm -f NAME"
