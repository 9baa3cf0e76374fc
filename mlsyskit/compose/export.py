"""`invoke export k8s|slurm STACK`: the same stack definitions (compose/<stack>.yml and its
`x-mlsyskit` data) written as Kubernetes objects or a Slurm batch script.

The objects are generated directly, not through kompose, which drops exactly the fields
that matter here (GPU reservations, IPC, /dev/shm, ulimits). What every target shares
comes from the stack file: images (the topic's, optionally under a registry), the commands
(scripts in compose/scripts, which read only KIT_* variables), environment, ports and
healthchecks. What differs per target is how KIT_NODE_RANK and KIT_HEAD are found:

  compose     rendered per container by `invoke up`
  Kubernetes  Job completion index / LWS worker index; the leader's or rank 0's DNS name
  Slurm       $SLURM_NODEID inside each task; the first node of the allocation

What differs by stack pattern (its shape rules, Kubernetes objects and Slurm steps) is in
that pattern's module of compose/patterns/; this module builds what they share and asks
the pattern, never its name.

Everything here is pure (data in, text out) and tested offline: core objects with
kubernetes-validate, the LeaderWorkerSet and RayJob CRDs with jsonschema, the batch
scripts with bash -n and shellcheck."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlsyskit import REPO_ROOT
from mlsyskit.compose import patterns
from mlsyskit.compose.stacks import HF_TARGET, ComposeStack, load_stack, option_values, stack_names
from mlsyskit.context import Context
from mlsyskit.data.catalog import KernelCache
from mlsyskit.data.fields import rel_path
from mlsyskit.errors import UsageError
from mlsyskit.images.plan import topic_alias
from mlsyskit.runtime.caches import ROOT_USER, TARGET, TOPIC_RE, env_assignments, image_key

RUNTIMES = ("pyxis", "apptainer")
MAX_GPUS_PER_NODE = 8  # the largest common GPU node; a stack may allow fewer
SCRIPTS_TARGET = "/opt/mlsyskit/stacks"
SECRET_ENV = {"HF_TOKEN": ("hf-token", "token")}  # env var -> (Secret, key), optional in pods
API_KEY_ENV, API_KEY_SECRET = "KIT_API_KEY", ("sglang-api-key", "key")  # --api-key: required in pods
PART_OF = "mlsyskit"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    nodes: int | None = None  # None: the stack's own default
    gpus_per_node: int | None = None
    image_registry: str = ""
    base: str = "pypi"
    model: str = "tiny"
    namespace: str = "default"
    host_ipc: bool = False
    host_network: bool = False
    rdma: bool = False
    ifname: str = ""  # NCCL/Gloo interface; "" = eth0 in pods, NCCL's exclusion list on Slurm
    shm_size: str = "16Gi"
    hf_cache_pvc: str = ""  # a PersistentVolumeClaim for the HF cache; "" = an emptyDir
    runtime: str = "pyxis"
    kit_root: str = ""  # Slurm: the kit's checkout on shared storage ("" = this checkout)
    cpu: bool = False  # Slurm: the stack's CPU variant (gloo, a CPU Ray cluster), no GPUs asked for
    image_file: str = ""  # Slurm: the image file on shared storage ("" = made on first use under $KIT_IMAGE_DIR)
    bundle: str = ""  # Slurm: an `invoke bundle` file on shared storage, the image source (no daemon, no registry)
    api_key: bool = False  # SGLang stacks: KIT_API_KEY is required (Slurm: from the environment; k8s: a Secret)
    settings: tuple[str, ...] = ()  # --option NAME=VALUE: the stack's options (compose/stacks.py option_values)
    # --kernel-cache DIR: kernel caches on the nodes (runtime/caches.py), for each topic its
    # image's ID and declared caches (filled by `run` from the engine or the bundle)
    kernel_cache: str = ""
    kernel_images: Mapping[str, str] = field(default_factory=dict)
    kernel_caches: Mapping[str, tuple[KernelCache, ...]] = field(default_factory=dict)

    def kernels_of(self, topic: str) -> tuple[str, tuple[KernelCache, ...]] | None:
        """(the image's 12-hex key, its caches) where --kernel-cache applies to the topic."""
        if not self.kernel_cache or not self.kernel_caches.get(topic) or topic not in self.kernel_images:
            return None
        return image_key(self.kernel_images[topic]), self.kernel_caches[topic]


@dataclass(frozen=True)
class Shape:
    nodes: int
    gpus_per_node: int  # 0: the stack's CPU variant

    @property
    def cpu(self) -> bool:
        return self.gpus_per_node == 0


# --- what the stack can use --------------------------------------------------------------


def max_gpus_per_node(stack: ComposeStack) -> tuple[int, str]:
    """The most GPUs one node of this stack can use, and why."""
    return patterns.get(stack.pattern).gpus_per_node_limit or (MAX_GPUS_PER_NODE, f"the largest GPU node is {MAX_GPUS_PER_NODE} GPUs")


def default_shape(stack: ComposeStack) -> Shape:
    own = patterns.get(stack.pattern).default_shape(stack)
    if own is not None:
        return own
    split = len(stack.split_services())
    if split:
        return Shape(split, max(1, stack.gpus_default // split))
    return Shape(1, stack.gpus_default)


def shape_for(stack: ComposeStack, opts: ExportOptions) -> Shape:
    """The nodes and GPUs per node to export, or one clear error."""
    default = default_shape(stack)
    nodes = default.nodes if opts.nodes is None else opts.nodes
    gpus = default.gpus_per_node if opts.gpus_per_node is None else opts.gpus_per_node
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: {stack.name} needs at least 1 node")
    if opts.cpu:
        if not stack.cpu:
            with_cpu = ", ".join(name for name in stack_names() if load_stack(name).cpu)
            raise UsageError(f"--cpu: {stack.name} has no CPU variant: it needs GPUs", fix=f"stacks with --cpu: {with_cpu}")
        if opts.gpus_per_node is not None:
            raise UsageError("give either --cpu or --gpus-per-node, not both")
        patterns.get(stack.pattern).check_shape(stack, Shape(nodes, 0))
        return Shape(nodes, 0)
    limit, why = max_gpus_per_node(stack)
    if gpus < 1:
        raise UsageError(f"--gpus-per-node {gpus}: {stack.name} needs at least 1 GPU per node")
    if gpus > limit:
        raise UsageError(f"--gpus-per-node {gpus}: {stack.name} can use at most {limit} GPU(s) per node ({why})")
    patterns.get(stack.pattern).check_shape(stack, Shape(nodes, gpus))
    return Shape(nodes, gpus)


# --- reading the compose file ------------------------------------------------------------

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax ($$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default})."""

    def sub(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        op, default = match.group(3), match.group(4) or ""
        value = env.get(name)
        if op == ":-":
            return value if value else default
        if op == "-":
            return value if value is not None else default
        if op in (":?", "?") and not value:
            raise UsageError(f"${{{name}}} must be set: {default}")
        return value or ""

    return _VAR.sub(sub, text)


def service_env(stack: ComposeStack, service: str, overrides: Mapping[str, str], ifname: str) -> dict[str, str]:
    """The service's environment as the file gives it (defaults applied), KIT_* set for the
    target, empty values and secrets left out."""
    given = {"NCCL_SOCKET_IFNAME": ifname, "GLOO_SOCKET_IFNAME": ifname} if ifname else {}
    raw = stack.compose["services"][service].get("environment") or {}
    env = {k: interpolate("" if v is None else str(v), given) for k, v in raw.items()}
    env.update(overrides)
    return {k: v for k, v in sorted(env.items()) if v != "" and k not in SECRET_ENV}


def image_ref(stack: ComposeStack, service: str, opts: ExportOptions) -> str:
    spec = stack.services[service]
    ref = topic_alias(spec.topic or stack.topic, opts.base)
    return f"{opts.image_registry.rstrip('/')}/{ref}" if opts.image_registry else ref


def repo_mounts(stack: ComposeStack, service: str) -> list[tuple[Path, str]]:
    """(host folder inside the kit, container path) of the service's bind mounts that ship
    kit files (compose/scripts, smoke_tests)."""
    out = []
    for entry in stack.compose["services"][service].get("volumes") or []:
        if not isinstance(entry, str) or not entry.startswith("."):
            continue
        source, target = entry.split(":")[:2]
        out.append(((stack.path.parent / source).resolve(), target))
    return out


def named_volumes(stack: ComposeStack, service: str) -> list[tuple[str, str]]:
    out = []
    for entry in stack.compose["services"][service].get("volumes") or []:
        if isinstance(entry, str) and entry.split(":")[0] in (stack.compose.get("volumes") or {}):
            name, target = entry.split(":")[:2]
            out.append((name, target))
    return out


def mounts_hf_cache(stack: ComposeStack, service: str) -> bool:
    return any(isinstance(e, str) and f":{HF_TARGET}" in e for e in stack.compose["services"][service].get("volumes") or [])


def duration_seconds(text: Any, default: int) -> int:
    """Compose durations: 5s, 1m30s, 600s, 2h."""
    if text is None:
        return default
    total, found = 0.0, False
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", str(text)):
        found = True
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return max(1, round(total)) if found else default


def one(stack: ComposeStack, role: str) -> str:
    found = stack.by_role(role)
    if len(found) != 1:
        raise UsageError(f"{stack.path.name}: pattern '{stack.pattern}' needs exactly one service with role '{role}'")
    return found[0].name


# --- Kubernetes -------------------------------------------------------------------------


def _name(text: str) -> str:
    """A DNS-1123 name for a Kubernetes object or volume."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


class K8s:
    """Builds the objects of one stack export."""

    def __init__(self, stack: ComposeStack, shape: Shape, opts: ExportOptions) -> None:
        self.stack, self.shape, self.opts = stack, shape, opts
        self.configmaps: dict[str, tuple[Path, str]] = {}  # volume name -> (folder, mount path)
        self.kernel_paths: dict[str, str] = {}  # volume name -> the node's folder (--kernel-cache)

    # metadata -----------------------------------------------------------------------

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": self.stack.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PART_OF,
        }

    def meta(self, name: str, component: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": self.opts.namespace, "labels": self.labels(component), **extra}

    # pods -----------------------------------------------------------------------------

    def env_list(self, env: Mapping[str, str], field_env: Mapping[str, str] | None = None, *, api_key: bool = False) -> list[dict[str, Any]]:
        field_env = field_env or {}
        out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items() if k not in dict(field_env)]
        for name, path in dict(field_env).items():
            out.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
        for name, (secret, key) in SECRET_ENV.items():
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}})
        if api_key:
            secret, key = API_KEY_SECRET
            out.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        return out

    def container(
        self,
        service: str,
        *,
        gpus: int,
        env: Mapping[str, str],
        field_env: Mapping[str, str] | None = None,
        probe: bool = True,
        command: Sequence[str] | None = None,
        ports: Sequence[tuple[str, int]] = (),
    ) -> dict[str, Any]:
        body = self.stack.compose["services"][service]
        spec = self.stack.services[service]
        out: dict[str, Any] = {"name": service, "image": image_ref(self.stack, service, self.opts)}
        if command is not None:
            if command:
                out["command"] = list(command)
        else:
            out["command"] = list(body["command"])
        out["workingDir"] = body.get("working_dir", "/opt/mlsyskit")
        out["env"] = self.env_list(env, field_env, api_key=self.opts.api_key and spec.role != "prep")
        all_ports = list(ports) or ([("http", spec.port)] if spec.port else [])
        if all_ports:
            out["ports"] = [{"name": name, "containerPort": port} for name, port in all_ports]
        if gpus:
            out["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
        mounts = []
        for folder, target in repo_mounts(self.stack, service):
            volume = _name(f"kit-{folder.name}")
            self.configmaps[volume] = (folder, target)
            mounts.append({"name": volume, "mountPath": target, "readOnly": True})
        if mounts_hf_cache(self.stack, service):
            mounts.append({"name": "hf-cache", "mountPath": HF_TARGET})
        for name, target in named_volumes(self.stack, service):
            mounts.append({"name": _name(name), "mountPath": target})
        if kernels := self.opts.kernels_of(spec.topic or self.stack.topic):
            # One folder per node (its GPUs decide what the kernels are built for), root's.
            key, caches = kernels
            volume = _name(f"kernels-{spec.topic or self.stack.topic}")
            self.kernel_paths[volume] = f"{self.opts.kernel_cache.rstrip('/')}/{spec.topic or self.stack.topic}/{key}"
            mounts.append({"name": volume, "mountPath": TARGET, "subPathExpr": f"$(KIT_NODE_NAME)/{ROOT_USER}"})
            out["env"] += [{"name": k, "value": v} for k, _, v in (e.partition("=") for e in env_assignments(caches, TARGET))]
            out["env"].append({"name": "KIT_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
        if gpus:
            mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
            if self.opts.rdma:
                mounts.append({"name": "infiniband", "mountPath": "/dev/infiniband"})
                out["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
        out["volumeMounts"] = mounts
        health = body.get("healthcheck")
        if probe and health and not health.get("disable"):
            test = list(health["test"])
            command_probe = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
            out["readinessProbe"] = {
                "exec": {"command": command_probe},
                "periodSeconds": duration_seconds(health.get("interval"), 10),
                "timeoutSeconds": duration_seconds(health.get("timeout"), 10),
                "failureThreshold": int(health.get("retries", 3)),
            }
        return out

    def pod(self, containers: list[dict[str, Any]], *, init: Sequence[dict[str, Any]] = (), restart: str = "", **extra: Any) -> dict[str, Any]:
        volumes: list[dict[str, Any]] = []
        names = {m["name"] for c in [*containers, *init] for m in c.get("volumeMounts", [])}
        for volume, (folder, _target) in sorted(self.configmaps.items()):
            if volume in names:
                volumes.append({"name": volume, "configMap": {"name": self.configmap_name(folder)}})
        if "hf-cache" in names:
            if self.opts.hf_cache_pvc:
                volumes.append({"name": "hf-cache", "persistentVolumeClaim": {"claimName": self.opts.hf_cache_pvc}})
            else:
                volumes.append({"name": "hf-cache", "emptyDir": {}})
        for name in sorted(names & set(self.kernel_paths)):
            volumes.append({"name": name, "hostPath": {"path": self.kernel_paths[name], "type": "DirectoryOrCreate"}})
        for name in sorted(names - {"hf-cache", "dshm", "infiniband", *self.configmaps, *self.kernel_paths}):
            volumes.append({"name": name, "emptyDir": {}})
        if "dshm" in names:
            volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.opts.shm_size}})
        if "infiniband" in names:
            volumes.append({"name": "infiniband", "hostPath": {"path": "/dev/infiniband", "type": "Directory"}})
        spec: dict[str, Any] = {}
        if restart:
            spec["restartPolicy"] = restart
        if self.opts.host_ipc:
            spec["hostIPC"] = True
        if self.opts.host_network:
            spec["hostNetwork"] = True
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        spec.update(extra)
        if init:
            spec["initContainers"] = list(init)
        spec["containers"] = containers
        spec["volumes"] = volumes
        return spec

    def configmap_name(self, folder: Path) -> str:
        return _name(f"{self.stack.name}-{folder.name}")

    def configmap_objects(self) -> list[dict[str, Any]]:
        needed = kit_files(self.stack, extra=patterns.get(self.stack.pattern).shipped_commands(self.shape))
        out = []
        for folder, _target in sorted(set(self.configmaps.values())):
            data = {name: (folder / name).read_text() for name in sorted(needed.get(folder, ()))}
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": self.meta(self.configmap_name(folder), "files", annotations={"mlsyskit/source": rel_path(folder)}),
                    "data": data,
                }
            )
        return out

    def prep_init(self, service: str) -> list[dict[str, Any]]:
        """The stack's prep job (the tiny model) as an init container of pods that need it."""
        if not named_volumes(self.stack, service) or not self.stack.by_role("prep"):
            return []
        prep = one(self.stack, "prep")
        env = service_env(self.stack, prep, {"KIT_MODEL": self.opts.model}, self.opts.ifname or "eth0")
        return [self.container(prep, gpus=0, env=env, probe=False)]

    def service_object(
        self, name: str, component: str, selector: Mapping[str, str], ports: Sequence[tuple[str, int]], headless: bool = False
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"selector": dict(selector), "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports]}
        if headless:
            spec["clusterIP"] = "None"
        return {"apiVersion": "v1", "kind": "Service", "metadata": self.meta(name, component), "spec": spec}

    def client_job(self, target_service: str, port: int) -> list[dict[str, Any]]:
        if not self.stack.by_role("client"):
            return []
        client = one(self.stack, "client")
        env = service_env(self.stack, client, {"KIT_TARGET": f"http://{target_service}:{port}", "KIT_CLIENT_WAIT": "1800"}, self.opts.ifname or "eth0")
        pod = self.pod([self.container(client, gpus=0, env=env, probe=False)], restart="Never")
        return [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": self.meta(f"{self.stack.name}-{client}", "client"),
                "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": self.labels("client")}, "spec": pod}},
            }
        ]

    # what the patterns build with --------------------------------------------------------

    def gpu_env(self, service: str, extra: Mapping[str, str]) -> dict[str, str]:
        base = {"KIT_DEVICE": "cuda", "KIT_GPUS": str(self.shape.gpus_per_node), "KIT_NNODES": str(self.shape.nodes)}
        declared = self.stack.compose["services"][service].get("environment") or {}
        if "KIT_MODEL" in declared:
            base["KIT_MODEL"] = self.opts.model
        base.update({k: v for k, v in option_values(self.stack, self.opts.settings).items() if k in declared})
        return service_env(self.stack, service, {**base, **extra}, self.opts.ifname or "eth0")

    def network_policy(self) -> dict[str, Any]:
        """Only the stack's own pods reach its pods' ports, and whatever the pattern lets in (a
        Ray head's dashboard: KubeRay). Other workloads need a policy of their own to reach a server."""
        own = {"app.kubernetes.io/name": self.stack.name, "app.kubernetes.io/part-of": PART_OF}
        ingress: list[dict[str, Any]] = [{"from": [{"podSelector": {"matchLabels": dict(own)}}]}]
        ingress += patterns.get(self.stack.pattern).ingress(self.stack)
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.meta(self.stack.name, "network"),
            "spec": {"podSelector": {"matchLabels": own}, "policyTypes": ["Ingress"], "ingress": ingress},
        }

    def objects(self) -> list[dict[str, Any]]:
        body = patterns.get(self.stack.pattern).k8s(self)  # first: it decides which scripts the ConfigMap ships
        return self.configmap_objects() + body + [self.network_policy()]


