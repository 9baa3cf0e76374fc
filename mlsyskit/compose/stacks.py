"""Compose stacks (compose/<stack>.yml): several cooperating containers, started in one
command and health-gated.

Each stack file is plain Compose Specification syntax that `docker compose` v2 and
`docker-compose` 1.29 both accept, usable on its own (`docker compose -f ... up`). What the
kit needs beyond compose lives in the same file as data, under `x-mlsyskit` extension fields
(compose ignores them), so `invoke up` and the exporters (`invoke export k8s|slurm`) read
one definition:

    x-mlsyskit:                 # top level: the stack
      description, pattern (server | router | ray | nodes), topic (its image),
      cpu (has a --cpu variant), gpus {default, min}, wait (seconds `up` waits)
    services.<name>.x-mlsyskit: # each service
      role (prep, server, client, worker, router, head, driver, node),
      run (service: up waits until healthy; job: until it exits 0),
      gpus (all: every GPU given; split: the GPUs shared out evenly among `split` services;
            each: one GPU per replica of its group; none), group, port

Rendering is pure (`render`): for the GPUs chosen (or `--cpu`) and the host's facts it
writes a complete compose file to .kit/stacks/<stack>/compose.yml with device_ids, the
KIT_* variables the scripts in compose/scripts read, absolute bind paths, each service's
kernel cache (runtime/caches.py), the topic image for the chosen base, and `memlock`
dropped where the engine refuses -1. `up` starts it with
compose in the background and watches the containers itself (`assess`), so a service that
exits or turns unhealthy is reported at once with its last log lines, whatever compose's
version does while it waits on `depends_on`."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlsyskit import LABEL_PREFIX, REPO_ROOT
from mlsyskit.compose import patterns
from mlsyskit.context import Context
from mlsyskit.data.catalog import UnknownTopic
from mlsyskit.data.fields import Fields, rel_path
from mlsyskit.engine import ComposeProject, ContainerInfo, Engine
from mlsyskit.errors import EngineError, Interrupted, StackError, UsageError
from mlsyskit.images.ensure import ensure_image
from mlsyskit.images.plan import topic_alias
from mlsyskit.report import seconds, table
from mlsyskit.runtime import secrets
from mlsyskit.runtime.caches import KernelMount
from mlsyskit.runtime.gpus import host_has_gpus, least_used, parse_request, query_gpus, select
from mlsyskit.runtime.host import first_taken_port, memlock_allowed, port_taken, read_host

Log = Callable[[str], None]

ROLES = ("prep", "server", "client", "worker", "router", "head", "driver", "node", "prefill", "decode")
RUNS = ("service", "job")
GPU_MODES = ("all", "split", "each", "none")
STACK_FIELDS = {"description", "pattern", "topic", "cpu", "gpus", "wait", "options"}
OPTION_FIELDS = {"env", "default", "choices", "help"}
SERVICE_FIELDS = {"role", "run", "gpus", "group", "port", "topic"}
HF_TARGET = "/root/.cache/huggingface"
MEMLOCK_UNLIMITED = -1
PROJECT_PREFIX = "mlsyskit-"
LABEL_STACK = f"{LABEL_PREFIX}.stack"
LABEL_SERVICE = f"{LABEL_PREFIX}.stack.service"
LABEL_ROLE = f"{LABEL_PREFIX}.stack.role"
COMPOSE_PROJECT = "com.docker.compose.project"
LOG_LINES = 30
# A service without a healthcheck counts as up only once it has stayed running this long:
# a command that crashes at once under `restart: always` shows "running" for a moment
# between restarts, and calling that ready would report a crash loop as up.
SETTLE_S = 3.0


# --- the stack definitions --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ComposeService:
    name: str
    role: str
    run: str
    gpus: str = "none"
    group: str = ""
    port: int = 0
    topic: str = ""  # "" = the stack's topic


@dataclass(frozen=True, kw_only=True)
class StackOption:
    """A choice the stack offers (`invoke up|export STACK --option NAME=VALUE`), passed to the
    services that declare its environment variable."""

    name: str
    env: str
    default: str
    choices: tuple[str, ...]
    help: str = ""


@dataclass(frozen=True, kw_only=True)
class ComposeStack:
    name: str
    path: Path
    description: str
    pattern: str
    topic: str
    cpu: bool
    gpus_default: int
    gpus_min: int
    wait: int
    services: dict[str, ComposeService]  # in file order
    gpus_multiple: int = 1  # the GPU count must be a multiple of this (prefill + decode: 2)
    options: dict[str, StackOption] = field(default_factory=dict)
    compose: dict[str, Any] = field(repr=False)  # the file as loaded (anchors resolved)

    @property
    def project(self) -> str:
        return PROJECT_PREFIX + self.name

    def topics(self) -> list[str]:
        return list(dict.fromkeys(s.topic or self.topic for s in self.services.values()))

    def by_role(self, role: str) -> list[ComposeService]:
        return [s for s in self.services.values() if s.role == role]

    def groups(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for spec in self.services.values():
            if spec.group:
                found.setdefault(spec.group, []).append(spec.name)
        return found

    def split_services(self) -> list[str]:
        return [s.name for s in self.services.values() if s.gpus == "split"]

    def gpu_services(self) -> list[str]:
        return [s.name for s in self.services.values() if s.gpus != "none"]


def stacks_dir(root: Path = REPO_ROOT) -> Path:
    return root / "compose"


def stack_names(root: Path = REPO_ROOT) -> list[str]:
    return sorted(p.stem for p in stacks_dir(root).glob("*.yml"))


def device_requests(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The service's compose-spec GPU reservations (deploy.resources.reservations.devices)."""
    deploy = service.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if isinstance(d, dict)]


