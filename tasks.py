"""invoke front end of the kit: parse, call mlsyskit.commands, print. Nothing else.

Several topics are given comma-separated (`invoke build distributed,verl`), or `all`:
invoke reads a second bare word as another task's name."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from mlsyskit import commands
from mlsyskit.checks import smoke as kit_smoke
from mlsyskit.cli import PositionalOrFlagTask, ShortFlagsTask
from mlsyskit.compose import export as kit_export
from mlsyskit.compose import stacks as kit_stacks
from mlsyskit.errors import KitError
from mlsyskit.runtime import devcontainer as kit_devcontainer
from mlsyskit.runtime import shell as kit_shell

ARCH_HELP = "amd64 or arm64 (default: this host's; arm64 on x86_64 runs under qemu: `invoke doctor --fix`)"
# --base and --arch: which images a command means (every task that takes them says so alike)
IMAGES_HELP = {"base": "base flavour of the images: pypi (no registry needed) or nvidia (default: kit.toml's)", "arch": ARCH_HELP}


def with_arch(base: str | None, arch: str) -> str:
    """`--arch` folded into the base name the commands take: `pypi` + arm64 -> `pypi-arm64`
    (`-arm64` alone: kit.toml's base); checked, with its one-line error, by Context.resolve."""
    return f"{base or ''}-{arch}" if arch else (base or "")


def say(line: str) -> None:
    print(line, flush=True)


def say_then_exit(text: str, error: str, code: int) -> None:
    """A command's report, then its exit: `code` with `error` where it found a problem."""
    say(text)
    if code:
        raise Exit(f"error: {error}", code=code)


P = ParamSpec("P")
R = TypeVar("R")


def kit_errors(body: Callable[P, R]) -> Callable[P, R]:
    """Turn a KitError into one line on stderr and the error's exit code."""

    @functools.wraps(body)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return body(*args, **kwargs)
        except KitError as exc:
            if exc.log_tail:
                print(exc.log_tail, file=sys.stderr)
            raise Exit(f"error: {exc}", code=exc.exit_code) from None

    return wrapper


@task(help={"fix": "install the engine, compose and debootstrap (Debian/Ubuntu) and start dockerd"})
@kit_errors
def doctor(c: Context, fix: bool = False) -> None:
    """Check the Docker engine, Compose, disk, and NVIDIA driver/toolkit against the images."""
    text, healthy = commands.doctor(fix, say)
    say_then_exit(text, "some checks failed (see the fixes above)", 0 if healthy else 3)


@task(
    positional=["topics"],
    help={
        "topics": "topic names, comma-separated, or `all`",
        **IMAGES_HELP,
        "no-cache": "rebuild every layer from scratch",
        "verbose": "show every line of the build log",
        "dry-run": "print each layer's tag, parent, inputs and build args, and whether it would be built or reused; build nothing",
    },
)
@kit_errors
def build(c: Context, topics: str, base: str | None = None, no_cache: bool = False, verbose: bool = False, dry_run: bool = False, arch: str = "") -> None:
    """Build base -> framework -> topic, only what is missing or changed."""
    say(commands.build(topics, with_arch(base, arch), no_cache, verbose, say, dry_run=dry_run))


@task
@kit_errors
def images(c: Context) -> None:
    """List the kit's images: tag, layer, size and the lock each was built from."""
    say(commands.images())


@task(help={"check": "fail if any lock is stale (resolves nothing)", "topics": "comma-separated (default: all)"})
@kit_errors
def lock(c: Context, topics: str = "", check: bool = False) -> None:
    """Re-resolve the framework and topic locks (`--check`: fail when one is stale)."""
    commands.lock(topics, check, say)


@task(positional=["topic"], help={"topic": "the topic to check", **IMAGES_HELP})
@kit_errors
def check(c: Context, topic: str, base: str | None = None, arch: str = "") -> None:
    """CPU check inside a built topic image: imports and key versions."""
    say(commands.check(topic, with_arch(base, arch), say))


@task(help={**IMAGES_HELP})
@kit_errors
def topics(c: Context, base: str | None = None, arch: str = "") -> None:
    """Every topic: its framework, key versions, GPU needs and whether its image is built."""
    say(commands.topics(with_arch(base, arch)))


@task(positional=["topic"], help={"topic": "the topic", **IMAGES_HELP})
@kit_errors
def versions(c: Context, topic: str, base: str | None = None, arch: str = "") -> None:
    """A topic's key packages (torch, CUDA, NCCL, sglang, ...) as locked, beside those in its image."""
    say(commands.versions(topic, with_arch(base, arch)))


@task(
    positional=["topic"],
    help={"topic": "the topic", **IMAGES_HELP, "output": "file to write (default: .kit/sbom/)"},
)
@kit_errors
def sbom(c: Context, topic: str, base: str | None = None, output: str = "", arch: str = "") -> None:
    """Write the topic image's SBOM (CycloneDX JSON): Python, Debian and CUDA packages, parents."""
    say(commands.sbom(topic, with_arch(base, arch), output, say))


@task(
    positional=["names"],
    help={
        "names": "TOPIC[,TOPIC] or one STACK", "output": "the file to write", **IMAGES_HELP,
        "sign": "an ed25519 private key (PEM or OpenSSH) to sign the bundle with (README: Signed bundles)",
        "with-cache": "also the topic images' kernel caches (`invoke cache ls`), so the other machine starts warm",
    },
)  # fmt: skip
@kit_errors
def bundle(c: Context, names: str, output: str = "", base: str | None = None, arch: str = "", sign: str = "", with_cache: bool = False) -> None:
    """One file with the images, SBOMs and locks of topics (or a stack) for a machine with no network."""
    say(commands.bundle(names, output, with_arch(base, arch), say, sign=sign, with_cache=with_cache))


@task(
    positional=["file"],
    help={
        "file": "a bundle from `invoke bundle`", "to": "where to unpack locks, SBOMs and stack files",
        "require-signature": "the signer's ed25519 public key: refuse the bundle unless it is signed by it (kit.toml's bundles.trusted_key does it always)",
        "allow-tags": "tags outside mlsyskit/ the bundle may set, comma-separated (refused otherwise)",
    },
)  # fmt: skip
@kit_errors
def load(c: Context, file: str, to: str = "", require_signature: str = "", allow_tags: str = "") -> None:
    """Check a bundle (members, sizes, checksums, signature, tags) and load its images (same IDs, tags and labels)."""
    say(commands.load(file, to, say, require_signature=require_signature, allow_tags=allow_tags))


@task(
    positional=["topic"],
    help={"topic": "the topic", **IMAGES_HELP, "keep": "keep the rebuild as mlsyskit/verify-TOPIC:BASE"},
)
@kit_errors
def verify(c: Context, topic: str, base: str | None = None, keep: bool = False, arch: str = "") -> None:
    """Rebuild a topic from nothing (no layer or package cache) and compare every file with its image."""
    text, same = commands.verify(topic, with_arch(base, arch), keep, say)
    say_then_exit(text, "the rebuild differs outside the documented paths (README: Rebuilds that match)", 0 if same else 1)


@task(
    positional=["action"],
    help={
        "action": "ls (size, architecture, user and last use of each), rm, or prune",
        "topic": "topics, comma-separated (ls, rm)",
        "image": "one image's caches: its ID or the first digits of it (ls, rm)",
        "arch": "one GPU architecture's caches: sm_90, cpu (ls, rm)",
        "all": "rm: every kernel cache",
        "older-than": "prune: also the caches unused for this many days",
    },
)
@kit_errors
def cache(c: Context, action: str, topic: str = "", image: str = "", arch: str = "", all: bool = False, older_than: str = "") -> None:
    """The kernel caches (JIT builds kept per image and GPU): ls, rm, or prune those of images the kit no longer runs."""
    say(commands.cache(action, topic, image, arch, all, older_than, say))


@task
@kit_errors
def clean(c: Context) -> None:
    """Remove the kit's images and its build cache."""
    say(commands.clean(say))


def say_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@task(
    klass=PositionalOrFlagTask,
    stand_in=("topic", "name"),
    positional=["topic"],
    iterable=["mount", "env", "port"],
    help={
        "topic": "the topic whose image to run (built first if missing); optional with --name",
        **IMAGES_HELP,
        "workspace": "host directory mounted at /workspace, the working directory (default: the current one)",
        "gpus": "all (default where there are GPUs), none, N (the N least-used), or devices: 0,1 / 3, / GPU-uuid",
        "shm-size": "a private /dev/shm of this size (e.g. 16g) instead of --ipc=host",
        "mount": "extra mount HOST[:CONTAINER[:ro]] or docker's type=... form (repeatable)",
        "env": "KEY=VALUE, or KEY to pass the host's value (repeatable)",
        "port": "publish a port: 8000, 8080:80, 127.0.0.1:8000:8000 (repeatable)",
        "network": "docker network, e.g. host",
        "name": "keep a named long-lived container; the same --name later re-enters it",
        "root": "run as root instead of your own UID/GID",
    },
)
@kit_errors
def shell(
    c: Context, topic: str | None = None, base: str = "", workspace: str = "", gpus: str = "", shm_size: str = "",
    mount: list[str] | None = None, env: list[str] | None = None, port: list[str] | None = None, name: str = "",
    network: str = "", root: bool = False, arch: str = "",
) -> None:  # fmt: skip
    """Shell (or `-- CMD ARGS...`, exit code kept) in a topic's container: GPUs, shm, HF cache, your UID."""
    options = kit_shell.ShellOptions(
        topic=topic or "",
        base=with_arch(base, arch),
        command=kit_shell.command_from_argv(c.remainder, sys.argv),
        workspace=workspace,
        gpus=gpus,
        shm_size=shm_size,
        mounts=tuple(mount or ()),
        env=tuple(env or ()),
        ports=tuple(port or ()),
        network=network,
        name=name,
        root=root,
    )
    kit_shell.shell(options, say_err)


@task(
    positional=["topic"],
    help={
        "topic": "the topic whose container to describe (its image is built first if missing)",
        "output": "the folder that gets .devcontainer/devcontainer.json and becomes /workspace (default: the current one)",
        "check": "write nothing; fail (exit 5) when the file no longer matches the image, its lock or the shell's rules",
        **IMAGES_HELP,
    },
)
@kit_errors
def devcontainer(c: Context, topic: str, output: str = "", check: bool = False, base: str = "", arch: str = "") -> None:
    """Write .devcontainer/devcontainer.json for VS Code, Cursor and the devcontainer CLI: the same container as `invoke shell`."""
    options = kit_devcontainer.DevcontainerOptions(topic=topic, output=output, check=check, base=with_arch(base, arch))
    say(kit_devcontainer.devcontainer(options, say_err))


@task
@kit_errors
def ps(c: Context) -> None:
    """List the kit's containers (named and running one-off shells)."""
    say(kit_shell.ps())


@task(
    positional=["stack"],
    help={
        "stack": "the stack (compose/STACK.yml); `invoke stacks` lists them",
        "gpus": "N (the N least-used GPUs), devices 0,1 / 3, , all, or none (= --cpu); default: the stack's own count",
        "cpu": "the CPU variant (gloo, Ray without GPUs), where the stack has one",
        "wait": "seconds to wait for healthy services and finished jobs (default: the stack's)",
        "model": "a Hugging Face model id from the HF cache for the SGLang stacks (default: a tiny random-weight model)",
        **IMAGES_HELP,
        "option": "NAME=VALUE, one of the stack's options (`invoke stacks` lists them; repeatable)",
        "rdma": "give the GPU services /dev/infiniband and IPC_LOCK (NCCL and UCX over InfiniBand/RoCE)",
    },
    iterable=["option"],
)
@kit_errors
def up(
    c: Context, stack: str, gpus: str = "", cpu: bool = False, wait: int = 0, model: str = "", base: str = "", arch: str = "",
    option: list[str] | None = None, rdma: bool = False,
) -> None:  # fmt: skip
    """Start a compose stack and wait until every service is healthy and every job has finished."""
    result = kit_stacks.up(stack, gpus=gpus, cpu=cpu, wait=wait, model=model, base=with_arch(base, arch), settings=option or (), rdma=rdma, log=say)
    say(result.text)


@task(positional=["stack"], help={"stack": "the stack to stop"})
@kit_errors
def down(c: Context, stack: str) -> None:
    """Stop a stack and remove its containers, networks and volumes."""
    say(kit_stacks.down(stack, log=say))


@task(
    positional=["name"],
    help={
        "name": "the stack whose logs to show",
        "service": "one service, or a group (worker); a flag because invoke reads a second bare word as a task",
        "tail": "only the last N lines of each service",
        "follow": "keep following the logs (Ctrl-C stops)",
    },
)
@kit_errors
def logs(c: Context, name: str, service: str = "", tail: int = 0, follow: bool = False) -> None:
    """Show the logs of a stack's services."""
    code = kit_stacks.logs(name, service=service, tail=tail, follow=follow)
    if code:
        raise Exit(code=code)


@task
@kit_errors
def stacks(c: Context) -> None:
    """List the compose stacks: topic, GPUs, CPU variant and what of each runs now."""
    say(kit_stacks.status())


@task(
    klass=ShortFlagsTask,
    positional=["target", "stack"],
    auto_shortflags=False,  # invoke would hand out `-h` (help's) and `--` (the remainder's)
    short={"output": "o"},  # README's `-o DIR`
    help={
        "target": "k8s or slurm",
        "stack": "the stack to export (compose/STACK.yml)",
        "output": "folder for the files (default: .kit/export/TARGET)",
        "nodes": "nodes (Kubernetes: pods of the group; router: workers); default: the stack's own",
        "gpus-per-node": "GPUs per node (router workers: 1); default: the stack's own",
        "image-registry": "registry the kit's images were pushed to, e.g. ghcr.io/me (default: the local names)",
        "runtime": "slurm: pyxis (enroot .sqsh) or apptainer (.sif)",
        **IMAGES_HELP,
        "model": "SGLang stacks: a Hugging Face model id, or tiny (a random-weight model written in the pod)",
        "namespace": "k8s: the namespace of every object",
        "host-ipc": "k8s: hostIPC on GPU pods",
        "host-network": "k8s: hostNetwork on GPU pods",
        "rdma": "k8s: mount /dev/infiniband and add IPC_LOCK for NCCL and UCX over RDMA",
        "option": "NAME=VALUE, one of the stack's options (`invoke stacks` lists them; repeatable)",
        "ifname": "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME (default: eth0 in pods; on Slurm NCCL's ^lo,docker0 and Gloo the default route's)",
        "cpu": "slurm: the stack's CPU variant (gloo all-reduce, a CPU Ray cluster); no GPUs asked for",
        "image-file": "slurm: the image file on shared storage (default: made on first use under $KIT_IMAGE_DIR)",
        "kit-root": "slurm: the kit's checkout as every node sees it (default: this checkout)",
        "bundle": "slurm (apptainer): an `invoke bundle` file on shared storage as the image source",
        "shm-size": "k8s: size of the memory-backed /dev/shm (default 16Gi)",
        "hf-cache-pvc": "k8s: a PersistentVolumeClaim holding the HF cache (default: an emptyDir)",
        "kernel-cache": "a node-local or shared folder (absolute) that keeps JIT-compiled kernels between runs, per image ID and GPU (default: none)",
        "api-key": "SGLang stacks: require KIT_API_KEY (slurm: from the environment sbatch passes on; k8s: Secret sglang-api-key)",
    },
    iterable=["option"],
)
@kit_errors
def export(
    c: Context, target: str, stack: str, output: str = "", nodes: str | None = None, gpus_per_node: str | None = None,
    image_registry: str = "", runtime: str = "pyxis", base: str = "", model: str = "tiny", namespace: str = "default",
    host_ipc: bool = False, host_network: bool = False, rdma: bool = False, ifname: str = "", shm_size: str = "16Gi",
    hf_cache_pvc: str = "", cpu: bool = False, image_file: str = "", kit_root: str = "", bundle: str = "", arch: str = "",
    option: list[str] | None = None, api_key: bool = False, kernel_cache: str = "",
) -> None:  # fmt: skip
    """Write Kubernetes objects or a Slurm batch script for a stack, from the same definitions."""
    for path in kit_export.run(
        target, stack, output=output, nodes=nodes, gpus_per_node=gpus_per_node, image_registry=image_registry,
        runtime=runtime, base=with_arch(base, arch), model=model, namespace=namespace, host_ipc=host_ipc, host_network=host_network,
        rdma=rdma, ifname=ifname, shm_size=shm_size, hf_cache_pvc=hf_cache_pvc, cpu=cpu, image_file=image_file,
        kit_root=kit_root, bundle=bundle, settings=tuple(option or ()), api_key=api_key, kernel_cache=kernel_cache,
    ):  # fmt: skip
        say(f"wrote {path}")


@task(
    positional=["topics"],
    help={
        "topics": "topic names, comma-separated, or `all` (every topic with smoke tests)",
        "cpu": "the CPU variants: NCCL over gloo; GPU-only tests check what they can and report skipped",
        "gpus": "as for invoke shell: all (default where there are GPUs), none, N (least used), or 0,1",
        "json": "write every result (the smoke tests' JSON schema) to this file",
        "timeout": "seconds each test may take (default: each test's own)",
        "tests": "comma-separated smoke tests to run in the topic's image instead of its list",
        "model": "a Hugging Face model id (from the HF cache) for the SGLang test (default: a tiny random model)",
        **IMAGES_HELP,
        "no-stacks": "skip the multi-container variants (nccl-2node)",
        "require-gpu": "no GPU visible is a failure, not a skip (always so on a host with GPUs unless --cpu)",
        "no-gates": "judge correctness only: every test's gates (shares of peak, link, transport) off",
        "gate": "[TEST.]NAME=VALUE: set one gate (a number, on/off, words; off turns it off), repeatable; e.g. bf16_gemm_share=0.6",
    },
    iterable=["gate"],
)
@kit_errors
def smoke(
    c: Context, topics: str, cpu: bool = False, gpus: str = "", json: str = "", timeout: float = 0, tests: str = "",
    model: str = "", base: str = "", no_stacks: bool = False, require_gpu: bool = False, arch: str = "", no_gates: bool = False,
    gate: list[str] | None = None,
) -> None:  # fmt: skip
    """Run the topics' smoke tests in their containers; one table; exit 1 if any failed."""
    options = kit_smoke.SmokeOptions(
        topics=topics, cpu=cpu, gpus=gpus, json_path=json, timeout=float(timeout), tests=tests, model=model, base=with_arch(base, arch),
        stacks=not no_stacks, require_gpu=require_gpu, no_gates=no_gates, gates=tuple(gate or ()),
    )  # fmt: skip
    report = kit_smoke.smoke(options, say)
    failed = "interrupted" if report.interrupted else f"{report.counts()['failed']} smoke test(s) failed"
    say_then_exit(kit_smoke.render(report), failed, report.exit_code)