_SCRIPT_REF = re.compile(re.escape(SCRIPTS_TARGET) + r"/([\w.-]+)")
_MODULE_REF = re.compile(r"\bsmoke_tests[./]([A-Za-z_]\w*)")
_FROM_IMPORT = re.compile(r"\bfrom smoke_tests import ([\w, ]+)")
_DATA_REF = re.compile(r"[\"'](\w+\.(?:toml|json))[\"']")  # a data file a module reads beside itself


def kit_files(stack: ComposeStack, extra: Sequence[str] = ()) -> dict[Path, set[str]]:
    """The files of compose/scripts and smoke_tests/ that the stack's commands use, followed
    through the scripts and modules that those name (so a ConfigMap ships only what runs)."""
    scripts = stack.path.parent / "scripts"
    smoke = REPO_ROOT / "smoke_tests"
    needed: dict[Path, set[str]] = {scripts: set(), smoke: set()}
    texts = [" ".join(str(w) for w in body.get("command") or []) for body in stack.compose["services"].values()]
    texts.append(" ".join(extra))
    while texts:
        text = texts.pop()
        for name in _SCRIPT_REF.findall(text):
            if name not in needed[scripts] and (scripts / name).is_file():
                needed[scripts].add(name)
                texts.append((scripts / name).read_text())
        modules = _MODULE_REF.findall(text)
        for names in _FROM_IMPORT.findall(text):
            modules += [n.strip() for n in names.split(",") if n.strip()]
        for module in modules:
            name = f"{module}.py"
            if name not in needed[smoke] and (smoke / name).is_file():
                needed[smoke].add(name)
                texts.append((smoke / name).read_text())
        needed[smoke].update(name for name in _DATA_REF.findall(text) if (smoke / name).is_file())
    if needed[smoke]:
        needed[smoke].add("__init__.py")
    return needed