def load_stack(name: str, root: Path = REPO_ROOT) -> ComposeStack:
    path = stacks_dir(root) / f"{name}.yml"
    if not path.is_file():
        known = ", ".join(stack_names(root)) or "(none)"
        raise UsageError(f"unknown stack '{name}'", fix=f"known stacks: {known}")
    return parse_stack(name, path, path.read_text())


def parse_stack(name: str, path: Path, text: str) -> ComposeStack:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{rel_path(path)}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict) or not data["services"]:
        raise UsageError(f"{rel_path(path)}: field 'services' must be a table of services")
    top = Fields(path, data.get("x-mlsyskit"), "x-mlsyskit.")
    top.reject_unknown(STACK_FIELDS)
    gpus = Fields(path, top.table.get("gpus", {}), "x-mlsyskit.runtime.gpus.")
    gpus.reject_unknown({"default", "min", "multiple"})
    options: dict[str, StackOption] = {}
    for option_name in top.table.get("options") or {}:
        fields = Fields(path, top.table["options"][option_name], f"x-mlsyskit.options.{option_name}.")
        fields.reject_unknown(OPTION_FIELDS)
        choices = fields.str_list("choices")
        options[option_name] = StackOption(
            name=option_name, env=fields.str("env"), default=fields.str("default", choices=choices), choices=choices, help=fields.str("help", "")
        )
    services: dict[str, ComposeService] = {}
    for service_name, body in data["services"].items():
        if not isinstance(body, dict):
            raise UsageError(f"{rel_path(path)}: field 'services.{service_name}' must be a table")
        prefix = f"services.{service_name}.x-mlsyskit."
        meta = Fields(path, body.get("x-mlsyskit"), prefix)
        meta.reject_unknown(SERVICE_FIELDS)
        spec = ComposeService(
            name=service_name,
            role=meta.str("role", choices=ROLES),
            run=meta.str("run", choices=RUNS),
            gpus=meta.str("gpus", "none", choices=GPU_MODES),
            group=meta.str("group", ""),
            port=meta.int("port", 0),
            topic=meta.str("topic", ""),
        )
        if spec.gpus != "none" and not device_requests(body):
            raise UsageError(
                f"{rel_path(path)}: service '{service_name}' uses GPUs but has no deploy.resources.reservations.devices",
                fix="request them as compose does: driver nvidia, count or device_ids, capabilities [gpu]",
            )
        if bool(spec.group) != (spec.gpus == "each"):
            raise meta.fail("group", "set exactly when gpus is `each` (one replica per GPU)")
        services[service_name] = spec
    stack = ComposeStack(
        name=name,
        path=path,
        description=top.str("description"),
        pattern=top.str("pattern", choices=patterns.NAMES),
        topic=top.str("topic"),
        cpu=top.bool("cpu", False),
        gpus_default=gpus.int("default", 1, minimum=1),
        gpus_min=gpus.int("min", 1, minimum=1),
        wait=top.int("wait", 600, minimum=1),
        services=services,
        gpus_multiple=gpus.int("multiple", 1, minimum=1),
        options=options,
        compose=data,
    )
    for service_name, body in data["services"].items():
        depends = body.get("depends_on") or {}
        for target, condition in depends.items() if isinstance(depends, dict) else []:
            if target not in data["services"]:
                raise UsageError(f"{rel_path(path)}: services.{service_name}.depends_on names unknown service '{target}'")
            wants_health = isinstance(condition, dict) and condition.get("condition") == "service_healthy"
            if wants_health and not data["services"][target].get("healthcheck"):
                raise UsageError(f"{rel_path(path)}: services.{service_name} waits for '{target}' to be healthy, and '{target}' has no healthcheck")
    if stack.gpus_default % stack.gpus_multiple or stack.gpus_min % stack.gpus_multiple:
        raise gpus.fail("multiple", f"a divisor of x-mlsyskit.gpus.default and .min ({stack.gpus_default}, {stack.gpus_min})")
    if stack.gpus_min > stack.gpus_default:
        raise gpus.fail("min", f"at most x-mlsyskit.runtime.gpus.default ({stack.gpus_default})")
    for group, members in stack.groups().items():
        if members != [f"{group}-{i}" for i in range(len(members))]:
            raise UsageError(f"{rel_path(path)}: group '{group}' must be services {group}-0, {group}-1, ... in order")
    return stack


