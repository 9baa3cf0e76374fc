"""`invoke shell` and `invoke ps`: a correct, GPU-ready working container in one command.

The docker argument list is decided by pure functions (`one_off_call`, `create_call`,
`exec_call`) from the options, the host's facts (`Host`) and the config, and tested without
Docker. `shell()` gathers those facts, builds the image when it is missing, and then
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
- Tokens, proxies and the HF endpoint are passed at run time by name (`-e NAME`, the value
  in the docker client's environment), so they appear in neither argv (`ps`) nor any image.
  A named container gets them on every `docker exec`, not at its creation.
- The config's CA bundle (the host's, by default) is mounted read-only and named in
  SSL_CERT_FILE / REQUESTS_CA_BUNDLE, so downloads work behind a TLS-inspecting proxy.
- `--mount HOST:CTR[:ro]` refuses a host path that does not exist (docker would create it,
  owned by root); `--mount type=...` is docker's long form, passed through.
- `memlock=-1` is probed once per Docker daemon (cached in ~/.cache/mlsyskit/); where the
  daemon may not raise it the container runs with the default and one warning says so."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from . import LABEL_PREFIX
from .catalog import Topic, load_catalog
from .config import Config, load_config
from .engine import Engine
from .errors import EngineError, UsageError
from .gpus import GpuSelection, container_toolkit_present, host_has_gpus, parse_request, query_gpus, select
from .lockfile import lock_sha256
from .plan import topic_alias
from .report import table

Log = Callable[[str], None]

WORKSPACE = "/workspace"
USER_HOME = "/home/kit"
ROOT_HOME = "/root"
HF_IN_HOME = ".cache/huggingface"
CA_PATH = "/etc/mlsyskit/ca.pem"
STACK_BYTES = 67108864
MEMLOCK = "memlock=-1:-1"
SHELL = ("bash",)
KEEP_ALIVE = ("sleep", "infinity")
PASSTHROUGH = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")

LABEL = f"{LABEL_PREFIX}.shell"  # on every container the kit starts: "named" or "one-off"
LABEL_TOPIC = f"{LABEL}.topic"
LABEL_BASE = f"{LABEL}.base"
LABEL_WORKSPACE = f"{LABEL}.workspace"
LABEL_GPUS = f"{LABEL}.gpus"
LABEL_USER = f"{LABEL}.user"

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
#: docker's refusal of a second container of the same name. A port that is taken also
#: says "already in use" ("bind: address already in use"): that container is ours to remove.
NAME_IN_USE = "is already in use by container"
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHM_RE = re.compile(r"\d+(\.\d+)?[bkmgBKMG]?")
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


@dataclass(frozen=True, kw_only=True)
class Host:
    """The facts about the invoking host that the docker arguments depend on."""

    uid: int
    gid: int
    user: str
    cwd: Path
    hf_cache: Path
    environ: Mapping[str, str] = field(default_factory=dict)
    tty: bool = False
    memlock: bool = True  # the daemon lets a container raise memlock to unlimited

    @property
    def as_root(self) -> bool:
        return self.uid == 0


@dataclass(frozen=True)
class DockerCall:
    """A docker command line (without the client) and the values it passes by name:
    `-e NAME` in args, NAME's value in `env`, the docker client's environment."""

    args: tuple[str, ...]
    env: dict[str, str]


# --- pure: options -> docker arguments ---------------------------------------------------


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


def home_in_container(host: Host, root: bool) -> str:
    return ROOT_HOME if root or host.as_root else USER_HOME


def mount_args(specs: Sequence[str], cwd: Path) -> list[str]:
    """`--mount` values as docker flags. HOST:CTR[:MODE] (HOST relative to the current
    directory, `~` expanded) must exist; `type=...` is docker's own syntax, passed on."""
    args: list[str] = []
    for spec in specs:
        if spec.startswith(("type=", "source=", "src=", "target=", "dst=")):
            args += ["--mount", spec]
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
        args += ["-v", ":".join([str(source), target, *parts[2:3]])]
    return args