def check_api_key(stack: ComposeStack, opts: ExportOptions) -> None:
    if opts.api_key and not patterns.get(stack.pattern).serves_api:
        sglang = ", ".join(name for name in stack_names() if patterns.get(load_stack(name).pattern).serves_api)
        raise UsageError(f"--api-key: {stack.name} serves no SGLang API", fix=f"stacks with one: {sglang}")


def k8s_shape(stack: ComposeStack, opts: ExportOptions) -> Shape:
    for flag, given in (("--cpu", opts.cpu), ("--image-file", opts.image_file), ("--kit-root", opts.kit_root), ("--bundle", opts.bundle)):
        if given:
            raise UsageError(f"{flag} is for `invoke export slurm`; Kubernetes pods ask for GPUs and pull the image")
    check_api_key(stack, opts)
    return shape_for(stack, opts)


def k8s_objects(stack: ComposeStack, opts: ExportOptions) -> list[dict[str, Any]]:
    return K8s(stack, k8s_shape(stack, opts), opts).objects()


def k8s_yaml(stack: ComposeStack, opts: ExportOptions) -> str:
    shape = k8s_shape(stack, opts)
    objects = K8s(stack, shape, opts).objects()
    header = (
        f"# {stack.name} for Kubernetes: generated by `invoke export k8s {stack.name}` from {rel_path(stack.path)}\n"
        f"# ({shape.nodes} node(s) x {shape.gpus_per_node} GPU(s)). Apply with `kubectl apply -f THIS`.\n"
    )
    needs = {"LeaderWorkerSet": "the LeaderWorkerSet controller (kubernetes-sigs/lws)", "RayJob": "the KubeRay operator"}
    for obj in objects:
        if obj["kind"] in needs:
            header += f"# Needs {needs[obj['kind']]} in the cluster.\n"
    header += "# Optional: a Secret `hf-token` with key `token` gives the pods HF_TOKEN.\n"
    if opts.kernel_cache:
        header += f"# Kernel caches: on each node under {opts.kernel_cache}/TOPIC/IMAGE/NODE/root (hostPath, made when missing).\n"
    if opts.api_key:
        header += f"# Needs a Secret `{API_KEY_SECRET[0]}` with key `{API_KEY_SECRET[1]}`: SGLang serves only requests that carry it.\n"
    header += "# A NetworkPolicy lets only the stack's own pods reach its ports"
    header += " (none applies with --host-network).\n" if opts.host_network else ": add one of your own to open a server to others.\n"
    return header + "---\n".join(yaml.safe_dump(o, sort_keys=False, width=120) for o in objects)