# --- choosing GPUs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Devices:
    """What the stack runs on: GPU indices (in the order given), or none with `cpu`."""

    gpus: tuple[str, ...] = ()
    cpu: bool = False
    warning: str = ""

    def describe(self) -> str:
        return "CPU" if self.cpu else f"GPU {','.join(self.gpus)}"


def check_layout(stack: ComposeStack, gpus: Sequence[str]) -> None:
    """One clear error when the stack cannot use this many GPUs."""
    count = len(gpus)
    if count < stack.gpus_min:
        raise UsageError(f"{stack.name} needs at least {stack.gpus_min} GPU(s), got {count}", fix=f"give `--gpus {stack.gpus_min}` or more")
    if count % stack.gpus_multiple:
        raise UsageError(
            f"{stack.name} needs a multiple of {stack.gpus_multiple} GPUs, got {count}",
            fix=f"give {count - count % stack.gpus_multiple or stack.gpus_multiple} or {count + stack.gpus_multiple - count % stack.gpus_multiple}",
        )
    split = stack.split_services()
    if split and count % len(split):
        raise UsageError(
            f"{stack.name} shares its GPUs evenly over {len(split)} services ({', '.join(split)}): {count} GPU(s) do not divide",
            fix=f"give a multiple of {len(split)} (`--gpus {len(split) * max(1, count // len(split))}`)",
        )


def choose_devices(stack: ComposeStack, gpus: str, cpu: bool, host_gpus: Callable[[], list[Any]], has_gpus: bool) -> Devices:
    """`--gpus N|LIST|all|none` and `--cpu` against the host (gpus.py's meaning of --gpus).
    No choice on a host without GPUs runs a stack that has a CPU variant on CPU, with one
    warning; a GPU-only stack is refused."""

    if gpus.strip() == "none":
        cpu, gpus = True, ""
    if cpu:
        if gpus:
            raise UsageError("give either --cpu or --gpus, not both")
        if not stack.cpu:
            others = ", ".join(n for n in stack_names(stack.path.parent.parent) if load_stack(n, stack.path.parent.parent).cpu)
            raise UsageError(f"{stack.name} has no CPU variant: it needs GPUs", fix=f"stacks with --cpu: {others}")
        return Devices(cpu=True)
    request = parse_request(gpus)
    if request.kind in ("default", "all"):
        found = host_gpus() if has_gpus else []
        if not found:
            if stack.cpu:
                return Devices(cpu=True, warning=f"no NVIDIA GPU on this host: running {stack.name} on CPU (`--cpu` says so)")
            raise UsageError(
                f"{stack.name} needs at least {stack.gpus_min} NVIDIA GPU(s) and this host has none",
                fix="run it on a GPU host, or export it: `invoke export k8s|slurm " + stack.name + "`",
            )
        if request.kind == "all":
            chosen = [str(g.index) for g in found]
        else:
            want = min(stack.gpus_default, len(found))
            chosen = [str(g.index) for g in least_used(found, want)]
        check_layout(stack, chosen)
        return Devices(gpus=tuple(chosen))
    selection = select(request, host_gpus, has_gpus)
    chosen = selection.label.split(",")
    check_layout(stack, chosen)
    return Devices(gpus=tuple(chosen))


def option_values(stack: ComposeStack, given: Sequence[str]) -> dict[str, str]:
    """`--option NAME=VALUE ...` checked against the stack's options: {env var: value}, every
    option present (its default where not given)."""
    chosen = {name: option.default for name, option in stack.options.items()}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--option {item}: expected NAME=VALUE", fix=f"e.g. --option {next(iter(stack.options), 'NAME')}=VALUE")
        if name not in stack.options:
            known = ", ".join(stack.options) or "none"
            raise UsageError(f"--option {item}: {stack.name} has no option '{name}'", fix=f"its options: {known}")
        option = stack.options[name]
        if value not in option.choices:
            raise UsageError(f"--option {item}: {name} is one of {', '.join(option.choices)}", fix=f"e.g. --option {name}={option.default}")
        chosen[name] = value
    return {stack.options[name].env: value for name, value in chosen.items()}


RDMA_DEVICES = Path("/dev/infiniband")


def check_rdma(rdma: bool, devices: Path = RDMA_DEVICES) -> None:
    if rdma and not devices.is_dir():
        raise UsageError(
            f"--rdma: this host has no {devices} (no RDMA device or driver)",
            fix="leave --rdma out: UCX then moves KV by CUDA IPC within a host, or TCP",
        )


def check_ports_free(stack: ComposeStack, rendered: Mapping[str, Any], taken: Callable[[str, int, str], bool] = port_taken) -> None:
    """Refuse before anything starts when a port the stack publishes is in use on this host
    (compose would create half the stack and stop at that container)."""
    for name, body in rendered["services"].items():
        if found := first_taken_port([str(p) for p in body.get("ports") or []], taken):
            where, _, proto = found
            raise EngineError(
                f"{stack.name}: port {where}/{proto} of service {name} is already in use on this host",
                fix="stop what holds it (`invoke stacks` shows the kit's own stacks)",
            )