def published_ports(ports: Sequence[str]) -> list[tuple[str, int, str]]:
    """(host address, host port, protocol) of each `-p` value: `8000`, `8080:80`,
    `127.0.0.1:8000:8000`, `8000/udp`. A range or an unpublished port gives nothing."""
    found = []
    for port in ports:
        spec, _, proto = port.partition("/")
        parts = spec.rsplit(":", 2) if not spec.startswith("[") else [spec]
        if len(parts) == 1:
            address, host_port = "", parts[0]
        elif len(parts) == 2:
            address, host_port = "", parts[0]
        else:
            address, host_port = parts[0], parts[1]
        if host_port.isdigit():
            found.append((address, int(host_port), proto or "tcp"))
    return found


def port_taken(address: str, port: int, proto: str = "tcp") -> bool:
    """Whether something on this host already holds the port docker would publish on."""
    import socket

    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
        try:
            sock.bind((address or "0.0.0.0", port))
        except PermissionError:
            return False  # a privileged port: docker binds it, we may not; let docker decide
        except OSError:
            return True
    return False


def check_ports_free(opts: ShellOptions, taken: Callable[[str, int, str], bool] = port_taken) -> None:
    """Refuse a `-p` whose host port is in use before any container exists: docker would
    create the container, fail to start it (exit 125, several lines) and, for a one-off
    run that has become docker, nobody would remove what it left."""
    if opts.network == "host":
        return
    for address, port, proto in published_ports(opts.ports):
        if taken(address, port, proto):
            where = f"{address}:{port}" if address else str(port)
            raise EngineError(
                f"port {where}/{proto} is already in use on this host", fix=f"pick another (-p {port + 1}:...) or stop what holds it"
            )


def port_args(ports: Sequence[str]) -> list[str]:
    args: list[str] = []
    for port in ports:
        number, _, proto = port.partition("/")
        published = f"{number}:{number}" if number.isdigit() else number
        args += ["-p", f"{published}/{proto}" if proto else published]
    return args


def runtime_env(opts: ShellOptions, host: Host, config: Config) -> tuple[list[str], dict[str, str]]:
    """What is passed at run time, never baked: tokens, proxies, the HF endpoint and the
    user's `-e`. Host and config values travel by name (out of argv); `-e KEY=VAL` as typed."""
    values: dict[str, str] = {}
    for key in PASSTHROUGH:
        if host.environ.get(key):
            values[key] = host.environ[key]
    values.update(config.proxy_env())
    endpoint = config.hf_endpoint or host.environ.get("HF_ENDPOINT", "")
    if endpoint:
        values["HF_ENDPOINT"] = endpoint
    args: list[str] = []
    for key in values:
        args += ["-e", key]
    for item in opts.env:
        if "=" in item:
            args += ["-e", item]
        elif item in host.environ:
            args += ["-e", item]
            values[item] = host.environ[item]
    # The docker client only needs the values it does not already have.
    return args, {k: v for k, v in values.items() if host.environ.get(k) != v}


def identity_args(host: Host, root: bool, config: Config) -> list[str]:
    """Who runs inside, where HOME is, and where the HF cache and CA bundle appear."""
    home = home_in_container(host, root)
    args: list[str] = []
    if home == USER_HOME:
        owner = f"uid={host.uid},gid={host.gid},mode=0755"
        args += [
            "--user", f"{host.uid}:{host.gid}",
            "--tmpfs", f"{USER_HOME}:exec,{owner}",
            "--tmpfs", f"{USER_HOME}/.cache:exec,{owner}",
            "-e", f"HOME={USER_HOME}",
            "-e", f"USER={host.user}",
            "-e", f"LOGNAME={host.user}",
            "-e", f"UV_CACHE_DIR={USER_HOME}/.cache/uv",
        ]  # fmt: skip
    hf = f"{home}/{HF_IN_HOME}"
    args += ["-v", f"{host.hf_cache}:{hf}", "-e", f"HF_HOME={hf}"]
    if config.ca_bundle:
        args += ["-v", f"{config.ca_bundle}:{CA_PATH}:ro", "-e", f"SSL_CERT_FILE={CA_PATH}", "-e", f"REQUESTS_CA_BUNDLE={CA_PATH}"]
    return args