# --- Slurm ------------------------------------------------------------------------------


BUNDLE_IMAGES = "mlsyskit-bundle/images.tar"  # images/bundle.py's members
BUNDLE_MANIFEST = "mlsyskit-bundle/manifest.json"
MANIFEST_LIMIT = 16 << 20  # a manifest lists a few images and files: anything larger is not one


@dataclass(frozen=True)
class BundleFacts:
    """What the export takes from a bundle: the sha256 its manifest gives images.tar, which
    the nodes check before they build the image file from it."""

    images_sha256: str


def check_bundle(opts: ExportOptions, image: str, stack: str) -> BundleFacts:
    """--bundle: a file from `invoke bundle` that holds the stack's image, for Apptainer."""
    import json
    import tarfile

    if opts.runtime != "apptainer":
        raise UsageError("--bundle needs --runtime apptainer", fix="enroot (pyxis) imports from a registry or a Docker daemon only; use --runtime apptainer")
    if opts.image_registry:
        raise UsageError("--bundle and --image-registry name two image sources", fix="give one of them")
    unreadable = f"--bundle {opts.bundle}: not a readable kit bundle"
    fix = "write it with `invoke bundle STACK -o FILE`"
    try:
        with tarfile.open(opts.bundle, "r:") as archive:
            member = archive.getmember(BUNDLE_MANIFEST)
            if not member.isfile() or member.size > MANIFEST_LIMIT:
                raise UsageError(f"{unreadable} (its manifest is not a file of at most {MANIFEST_LIMIT >> 20} MiB)", fix=fix)
            stream = archive.extractfile(member)
            manifest = json.load(stream) if stream else {}
        tags = {t for i in manifest["images"] for t in i["tags"]}
        sums = [f["sha256"] for f in manifest["files"] if f["name"] == BUNDLE_IMAGES]
    except (OSError, KeyError, TypeError, tarfile.TarError, ValueError) as exc:
        raise UsageError(f"{unreadable} ({exc})", fix=fix) from None
    if len(sums) != 1 or not isinstance(sums[0], str) or not re.fullmatch(r"[0-9a-f]{64}", sums[0]):
        raise UsageError(f"{unreadable} (its manifest gives {BUNDLE_IMAGES} no sha256)", fix=fix)
    if image not in tags:
        raise UsageError(f"--bundle {opts.bundle} does not hold {image}", fix=f"write one that does: `invoke bundle {stack} -o FILE`")
    return BundleFacts(images_sha256=sums[0])