# --- rendering --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    devices: Devices
    base: str = "pypi"
    model: str = "tiny"
    memlock: bool = True  # the engine lets containers set memlock=-1
    hf_cache: Path = Path("~/.cache/huggingface")
    environment: Mapping[str, str] = field(default_factory=dict)  # added to every service
    options: Mapping[str, str] = field(default_factory=dict)  # option_values(): to the services that declare them
    rdma: bool = False  # GPU services get /dev/infiniband and IPC_LOCK (UCX, NCCL over InfiniBand/RoCE)
    # `linux/arm64` on an x86 host: every service runs under qemu and gets what such a
    # container needs (emulation.py), as `invoke shell`/`smoke` containers do
    platform: str = ""
    emulation: tuple[str, ...] = ()  # bind mounts, from emulation_volumes(platform)
    # The host's tokens (runtime/secrets.py), written to `secrets_at` by `up`: a service that
    # declares one gets it as a file there (HF_TOKEN_PATH), not as an environment value.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets_at: Path | None = None
    # (topic, the service's GPUs) -> its kernel cache (runtime/caches.py), None for none
    kernels: Callable[[str, tuple[str, ...]], KernelMount | None] | None = None
    images: Mapping[str, str] = field(default_factory=dict)  # topic -> its image as `up` found it (else its friendly tag)


def _escape(value: str) -> str:
    """A literal value inside a compose file: compose reads `$` as interpolation."""
    return value.replace("$", "$$")


def _bind_source(entry: str) -> tuple[str, str] | None:
    """('SOURCE', 'REST') of a short-syntax bind mount; None for a named volume."""
    source, sep, rest = entry.partition(":")
    if not sep:
        return None
    if source.startswith((".", "/", "~", "$")):
        return source, rest
    return None


def _instances(stack: ComposeStack, devices: Devices) -> list[tuple[str, ComposeService, tuple[str, ...], dict[str, str]]]:
    """(rendered name, spec, its GPUs, its KIT_* variables) for every container to run."""
    gpus = devices.gpus
    split = stack.split_services()
    per_split = len(gpus) // len(split) if split and gpus else 0
    groups = stack.groups()
    out = []
    for spec in stack.services.values():
        if spec.group:
            if spec.name != groups[spec.group][0]:
                continue  # the group's first member is the template of every replica
            count = len(gpus) if gpus else len(groups[spec.group])
            for i in range(count):
                replica: tuple[str, ...] = (gpus[i],) if gpus else ()
                out.append((f"{spec.group}-{i}", spec, replica, {"KIT_REPLICA": str(i), "KIT_REPLICAS": str(count)}))
            continue
        mine: tuple[str, ...]
        if spec.gpus == "all":
            mine = gpus
        elif spec.gpus == "split" and gpus:
            rank = split.index(spec.name)
            mine = gpus[rank * per_split : (rank + 1) * per_split]
        else:
            mine = ()
        extra: dict[str, str] = {}
        if spec.gpus == "split":
            extra = {"KIT_NNODES": str(len(split)), "KIT_NODE_RANK": str(split.index(spec.name)), "KIT_HEAD": split[0]}
        out.append((spec.name, spec, mine, extra))
    return out