def container_args(
    opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, kind: str
) -> list[str]:
    """Everything `docker run` needs to shape the container, shared by one-off runs and
    named containers (not the command, the stdio flags or the runtime env)."""
    root = opts.root or host.as_root
    args = [
        "--init",
        "--label", f"{LABEL}={kind}",
        "--label", f"{LABEL_TOPIC}={topic}",
        "--label", f"{LABEL_BASE}={base}",
        "--label", f"{LABEL_WORKSPACE}={workspace}",
        "--label", f"{LABEL_GPUS}={gpus.label}",
        "--label", f"{LABEL_USER}={'root' if root else f'{host.uid}:{host.gid}'}",
    ]  # fmt: skip
    if gpus.docker_value:
        args += ["--gpus", gpus.docker_value]
    # NCCL and DataLoader workers need far more than docker's 64 MB /dev/shm.
    args += ["--shm-size", opts.shm_size] if opts.shm_size else ["--ipc=host"]
    if host.memlock:
        args += ["--ulimit", MEMLOCK]  # RDMA (NCCL over InfiniBand) registers pinned memory
    args += ["--ulimit", f"stack={STACK_BYTES}"]
    args += ["-v", f"{workspace}:{WORKSPACE}", "-w", WORKSPACE]
    args += identity_args(host, root, config)
    args += mount_args(opts.mounts, host.cwd)
    if opts.network:
        args += ["--network", opts.network]
    if opts.network != "host":  # host networking publishes nothing: the ports are the host's
        args += port_args(opts.ports)
    return args


def stdio_args(host: Host) -> list[str]:
    return ["-i", "-t"] if host.tty else ["-i"]


def one_off_call(opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, image: str) -> DockerCall:
    """`docker run --rm` for `invoke shell TOPIC [-- CMD...]`."""
    env_args, env = runtime_env(opts, host, config)
    shape = container_args(opts, host, config, gpus, workspace=workspace, topic=topic, base=base, kind="one-off")
    command = opts.command or SHELL
    return DockerCall(("run", "--rm", *stdio_args(host), *shape, *env_args, image, *command), env)


def create_call(opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, *, workspace: Path, topic: str, base: str, image: str) -> DockerCall:
    """`docker run -d` of a named, long-lived container (`sleep infinity`, entered with exec).
    Tokens are not given here: each `docker exec` passes the current ones."""
    shape = container_args(opts, host, config, gpus, workspace=workspace, topic=topic, base=base, kind="named")
    user_env = [a for item in opts.env if "=" in item for a in ("-e", item)]
    return DockerCall(("--name", opts.name, "--hostname", opts.name, *shape, *user_env, image, *KEEP_ALIVE), {})


def exec_call(opts: ShellOptions, host: Host, config: Config, *, container: str) -> DockerCall:
    """`docker exec` into a named container, with the runtime env of this invocation."""
    env_args, env = runtime_env(opts, host, config)
    command = opts.command or SHELL
    return DockerCall(("exec", *stdio_args(host), "-w", WORKSPACE, *env_args, container, *command), env)


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


# --- the host's facts -------------------------------------------------------------------


def host_hf_cache(environ: Mapping[str, str], home: Path) -> Path:
    """Where the host keeps Hugging Face's cache: $HF_HOME, else ~/.cache/huggingface."""
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser()
    cache = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface"


def user_name(uid: int, environ: Mapping[str, str]) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return environ.get("USER") or f"uid{uid}"


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def read_host(environ: Mapping[str, str] | None = None) -> Host:
    environ = dict(os.environ) if environ is None else environ
    home = Path(environ.get("HOME") or Path.home())
    uid = os.getuid()
    return Host(
        uid=uid,
        gid=os.getgid(),
        user=user_name(uid, environ),
        cwd=Path.cwd(),
        hf_cache=host_hf_cache(environ, home),
        environ=environ,
        tty=_is_terminal(sys.stdin) and _is_terminal(sys.stdout),
    )