# Characters that would split a path in the runtime's bind list (`SRC:DST[:ro],...`) or a
# `docker-archive:PATH:REF` source: refused rather than mangled.
_BIND_SEPARATORS = re.compile(r"[,:\n\r]")
# A registry prefix as image references write it: host[:port][/path].
_REGISTRY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*/?")


def check_script_inputs(opts: ExportOptions) -> None:
    """Values that reach the batch script are quoted there (whatever they hold, a job runs
    none of it); what would break the runtime's own syntax is refused here, in one line."""
    for flag, value in (("--kit-root", opts.kit_root), ("--image-file", opts.image_file), ("--bundle", opts.bundle)):
        if value and _BIND_SEPARATORS.search(value):
            raise UsageError(
                f"{flag} {value!r}: a path with ',' or ':' (or a line break) cannot be handed to the container runtime",
                fix="move or link it to a path without them",
            )
    if opts.image_registry and not _REGISTRY.fullmatch(opts.image_registry):
        raise UsageError(f"--image-registry {opts.image_registry!r} is not a registry", fix="e.g. --image-registry ghcr.io/me or registry.local:5000/ml")


def image_file_name(ref: str, runtime: str) -> str:
    return re.sub(r"[/:]", "+", ref) + (".sqsh" if runtime == "pyxis" else ".sif")


def _default(name: str, value: str) -> str:
    """`NAME=${NAME:-VALUE}`-style default for a value from outside: shell-quoted, so that
    whatever it holds (`$(...)`, `}`, quotes, spaces) stays a value and runs nothing."""
    return "${" + name + ":-" + shlex.quote(value) + "}"


def _import_function(build: str, *, bundle: str = "", image: str = "") -> list[str]:
    """`import_image`: make the image file under a temporary name and rename it when whole,
    so that a job killed halfway leaves no file that a later job takes for the image. With a
    bundle, images.tar is checked against the sha256 recorded at export before it is read."""
    lines = [
        "# Made under a temporary name and renamed when whole: a job killed halfway leaves no image file.",
        "import_image() {",
        '  rm -f "$IMAGE_FILE".part-*  # halves left by killed jobs (the lock is held: no other import runs)',
        '  local part="$IMAGE_FILE.part-${SLURM_JOB_ID:-$$}" status',
    ]
    if bundle:
        lines += [
            "  local sum",
            f'  tar -xOf "$KIT_BUNDLE" {BUNDLE_IMAGES} > "$part.images.tar" || {{ rm -f "$part.images.tar"; return 1; }}',
            "  sum=$(sha256sum \"$part.images.tar\" | cut -d ' ' -f 1)",
            '  if [ "$sum" != "$BUNDLE_SHA256" ]; then',
            '    rm -f "$part.images.tar"',
            f'    echo "error: {BUNDLE_IMAGES} in $KIT_BUNDLE has sha256 $sum, not the $BUNDLE_SHA256 recorded at export:" \\',
            '      "the bundle was changed or damaged; copy it again and export again (or set KIT_BUNDLE_SHA256)" >&2',
            "    return 3",
            "  fi",
            "  # Apptainer reads one image of a multi-image `docker save` archive by its tag.",
            f'  apptainer build "$part" "docker-archive:$part.images.tar:"{shlex.quote(image)} && mv -f "$part" "$IMAGE_FILE"',
            "  status=$?",
            '  rm -f "$part.images.tar" "$part"',
            '  return "$status"',
        ]
    else:
        lines += [
            f'  {build} && mv -f "$part" "$IMAGE_FILE"',
            "  status=$?",
            '  rm -f "$part"',
            '  return "$status"',
        ]
    return [*lines, "}"]