def render(stack: ComposeStack, opts: RenderOptions) -> dict[str, Any]:
    """The compose file `up` runs: a complete file (compose v1 cannot delete keys through
    an override, and `--cpu` must drop the GPU reservations)."""

    devices = opts.devices
    instances = _instances(stack, devices)
    group_members = {g: [n for n, s, _, _ in instances if s.group == g] for g in stack.groups()}
    split = stack.split_services()
    # Values every service may declare; a file's KIT_* variable is replaced only when the
    # file declares it (a client job need not know the GPU layout).
    common = {"KIT_DEVICE": "cpu" if devices.cpu else "cuda", "KIT_MODEL": opts.model}
    common.update({f"KIT_{g.upper().replace('-', '_')}_HOSTS": " ".join(m) for g, m in group_members.items()})
    if split:
        common.update(KIT_NNODES=str(len(split)), KIT_HEAD=split[0], KIT_GPUS=str(len(devices.gpus) // len(split)))
    services: dict[str, Any] = {}
    for name, spec, mine, extra in instances:
        body = copy.deepcopy(stack.compose["services"][spec.name])
        topic = spec.topic or stack.topic
        body["image"] = opts.images.get(topic) or topic_alias(topic, opts.base)
        if isinstance(body.get("environment"), list):
            raise UsageError(f"{rel_path(stack.path)}: services.{spec.name}.environment must be a mapping")
        env = {k: "" if v is None else str(v) for k, v in (body.get("environment") or {}).items()}
        env.update({k: _escape(v) for k, v in {**common, **opts.options}.items() if k in env})
        if spec.gpus != "none":
            env.update(KIT_DEVICE=common["KIT_DEVICE"], KIT_GPUS=str(len(mine)))
        env.update({k: _escape(v) for k, v in extra.items()})
        env.update({k: _escape(v) for k, v in opts.environment.items()})
        delivery = _render_secrets(body, env, opts)
        kernels = opts.kernels(spec.topic or stack.topic, mine) if opts.kernels else None
        if kernels is not None:
            env.update({k: _escape(v) for k, _, v in (e.partition("=") for e in kernels.env)})
        body["environment"] = dict(sorted(env.items()))
        _render_gpus(body, mine)
        if opts.rdma and spec.gpus != "none":
            body["devices"] = [*(body.get("devices") or []), f"{RDMA_DEVICES}:{RDMA_DEVICES}"]
            body["cap_add"] = sorted({*(body.get("cap_add") or []), "IPC_LOCK"})
        _render_limits(body, opts.memlock)
        _render_volumes(body, stack.path.parent, opts.hf_cache)
        if delivery is not None:
            body["volumes"] = [*(body.get("volumes") or []), _escape(delivery.volume)]
        if kernels is not None:
            body["volumes"] = [*(body.get("volumes") or []), *(_escape(v) for v in kernels.volumes)]
        if opts.platform:
            body["platform"] = opts.platform
            body["volumes"] = [*(body.get("volumes") or []), *(_escape(v) for v in opts.emulation)]
        body["depends_on"] = _render_depends(body.get("depends_on"), group_members, stack)
        if not body["depends_on"]:
            del body["depends_on"]
        labels = dict(body.get("labels") or {})
        labels.update({LABEL_STACK: stack.name, LABEL_SERVICE: spec.name, LABEL_ROLE: spec.role})
        body["labels"] = labels
        services[name] = body
    rendered: dict[str, Any] = {"services": services}
    for key in ("volumes", "networks"):
        if stack.compose.get(key):
            rendered[key] = copy.deepcopy(stack.compose[key])
    rendered["x-mlsyskit"] = {
        **copy.deepcopy(stack.compose["x-mlsyskit"]),
        "rendered": {
            "from": rel_path(stack.path),
            "devices": "cpu" if devices.cpu else ",".join(devices.gpus),
            "base": opts.base,
            "model": opts.model,
            "memlock": "unlimited" if opts.memlock else "engine default",
            **({"options": dict(opts.options)} if opts.options else {}),
            **({"rdma": True} if opts.rdma else {}),
            **({"platform": opts.platform} if opts.platform else {}),
        },
    }
    plain: dict[str, Any] = json.loads(json.dumps(rendered))  # plain data: no YAML aliases in the output
    return plain


def _render_gpus(body: dict[str, Any], mine: tuple[str, ...]) -> None:
    deploy = body.get("deploy")
    if not deploy:
        return
    reservations = deploy.get("resources", {}).get("reservations", {})
    devices = [d for d in reservations.get("devices", []) if "gpu" not in (d.get("capabilities") or [])]
    if mine:
        devices.append({"driver": "nvidia", "device_ids": list(mine), "capabilities": ["gpu"]})
    if devices:
        reservations["devices"] = devices
    else:
        reservations.pop("devices", None)
    # Drop what became empty: compose 1.29 rejects `reservations: {}` in some versions.
    resources = deploy.get("resources", {})
    if not reservations:
        resources.pop("reservations", None)
    if not resources:
        deploy.pop("resources", None)
    if not deploy:
        del body["deploy"]


def _render_limits(body: dict[str, Any], memlock: bool) -> None:
    ulimits = body.get("ulimits")
    if not ulimits or memlock:
        return
    # This engine refuses memlock=-1 (the container would not start): keep its default.
    ulimits.pop("memlock", None)
    if not ulimits:
        del body["ulimits"]


def _render_secrets(body: dict[str, Any], env: dict[str, str], opts: RenderOptions) -> secrets.Delivery | None:
    """The tokens a service declares (`HF_TOKEN: ${HF_TOKEN:-}`, for the file run on its own)
    leave its environment, which `docker inspect` shows; the ones the host has come as files
    of `opts.secrets_at` instead (HF_TOKEN_PATH; others through the loader)."""
    declared = [k for k in env if k in secrets.TOKENS]
    for key in declared:
        del env[key]
    given = {k: opts.secrets[k] for k in declared if opts.secrets.get(k)}
    if not given or opts.secrets_at is None:
        return None
    delivery = secrets.delivery(given, opts.secrets_at)
    assert delivery is not None
    env.update(dict(item.split("=", 1) for item in delivery.env))
    if delivery.loader and body.get("command"):
        body["command"] = list(delivery.wrap(tuple(body["command"])))
    return delivery


def _render_volumes(body: dict[str, Any], compose_dir: Path, hf_cache: Path) -> None:
    volumes = []
    for entry in body.get("volumes") or []:
        if not isinstance(entry, str):
            volumes.append(entry)
            continue
        bind = _bind_source(entry)
        if bind is None:
            volumes.append(entry)
            continue
        source, rest = bind
        target = rest.split(":")[0]
        if target == HF_TARGET:
            path = hf_cache.expanduser()
        else:
            path = (compose_dir / source).resolve()
        volumes.append(f"{_escape(str(path))}:{rest}")
    if volumes:
        body["volumes"] = volumes


def _render_depends(depends: Any, group_members: Mapping[str, list[str]], stack: ComposeStack) -> dict[str, Any]:
    """depends_on with every member of a group replaced by the rendered replicas."""
    if not depends:
        return {}
    if isinstance(depends, list):
        depends = {name: {"condition": "service_started"} for name in depends}
    out: dict[str, Any] = {}
    for name, condition in depends.items():
        spec = stack.services.get(name)
        if spec is not None and spec.group:
            for member in group_members[spec.group]:
                out[member] = condition
        else:
            out[name] = condition
    return out


def rendered_yaml(rendered: Mapping[str, Any], stack: ComposeStack) -> str:
    header = (
        f"# Rendered by `invoke up {stack.name}` from {rel_path(stack.path)}: do not edit (the next `up` rewrites it).\n"
        f"# Runs on: {rendered['x-mlsyskit']['rendered']['devices']}. Inspect with `docker compose -p {stack.project} -f THIS ps`.\n"
    )
    return header + yaml.safe_dump(dict(rendered), sort_keys=False, default_flow_style=False, width=120)


# --- watching the containers ------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    ready: tuple[str, ...]
    waiting: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (service, why)

    @property
    def done(self) -> bool:
        return not self.waiting and not self.failed


def assess(expected: Mapping[str, str], states: Sequence[ContainerInfo], since: float, now: float) -> Assessment:
    """Where each expected service (name -> "service" or "job") stands at `now`. A state older
    than `since` (a job that ended in an earlier `up`) counts as not yet run; a service without
    a healthcheck is ready once it has run SETTLE_S without a restart (the engine's StartedAt)."""
    by_service = {s.service: s for s in states}
    ready, waiting, failed = [], [], []
    for name, run in expected.items():
        state = by_service.get(name)
        fresh_end = state is not None and state.finished_at >= since
        if state is None:
            waiting.append(name)
        elif state.status == "restarting":
            # docker restarts it after each crash: waiting for --wait to run out would hide that
            failed.append((name, f"is restarting after exiting with code {state.exit_code} (a restart loop)"))
        elif state.status in ("exited", "dead") and fresh_end:
            if run == "job" and state.exit_code == 0:
                ready.append(name)
            elif run == "job":
                failed.append((name, f"exited with code {state.exit_code}"))
            else:
                failed.append((name, f"stopped (exit code {state.exit_code}); a service must keep running"))
        elif state.status == "running":
            if state.health == "unhealthy":
                failed.append((name, "is unhealthy (its healthcheck failed)"))
            elif run == "service" and (state.health == "healthy" or (not state.health and now - state.started_at >= SETTLE_S)):
                ready.append(name)
            else:
                waiting.append(name)
        else:
            waiting.append(name)
    return Assessment(tuple(ready), tuple(waiting), tuple(failed))


def describe(state: ContainerInfo | None, run: str) -> str:
    if state is None:
        return "not created"
    if state.status in ("exited", "dead"):
        return f"exited {state.exit_code}" + (" (done)" if run == "job" and state.exit_code == 0 else "")
    if state.health:
        return f"{state.status} ({state.health})"
    return state.status


# --- doing it ---------------------------------------------------------------------------


def state_dir(stack: str, root: Path = REPO_ROOT) -> Path:
    return root / ".kit" / "stacks" / stack


def rendered_file(stack: str, root: Path = REPO_ROOT) -> Path:
    return state_dir(stack, root) / "compose.yml"


def _expected(rendered: Mapping[str, Any]) -> dict[str, str]:
    return {name: body["x-mlsyskit"]["run"] for name, body in rendered["services"].items()}


@dataclass(frozen=True)
class UpResult:
    stack: str
    seconds: float
    text: str


def up(
    name: str,
    *,
    gpus: str = "",
    cpu: bool = False,
    wait: int = 0,
    model: str = "",
    base: str = "",
    settings: Sequence[str] = (),
    rdma: bool = False,
    log: Log = print,
    root: Path = REPO_ROOT,
) -> UpResult:
    """One straight pipeline: the stack and its options -> the context (its topics, checked
    for the architecture, and the engine's answer for each image) -> the devices -> the
    images (built when missing, freshness) -> the host's facts -> the secrets -> the compose
    file (with each service's kernel cache) -> the engine, until the stack is up."""
    stack = load_stack(name, root)
    options = option_values(stack, settings)
    check_rdma(rdma)
    try:
        ctx = Context.resolve(base, root, topics=stack.topics(), look_up=True)  # one line, before anything is built
    except UnknownTopic as exc:
        raise UsageError(f"stack {stack.name} runs topic {exc.name}, and envs/{exc.name}/ does not exist", fix=exc.fix) from None
    config, base_name, engine = ctx.config, ctx.base_name, ctx.engine
    devices = choose_devices(stack, gpus, cpu, query_gpus, host_has_gpus())
    if devices.warning:
        log(f"warning: {devices.warning}")
    found = {topic.name: ensure_image(ctx, topic, log) for topic in ctx.topics}
    images = [image.ref for image in found.values()]
    host = read_host(known_memlock=True)
    memlock = host.memlock if host.memlock is not None else memlock_allowed(engine, images[0], host.environ, log)
    if not memlock:
        log("note: this engine refuses memlock=-1, so the stack's services keep the engine's default limit (fine without RDMA)")
    hf_cache = host.hf_cache
    hf_cache.mkdir(parents=True, exist_ok=True)  # else docker creates it, owned by root
    environment = {"HF_ENDPOINT": config.hf_endpoint} if config.hf_endpoint else {}
    platform = ctx.platform
    # Tokens as files of a private folder in the stack's state (removed by `invoke down`).
    tokens = {k: os.environ[k] for k in secrets.TOKENS if os.environ.get(k)}
    secrets_at = state_dir(stack.name, root) / "secrets"
    shutil.rmtree(secrets_at, ignore_errors=True)
    if tokens:
        secrets.write(tokens, secrets_at)
    opts = RenderOptions(
        devices=devices, base=base_name, model=model or "tiny", memlock=memlock, hf_cache=hf_cache, environment=environment,
        options=options, rdma=rdma, platform=platform, emulation=ctx.emulation, secrets=tokens,
        secrets_at=secrets_at if tokens else None, kernels=stack_kernels(ctx, {name: image.id for name, image in found.items()}),
        images={name: image.ref for name, image in found.items()},
    )  # fmt: skip
    rendered = render(stack, opts)
    check_ports_free(stack, rendered)
    path = rendered_file(stack.name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rendered_yaml(rendered, stack))
    compose = engine.compose()
    compose.check(stack.project, path)
    limit = wait or stack.wait
    log(f"{stack.name}: {len(rendered['services'])} container(s) on {devices.describe()}, {', '.join(images)}; waiting up to {limit}s ({compose.describe()})")
    start = time.time()
    since = start - 1.0
    expected = _expected(rendered)
    ready_at: dict[str, float] = {}
    shown: dict[str, str] = {}
    try:
        # Kept when it comes up, and when a service fails (its logs stay for `invoke logs`;
        # the error says `invoke down`); taken down on Ctrl-C.
        with engine.compose_project(stack.project, path, keep=True) as project, project.start(path.parent / "up.log") as starting:
            while True:
                states = project.containers()
                by_service = {s.service: s for s in states}
                verdict = assess(expected, states, since, time.time())
                for service in expected:
                    now = describe(by_service.get(service), expected[service])
                    if shown.get(service) != now:
                        shown[service] = now
                        log(f"  {service}: {now}")
                for service in verdict.ready:
                    ready_at.setdefault(service, time.time() - start)
                if verdict.failed:
                    starting.stop()
                    _fail(project, stack, verdict, compose_tail="")
                if verdict.done:
                    break
                returncode = starting.poll()
                if returncode not in (None, 0):
                    time.sleep(1)  # the container states may explain it better than compose does
                    states = project.containers()
                    verdict = assess(expected, states, since, time.time())
                    if not verdict.done:
                        _fail(project, stack, verdict, compose_tail=starting.tail())
                    break
                if time.time() - start > limit:
                    starting.stop()
                    _timeout(project, stack, verdict, by_service, limit)
                time.sleep(1)
    except KeyboardInterrupt:
        shutil.rmtree(state_dir(stack.name, root), ignore_errors=True)
        log(f"interrupted: {stack.name} was taken down")
        raise Interrupted(f"{stack.name}: interrupted; the stack was taken down") from None
    elapsed = time.time() - start
    rows = []
    for service, run in expected.items():
        spec = rendered["services"][service]
        devices_of = [d.get("device_ids") for d in device_requests(spec)]
        gpus_label = ",".join(devices_of[0]) if devices_of and devices_of[0] else "-"
        ports = ", ".join(str(p) for p in spec.get("ports") or []) or "-"
        at = ready_at.get(service)
        rows.append((service, spec["x-mlsyskit"]["role"], run, shown.get(service, "?"), gpus_label, ports, seconds(at) if at else "-"))
    parts = [table(("service", "role", "run", "state", "gpus", "ports", "ready after"), rows)]
    for service, run in expected.items():
        if run == "job":
            parts.append(f"--- {service} (last lines) ---\n{engine.project(stack.project).service_logs(service, 8)}")
    jobs = [s for s, r in expected.items() if r == "job"]
    parts.append(
        f"{stack.name} is up in {seconds(elapsed)}"
        + (f" ({', '.join(jobs)} finished)" if jobs else "")
        + f". Logs: invoke logs {stack.name} [-s SERVICE]; stop: invoke down {stack.name}"
    )
    return UpResult(stack.name, elapsed, "\n".join(parts))


def stack_kernels(ctx: Context, image_ids: Mapping[str, str]) -> Callable[[str, tuple[str, ...]], KernelMount | None]:
    """Each service's kernel cache, as `invoke shell` gives one: its topic image's ID (as `up`
    found the image), the architecture of its GPUs (cpu for none), and root (the services run
    as the images' root)."""
    from mlsyskit.runtime import caches

    topics = {topic.name: topic for topic in ctx.topics} or ctx.catalog.topics

    def kernels(topic: str, gpus: tuple[str, ...]) -> KernelMount | None:
        label = ",".join(gpus) or "none"
        return caches.for_container(ctx.catalog, topics[topic], image_ids[topic], gpus=label, user=caches.ROOT_USER, environ=os.environ)

    return kernels


def _fail(project: ComposeProject, stack: ComposeStack, verdict: Assessment, compose_tail: str) -> None:
    tails = []
    for service, why in verdict.failed:
        tails.append(f"--- {service}: {why}; its last {LOG_LINES} lines ---\n{project.service_logs(service, LOG_LINES)}")
    if compose_tail:
        tails.append(f"--- compose ---\n{compose_tail}")
    if verdict.failed:
        service, why = verdict.failed[0]
        message = f"{stack.name}: {service} {why}"
    else:
        message = f"{stack.name}: compose could not start the stack ({(compose_tail.strip().splitlines() or ['?'])[-1]})"
    raise StackError(
        message,
        fix=f"read the lines above (`invoke logs {stack.name} -s SERVICE` for more), then `invoke down {stack.name}`",
        log_tail="\n".join(tails),
    )


def _timeout(project: ComposeProject, stack: ComposeStack, verdict: Assessment, by_service: Mapping[str, ContainerInfo], limit: int) -> None:
    tails = []
    for service in verdict.waiting:
        state = by_service.get(service)
        tails.append(f"--- {service}: {describe(state, 'service')}; its last {LOG_LINES} lines ---\n{project.service_logs(service, LOG_LINES)}")
    raise StackError(
        f"{stack.name}: not ready after {limit}s: still waiting for {', '.join(verdict.waiting)}",
        fix=f"`--wait SECONDS` to wait longer, `invoke logs {stack.name}` to see why; `invoke down {stack.name}` stops it",
        log_tail="\n".join(tails),
    )


def down(name: str, *, log: Log = print, root: Path = REPO_ROOT) -> str:
    """Stop and remove every container, network and volume of the stack. Works from the
    compose project's labels too, so it cleans up after an `up` whose file is gone."""
    stack = load_stack(name, root)
    try:
        before = Engine.connect().project(stack.project, rendered_file(stack.name, root)).down()
    except EngineError as exc:
        raise StackError(f"{stack.name}: {exc.message}", fix=exc.fix) from None
    shutil.rmtree(state_dir(stack.name, root), ignore_errors=True)
    counts = ", ".join(f"{len(v)} {k}" for k, v in before.items())
    return f"{stack.name} is down: removed {counts}" if any(before.values()) else f"{stack.name} was not running: nothing to remove"


def logs(name: str, *, service: str = "", tail: int = 0, follow: bool = False, root: Path = REPO_ROOT) -> int:
    stack = load_stack(name, root)
    path = rendered_file(stack.name, root)
    if not path.is_file():
        raise UsageError(f"{stack.name} is not up (no {rel_path(path)})", fix=f"invoke up {stack.name}")
    rendered = yaml.safe_load(path.read_text())
    names = list(rendered["services"])
    selected = []
    if service:
        spec = stack.services.get(service)
        if service in names:
            selected = [service]
        elif spec is not None and spec.group:
            selected = [n for n in names if n.startswith(spec.group + "-")]
        elif service in {s.group for s in stack.services.values() if s.group}:
            selected = [n for n in names if n.startswith(service + "-")]
        else:
            raise UsageError(f"{stack.name} has no service '{service}'", fix=f"services: {', '.join(names)}")
    return Engine.connect().compose().logs(stack.project, path, selected, tail=tail, follow=follow)


def status(root: Path = REPO_ROOT) -> str:
    """`invoke stacks`: every stack, what it is, and what of it runs now."""
    engine = None
    try:
        engine = Engine.connect()
    except Exception:  # the table still says what the stacks are
        engine = None
    rows, notes = [], []
    for name in stack_names(root):
        stack = load_stack(name, root)
        if engine is None:
            state = "? (no engine)"
        else:
            states = engine.project_containers(stack.project)
            if not states:
                state = "down"
            else:
                running = sum(s.status == "running" for s in states)
                done = sum(s.status == "exited" and s.exit_code == 0 for s in states)
                bad = len(states) - running - done
                state = f"up: {running} running, {done} done" + (f", {bad} failed" if bad else "")
        gpus = f"{stack.gpus_default} (min {stack.gpus_min})"
        rows.append((name, stack.topic, gpus, "yes" if stack.cpu else "no", state, stack.description))
        for option in stack.options.values():
            notes.append(f"  {name} --option {option.name}={'|'.join(option.choices)} (default {option.default}): {option.help}")
    text = table(("stack", "topic", "gpus", "--cpu", "state", "what"), rows)
    return text + ("\noptions (invoke up|export STACK --option NAME=VALUE):\n" + "\n".join(notes) if notes else "")