def facts_file(environ: Mapping[str, str]) -> Path:
    cache = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(cache) / "mlsyskit" / "engine-facts.json"


def daemon_key(environ: Mapping[str, str]) -> str:
    """Names the running daemon without asking it (a CLI call costs a start-up): its
    endpoint, plus, for a local socket, the socket's inode and time, which change when
    dockerd restarts (the time a new limit would take effect)."""
    host = environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    key = f"{host}|{environ.get('DOCKER_CONTEXT', '')}"
    if host.startswith("unix://"):
        try:
            st = os.stat(host.removeprefix("unix://"))
            key += f"|{st.st_ino}|{st.st_mtime_ns}"
        except OSError:
            pass
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _load_facts(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_facts(path: Path, facts: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
            json.dump(facts, out)
        os.replace(out.name, path)
    except OSError:
        pass  # a cache only: the next run probes again


MEMLOCK_WARNING = (
    "warning: this Docker host does not let containers raise memlock (--ulimit memlock=-1 fails): "
    "running with its default, so RDMA/NCCL-over-InfiniBand may fail (checked once per daemon start)"
)


def memlock_allowed(engine: Engine, image: str, environ: Mapping[str, str], log: Log) -> bool:
    """Whether containers may have memlock=-1: probed once per daemon start, then cached.
    The warning is printed once, when the probe finds it refused."""
    path, key = facts_file(environ), daemon_key(environ)
    facts = _load_facts(path)
    if isinstance(facts.get(key), dict) and "memlock" in facts[key]:
        return bool(facts[key]["memlock"])
    allowed = engine.ulimit_allowed(image, MEMLOCK)
    if not allowed:
        log(MEMLOCK_WARNING)
    _save_facts(path, {key: {"memlock": allowed}})  # only the current daemon's facts are kept
    return allowed


def forget_memlock(environ: Mapping[str, str]) -> None:
    path = facts_file(environ)
    facts = _load_facts(path)
    facts.pop(daemon_key(environ), None)
    _save_facts(path, facts)


# --- doing it ---------------------------------------------------------------------------


def ensure_image(engine: Engine, topic: Topic, base: str, config: Config, log: Log) -> str:
    """The topic's image, built first (with progress) when it is missing. A lock that changed
    since the build gets one warning line, not a rebuild the user did not ask for."""
    image = topic_alias(topic.name, base)
    data = engine.find_image(image)
    if data is None:
        from .build import build_topics  # the build machinery loads only when a build is due

        log(f"{image} is not built yet: building it (this happens once)")
        catalog = load_catalog()
        build_topics(Engine.connect(), catalog, config, [topic], base_name=base, log=log)
        return image
    labels = (data.get("Config") or {}).get("Labels") or {}
    built_from = labels.get(f"{LABEL_PREFIX}.lock-sha256", "")
    if built_from and topic.lock_path.is_file() and built_from != lock_sha256(topic.lock_path):
        log(f"warning: {image} was built from an older {topic.name}/uv.lock: `invoke build {topic.name}` updates it")
    return image


def choose_gpus(opts: ShellOptions) -> GpuSelection:
    selection = select(parse_request(opts.gpus), query_gpus, host_has_gpus())
    if selection.docker_value and not container_toolkit_present():
        raise EngineError(
            "this host has NVIDIA GPUs but docker cannot hand them to containers",
            fix="install nvidia-container-toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker`, or use --gpus none",
        )
    return selection


def resolve_workspace(opts: ShellOptions, host: Host) -> Path:
    workspace = (host.cwd / Path(opts.workspace).expanduser()).resolve() if opts.workspace else host.cwd.resolve()
    if not workspace.is_dir():
        raise UsageError(f"--workspace {opts.workspace}: not a directory")
    return workspace


def shell(opts: ShellOptions, log: Log) -> NoReturn:
    """Run `invoke shell`: never returns (becomes `docker run` or `docker exec`) unless it
    raises a KitError, in which case nothing was left running."""
    check_options(opts)
    config = load_config()
    host = read_host()
    topic: Topic | None = None
    base = opts.base or config.base
    if opts.topic:
        catalog = load_catalog()
        topic = catalog.topic(opts.topic)  # unknown: one line listing the known topics
        catalog.base(base)
    engine = Engine.for_running()
    if opts.name:
        existing = engine.container(opts.name)
        if existing is not None:
            reenter(engine, opts, host, config, existing, log)
        if topic is None:
            raise UsageError(f"no container named '{opts.name}'", fix=f"create it with `invoke shell TOPIC --name {opts.name}`")
    assert topic is not None
    workspace = resolve_workspace(opts, host)
    mount_args(opts.mounts, host.cwd)  # refuses a missing path before anything is built
    gpus = choose_gpus(opts)
    check_ports_free(opts)
    image = ensure_image(engine, topic, base, config, log)
    if gpus.warning:
        log(f"warning: {gpus.warning}")
    if opts.network == "host" and opts.ports:
        log("warning: -p is ignored with --network host (the container uses the host's ports)")
    host.hf_cache.mkdir(parents=True, exist_ok=True)  # else docker creates it, owned by root
    host = replace(host, memlock=memlock_allowed(engine, image, host.environ, log))
    kwargs = {"workspace": workspace, "topic": topic.name, "base": base, "image": image}
    if not opts.name:
        call = one_off_call(opts, host, config, gpus, **kwargs)
        engine.exec_replace(call.args, call.env)
    create_named(engine, opts, host, config, gpus, kwargs, log)
    call = exec_call(opts, host, config, container=opts.name)
    engine.exec_replace(call.args, call.env)


def create_named(engine: Engine, opts: ShellOptions, host: Host, config: Config, gpus: GpuSelection, kwargs: dict, log: Log) -> None:
    """Start the long-lived container; on any failure remove what docker left (a container
    that was created but could not start), so nothing stays behind."""
    for attempt in (1, 2):
        call = create_call(opts, host, config, gpus, **kwargs)
        try:
            engine.run_detached(call.args, call.env)
            return
        except EngineError as exc:
            if NAME_IN_USE in exc.message:
                raise  # another shell created it meanwhile: it is not ours to remove
            engine.remove_containers([opts.name])
            if attempt == 1 and host.memlock and "rlimit" in exc.message:
                forget_memlock(host.environ)  # the cached fact is stale: the daemon changed
                log(MEMLOCK_WARNING)
                host = replace(host, memlock=False)
                continue
            raise


def reenter(engine: Engine, opts: ShellOptions, host: Host, config: Config, existing: dict, log: Log) -> NoReturn:
    name = opts.name
    labels = (existing.get("Config") or {}).get("Labels") or {}
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
    if not (existing.get("State") or {}).get("Running"):
        engine.start_container(name)
    call = exec_call(opts, host, config, container=name)
    engine.exec_replace(call.args, call.env)


# --- invoke ps --------------------------------------------------------------------------


def ps() -> str:
    engine = Engine.for_running()
    listed = engine.containers(LABEL)
    if not listed:
        return "no kit containers: `invoke shell TOPIC --name NAME` starts a long-lived one"
    rows = []
    for data in sorted(engine.inspect_containers([c["ID"] for c in listed]), key=lambda d: d.get("Name", "")):
        labels = (data.get("Config") or {}).get("Labels") or {}
        state = data.get("State") or {}
        status = state.get("Status", "?")
        if status == "exited":
            status = f"exited ({state.get('ExitCode', '?')})"
        rows.append(
            (
                data.get("Name", "").lstrip("/"),
                labels.get(LABEL_TOPIC, "?"),
                labels.get(LABEL, "?"),
                status,
                labels.get(LABEL_GPUS, "?"),
                labels.get(LABEL_USER, "?"),
                labels.get(LABEL_WORKSPACE, "?"),
                (data.get("Created") or "")[:19].replace("T", " "),
            )
        )
    headers = ("name", "topic", "kind", "status", "gpus", "user", "workspace", "created (UTC)")
    return table(headers, rows) + "\nre-enter: invoke shell --name NAME    remove: docker rm -f NAME"