def _api_key_lines(opts: ExportOptions) -> list[str]:
    """SGLang behind KIT_API_KEY: taken from the environment sbatch passes on, never written here."""
    lines = [
        "# --- the API key: with KIT_API_KEY set where you submit (sbatch passes the environment on),",
        "# SGLang and the router serve only requests that carry it. It is never written here.",
    ]
    if opts.api_key:
        lines += [
            'if [ -z "${KIT_API_KEY:-}" ]; then',
            '  echo "error: this script was exported with --api-key: set KIT_API_KEY where you run sbatch" \\',
            '    "(it passes the environment on; --export=NONE or a list without it drops it)" >&2',
            "  exit 2",
            "fi",
        ]
    return [*lines, ""]


def slurm_script(stack: ComposeStack, opts: ExportOptions) -> str:
    if opts.runtime not in RUNTIMES:
        raise UsageError(f"--runtime {opts.runtime}: not one of {', '.join(RUNTIMES)}")
    check_script_inputs(opts)
    check_api_key(stack, opts)
    if opts.image_file and not Path(opts.image_file).is_file():
        raise UsageError(f"--image-file {opts.image_file}: no such file", fix="make it first (apptainer build / enroot import), or leave --image-file out")
    shape = shape_for(stack, opts)
    options = option_values(stack, opts.settings)
    pattern = patterns.get(stack.pattern)
    main = stack.by_role(pattern.slurm_role)[0].name
    image = image_ref(stack, main, opts)
    kit_root = opts.kit_root or str(REPO_ROOT)
    mount_spec = ",".join([f"$KIT_ROOT/{rel_path(folder)}:{target}:ro" for folder, target in repo_mounts(stack, main)] + [f"$HF_HOME:{HF_TARGET}"])
    nv = "" if opts.cpu else " --nv"
    apptainer_launch = f'srun "${{args[@]}}" apptainer exec{nv} --bind "$MOUNTS" --pwd /opt/mlsyskit "$IMAGE_FILE" "$@"'
    bundle_sha256 = ""
    if opts.bundle:
        bundle_sha256 = check_bundle(opts, image, stack.name).images_sha256
        importer = _import_function("", bundle=opts.bundle, image=image)
        launch = apptainer_launch
    elif opts.runtime == "pyxis":
        source = f"docker://{opts.image_registry.rstrip('/')}#{topic_alias(stack.topic, opts.base)}" if opts.image_registry else f"dockerd://{image}"
        importer = _import_function(f'enroot import --output "$part" {shlex.quote(source)}')
        launch = 'srun "${args[@]}" --container-image="$IMAGE_FILE" --container-mounts="$MOUNTS" --container-workdir=/opt/mlsyskit "$@"'
    else:
        source = f"docker://{image}" if opts.image_registry else f"docker-daemon://{image}"
        importer = _import_function(f'apptainer build "$part" {shlex.quote(source)}')
        launch = apptainer_launch
    steps = pattern.slurm(stack, shape)
    ifname = opts.ifname
    device = "cpu" if opts.cpu else "cuda"
    on = "CPU only" if opts.cpu else f"{shape.gpus_per_node} GPU(s)"
    image_default = opts.image_file or "$IMAGE_DIR/" + shlex.quote(image_file_name(image, opts.runtime))
    lines = [
        "#!/bin/bash",
        f"# {stack.name} on Slurm: generated by `invoke export slurm {stack.name}` from {rel_path(stack.path)}",
        f"# ({shape.nodes} node(s) x {on}, {opts.runtime}). Submit from a kit checkout that every",
        "# node sees: `sbatch THIS` (sbatch's own flags, e.g. -p PARTITION -t 1:00:00, override the lines below).",
        f"#SBATCH --job-name=mlsyskit-{stack.name}",
        f"#SBATCH --nodes={shape.nodes}",
        "#SBATCH --ntasks-per-node=1",
        *([] if opts.cpu else [f"#SBATCH --gpus-per-node={shape.gpus_per_node}"]),
        "#SBATCH --output=%x-%j.out",
        "set -euo pipefail",
        'say() { echo "[$(date +%T)] $*"; }',
        "",
        "# --- where things are (each may be set in the environment instead) -------------------",
        f"KIT_ROOT={_default('KIT_ROOT', kit_root)}",
        "IMAGE_DIR=${KIT_IMAGE_DIR:-$KIT_ROOT/.kit/images}",
        *(
            [f"KIT_BUNDLE={_default('KIT_BUNDLE', str(Path(opts.bundle).absolute()))}", f"BUNDLE_SHA256={_default('KIT_BUNDLE_SHA256', bundle_sha256)}"]
            if opts.bundle
            else []
        ),
        f"IMAGE_FILE={_default('KIT_IMAGE_FILE', opts.image_file) if opts.image_file else '${KIT_IMAGE_FILE:-' + image_default + '}'}",
        "WORK_DIR=${KIT_WORK_DIR:-$KIT_ROOT/.kit/slurm/$SLURM_JOB_ID}",
        "export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}",
        "# NCCL picks an interface by exclusion; Gloo needs a name (--ifname at export).",
        f"export NCCL_SOCKET_IFNAME={_default('NCCL_SOCKET_IFNAME', ifname or '^lo,docker0')}",
    ]
    if ifname:
        lines.append(f"export GLOO_SOCKET_IFNAME={_default('GLOO_SOCKET_IFNAME', ifname)}")
    else:
        lines += [
            "# Without --ifname, Gloo takes the interface of this node's default route (else it",
            "# resolves the hostname, which the image's /etc/hosts may not know).",
            "default_ifname=$(ip -o route show default 2>/dev/null | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | head -n 1 || true)",
            'if [ -n "$default_ifname" ]; then export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$default_ifname}; fi',
        ]
    lines += [
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        "export PYTHONPATH=/opt/mlsyskit",
        f"export KIT_DEVICE={device} KIT_NNODES={shape.nodes} KIT_GPUS={shape.gpus_per_node} KIT_MODEL={_default('KIT_MODEL', opts.model)}",
        *(f"export {env}={_default(env, value)}  # --option" for env, value in options.items()),
        f'MOUNTS="{mount_spec}"',
        'mkdir -p "$IMAGE_DIR" "$WORK_DIR" "$HF_HOME"',
        *_slurm_kernels(stack, main, opts),
        "",
        "# --- the image, imported once to shared storage (a lock keeps concurrent jobs apart) ---",
        *importer,
        'if [ ! -s "$IMAGE_FILE" ]; then',
        '  say "importing the image to $IMAGE_FILE"',
        '  mkdir -p "$(dirname "$IMAGE_FILE")" || true',
        *(
            [
                "  imported=0",
                '  ( flock 9; [ -s "$IMAGE_FILE" ] || import_image ) 9>"$IMAGE_FILE.lock" || imported=$?',
                '  if [ "$imported" = 3 ]; then exit 2; fi  # the bundle failed its check (said above)',
            ]
            if opts.bundle
            else ['  ( flock 9; [ -s "$IMAGE_FILE" ] || import_image ) 9>"$IMAGE_FILE.lock" || true']
        ),
        "fi",
        'if [ ! -s "$IMAGE_FILE" ]; then',
        '  echo "error: the image file $IMAGE_FILE is missing and could not be made on $(hostname)" \\',
        '    "(no image or daemon here?): make it where the image is and copy it there, or set KIT_IMAGE_FILE" >&2',
        "  exit 2",
        "fi",
        'say "image: $IMAGE_FILE"',
        "",
        *(_api_key_lines(opts) if pattern.serves_api else []),
        "# --- the nodes; the first is the head (rank 0, Ray head, SGLang leader) --------------",
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "HEAD=${NODES[0]}",
        "# A node's address as Slurm knows it (NodeAddr), so that no name has to resolve in the image.",
        "node_addr() { scontrol show node \"$1\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p' | head -n 1; }",
        'HEAD_ADDR=$(node_addr "$HEAD")',
        "export KIT_HEAD=${KIT_HEAD_ADDRESS:-${HEAD_ADDR:-$HEAD}}",
        'say "nodes: ${NODES[*]}; head $HEAD at $KIT_HEAD"',
        "# Every node's address in the order of NODES (the head's is KIT_HEAD): what its services",
        "# listen on (KIT_BIND_HOST), so that none listens on more than the job's own network.",
        'NODE_ADDRS=("$KIT_HEAD")',
        'for node in "${NODES[@]:1}"; do addr=$(node_addr "$node"); NODE_ADDRS+=("${addr:-$node}"); done',
        'export KIT_NODE_ADDRS="${NODE_ADDRS[*]}"',
        *(
            [
                "# A step on several nodes starts with ON_NODE: the node's rank and its address.",
                "# shellcheck disable=SC2016 # expands inside each task, not here",
                "ON_NODE='export KIT_NODE_RANK=$SLURM_NODEID; addrs=($KIT_NODE_ADDRS); export KIT_BIND_HOST=${addrs[$SLURM_NODEID]};'",
            ]
            if any("$ON_NODE" in line for line in steps)
            else []
        ),
        "",
        "# in_container SRUN_ARGS... -- COMMAND...: a job step running COMMAND in the image",
        "in_container() {",
        "  local args=()",
        '  while [ "$1" != "--" ]; do args+=("$1"); shift; done',
        "  shift",
        f"  {launch}",
        "}",
        "",
        "# Steps running in the background, by PID: one that ends early stops the job, named.",
        "declare -A STEPS=()",
        'started() { STEPS[$1]=$2; say "started: $2"; }',
        "check_steps() {",
        "  local pid",
        '  for pid in "${!STEPS[@]}"; do',
        '    if ! kill -0 "$pid" 2>/dev/null; then',
        '      echo "error: ${STEPS[$pid]} ended early (its output is above)" >&2',
        "      return 1",
        "    fi",
        "  done",
        "}",
        "",
        "# wait_for WHAT SECONDS COMMAND...: retry COMMAND until it succeeds, or give up",
        "wait_for() {",
        "  local what=$1 limit=$2",
        "  shift 2",
        "  local deadline=$((SECONDS + limit))",
        '  say "waiting for $what (up to ${limit}s)"',
        '  until "$@" >/dev/null 2>&1; do',
        "    check_steps || return 1",
        '    if [ "$SECONDS" -ge "$deadline" ]; then echo "error: gave up after ${limit}s waiting for $what" >&2; return 1; fi',
        "    sleep 5",
        "  done",
        '  say "ready: $what"',
        "}",
        "",
        "# finish PID: wait for that step, stopping early if another background step ends first",
        "finish() {",
        "  local main=$1",
        '  unset "STEPS[$main]"',
        '  while kill -0 "$main" 2>/dev/null; do',
        "    check_steps || return 1",
        "    sleep 2",
        "  done",
        '  wait "$main"',
        "}",
        "",
        "# Steps started in the background are stopped when the script ends, however it ends.",
        "cleanup() { jobs -p | xargs -r kill 2>/dev/null || true; }",
        "trap cleanup EXIT",
        "",
    ]
    lines += steps
    return "\n".join(lines) + "\n"


def _slurm_kernels(stack: ComposeStack, main: str, opts: ExportOptions) -> list[str]:
    """--kernel-cache: the image's kernel cache on every node, keyed as the kit keys it (image
    ID, the head node's GPU architecture, the job's user), mounted where the kit mounts it."""
    topic = stack.services[main].topic or stack.topic
    kernels = opts.kernels_of(topic)
    if kernels is None:
        return []
    key, caches = kernels
    query = "nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -un | sed 's/^/sm_/' | paste -sd+ -"
    arch = "KERNEL_ARCH=cpu" if opts.cpu else f"KERNEL_ARCH=$({query} || true)  # sm_90; sm_80+sm_90 for a mix"
    folders = " ".join(f'"$KERNEL_DIR/{cache.name}"' for cache in caches)
    return [
        "",
        "# --- kernel caches: JIT builds kept between jobs, one folder per image ID, GPU architecture",
        "# and user (the allocation's nodes are taken to have the head's GPUs) -----------------------",
        f"KERNEL_CACHE={_default('KIT_KERNEL_CACHE', opts.kernel_cache)}",
        arch,
        'if [ -n "$KERNEL_ARCH" ]; then',
        '  if [ "$(id -u)" -eq 0 ]; then KERNEL_USER=root; else KERNEL_USER=uid-$(id -u); fi',
        f'  KERNEL_DIR="$KERNEL_CACHE/{topic}/{key}/$KERNEL_ARCH/$KERNEL_USER"',
        "  # made on every node: the folder may be node-local",
        f"  srun --ntasks-per-node=1 mkdir -p {folders}",
        f'  MOUNTS="$MOUNTS,$KERNEL_DIR:{TARGET}"',
        *(f"  export {line}" for line in env_assignments(caches, TARGET)),
        '  say "kernel caches: $KERNEL_DIR"',
        "else",
        '  say "no kernel cache: nvidia-smi did not name the GPU architecture"',
        "fi",
    ]


#: The SGLang stacks' model, made once on the head in the job's folder and mounted at /models.
SLURM_MODEL = (
    'MOUNTS="$MOUNTS,$WORK_DIR/models:/models"',
    'mkdir -p "$WORK_DIR/models"',
    f'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- python {SCRIPTS_TARGET}/prepare_model.py',
)


# --- the command ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An export target: the file it writes for a stack and how."""

    suffix: str
    render: Callable[[ComposeStack, ExportOptions], str]
    executable: bool = False


TARGETS: dict[str, Target] = {
    "k8s": Target("yaml", k8s_yaml),
    "slurm": Target("sbatch", slurm_script, executable=True),
}


def export(target: str, stack: ComposeStack, opts: ExportOptions, out_dir: Path) -> list[Path]:
    chosen = TARGETS.get(target)
    if chosen is None:
        raise UsageError(f"unknown export target '{target}'", fix=f"use one of: {', '.join(TARGETS)}")
    text = chosen.render(stack, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stack.name}.{chosen.suffix}"
    path.write_text(text)
    if chosen.executable:
        path.chmod(0o755)
    return [path]


def run(
    target: str, stack_name: str, *, output: str = "", base: str = "", nodes: str | int | None = None,
    gpus_per_node: str | int | None = None, **options: Any,
) -> list[Path]:  # fmt: skip
    """`invoke export`: parse, check, write; returns the files written."""
    if target not in TARGETS:
        raise UsageError(f"unknown export target '{target}'", fix=f"use one of: {', '.join(TARGETS)}")
    stack = load_stack(stack_name)
    ctx = Context.resolve(base)  # an unknown --base is refused here, before anything is written
    opts = ExportOptions(nodes=_count("--nodes", nodes), gpus_per_node=_count("--gpus-per-node", gpus_per_node), base=ctx.base_name, **options)
    if opts.kernel_cache:
        opts = with_kernels(opts, stack, ctx)
    out_dir = Path(output) if output else REPO_ROOT / ".kit" / "export" / target
    return export(target, stack, opts, out_dir)


def with_kernels(opts: ExportOptions, stack: ComposeStack, ctx: Context) -> ExportOptions:
    """--kernel-cache DIR: each topic's image ID (the cache's key) from the bundle (--bundle),
    else from this machine's engine, and its declared caches."""
    from dataclasses import replace

    from mlsyskit.runtime.caches import declared

    if not opts.kernel_cache.startswith("/") or any(c in opts.kernel_cache for c in "\n\r\0"):
        raise UsageError(f"--kernel-cache {opts.kernel_cache!r}: give an absolute path", fix="e.g. --kernel-cache /local/scratch/kernels")
    from_bundle: dict[str, str] = {}
    if opts.bundle:
        import json
        import tarfile

        try:
            with tarfile.open(opts.bundle, "r:") as archive:
                stream = archive.extractfile("mlsyskit-bundle/manifest.json")
                from_bundle = {t: i["id"] for i in (json.load(stream)["images"] if stream else []) for t in i["tags"]}
        except (OSError, KeyError, tarfile.TarError, ValueError):
            pass  # check_bundle says what is wrong with it
    images, caches = {}, {}
    for topic in stack.topics():
        if not TOPIC_RE.fullmatch(topic):  # it becomes a path in the exported files
            raise UsageError(f"--kernel-cache: topic name '{topic}' is not a plain folder name", fix="rename envs/" + topic)
        alias = topic_alias(topic, opts.base)
        found = from_bundle.get(alias) or (info.id if (info := ctx.engine.image(alias)) else "")
        if not found:
            raise UsageError(
                f"--kernel-cache keys the caches by the image's ID, and {alias} is not on this machine",
                fix=f"build or load it here first (`invoke build {topic}`), or give --bundle",
            )
        images[topic], caches[topic] = found, declared(ctx.catalog, ctx.catalog.topic(topic))
    return replace(opts, kernel_images=images, kernel_caches=caches)


def _count(flag: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} {value}: not a whole number") from None
