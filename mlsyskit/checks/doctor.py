"""`invoke doctor`: is this machine ready to build and run the kit's images? One line per
check, each with its fix; `--fix` installs what is missing on Debian/Ubuntu."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mlsyskit import LABEL_PREFIX
from mlsyskit.checks import gpu_state
from mlsyskit.data.catalog import Catalog
from mlsyskit.data.toml import read_toml
from mlsyskit.engine import COMPOSE_FIX, Engine, find_clients, find_compose, pick_builder, version_tuple
from mlsyskit.errors import KitError
from mlsyskit.runtime.gpus import PROC_GPUS, gpu_device_nodes, proc_gpu_count

MIN_FREE_GB = 40  # one topic image with its framework and build cache


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn", "fail" or "skip"
    detail: str
    fix: str = ""


def _run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str] | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def check_engine() -> tuple[list[Check], Engine | None]:
    clients = find_clients()
    if not clients:
        return [Check("docker client", "fail", "no docker client on PATH", "invoke doctor --fix (installs docker.io)")], None
    found = ", ".join(f"{c.path} {c.version}{' +buildx' if c.buildx else ''}" for c in clients)
    try:
        builder = pick_builder(clients)  # the choice every command makes (Engine.connect)
    except KitError as exc:
        return [Check("docker client", "fail", found, exc.fix)], None
    checks = [Check("docker client", "ok", f"{found}; builds with {builder.path}")]
    engine = Engine(builder)
    try:
        version = engine.server_version()
    except KitError as exc:
        checks.append(Check("docker daemon", "fail", exc.message, exc.fix))
        return checks, None
    checks.append(Check("docker daemon", "ok", f"engine {version}, BuildKit available"))
    return checks, engine


def check_compose() -> Check:
    # The same detection `invoke up` uses, so doctor says what the stacks will run with.
    compose = find_compose()
    if compose is not None:
        return Check("compose", "ok", compose.describe())
    return Check("compose", "fail", "no `docker compose` plugin and no docker-compose >= 1.29", COMPOSE_FIX)


def check_disk(engine: Engine | None) -> Check:
    root = "/var/lib/docker"
    if engine is not None:
        try:
            root = engine.daemon().root_dir or root
        except KitError:
            pass
    path = root if os.path.exists(root) else "/"
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < MIN_FREE_GB:
        return Check("disk", "warn", f"{free_gb:.0f} GB free under {path}", f"free {MIN_FREE_GB} GB: `invoke clean`, `docker system prune`")
    return Check("disk", "ok", f"{free_gb:.0f} GB free under {path}")


def check_bootstrap() -> Check:
    tool = shutil.which("debootstrap") or shutil.which("mmdebstrap")
    if tool:
        return Check("rootfs bootstrap", "ok", f"{tool} (builds the pypi base with no registry)")
    return Check("rootfs bootstrap", "warn", "no debootstrap: the pypi base needs a registry", "invoke doctor --fix (installs debootstrap)")


def check_memlock() -> Check:
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return Check("memlock limit", "ok", "unlimited (RDMA-capable containers can use memlock=-1)")
    return Check(
        "memlock limit",
        "warn",
        f"hard limit {hard // 1024} KiB: containers fall back to it (no RDMA registration of large buffers)",
        "raise `memlock` in /etc/security/limits.conf and dockerd's default-ulimits on GPU hosts",
    )


def check_emulation() -> Check:
    """Can this host build and run the other architecture's images (qemu through binfmt_misc,
    with the F flag so that containers and BuildKit find the interpreter)?"""
    from mlsyskit.arch import ARCHES, host_arch
    from mlsyskit.context import binfmt_state

    other = next(a for a in ARCHES if a != host_arch()) if host_arch() in ARCHES else "arm64"
    state = binfmt_state(other)
    if state == "ready":
        return Check(f"{other} emulation", "ok", f"qemu-{ARCHES[other]} registered with the F flag: `--arch {other}` builds and runs here")
    return Check(f"{other} emulation", "warn", f"{state}: `--arch {other}` cannot build or run here", "invoke doctor --fix (qemu-user-static, binfmt)")


def parse_nvidia_smi(text: str) -> tuple[str, str]:
    """(driver version, highest CUDA version) from `nvidia-smi`'s header."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (driver.group(1) if driver else "", cuda.group(1) if cuda else "")


def check_failing_nvidia_smi(smi: subprocess.CompletedProcess[str] | None, dev: str = "/dev", proc: str = PROC_GPUS) -> Check:
    """nvidia-smi missing or failing: a GPU-less host only where there is no GPU device node
    and no driver entry for one; with them, a broken driver that fails the check."""
    nodes = gpu_device_nodes(dev)
    listed = proc_gpu_count(proc) or 0
    if not nodes and not listed:
        return Check("nvidia driver", "skip", "no NVIDIA GPU on this machine: images run on CPU (gloo)")
    if smi is None:
        why = "nvidia-smi is missing or did not answer" if not shutil.which("nvidia-smi") else "nvidia-smi did not answer within 20 s"
    else:
        last = (smi.stderr.strip() or smi.stdout.strip()).splitlines()[-1:] or ["no output"]
        why = f"nvidia-smi exited with {smi.returncode}: {last[0][:200]}"
    where = ", ".join(f"/dev/{n}" for n in nodes) if nodes else f"{listed} GPU(s) in {proc}"
    return Check(
        "nvidia driver", "fail", f"{where} present, but {why}: GPU containers and tests will fail",
        "check the driver (`nvidia-smi`, `dmesg | grep -i nvrm`): the kernel module and its user-space libraries must be loaded and of one version",
    )  # fmt: skip


def check_gpus(catalog: Catalog, engine: Engine | None) -> list[Check]:
    smi = _run("nvidia-smi")
    if smi is None or smi.returncode != 0:
        return [check_failing_nvidia_smi(smi)]
    driver, cuda = parse_nvidia_smi(smi.stdout)
    checks = [Check("nvidia driver", "ok", f"driver {driver}, supports CUDA up to {cuda}")]
    for framework in catalog.frameworks.values():
        fine = version_tuple(cuda)[:2] >= version_tuple(framework.cuda)[:2]
        checks.append(
            Check(
                f"cuda for {framework.name}",
                "ok" if fine else "fail",
                f"needs CUDA {framework.cuda}, driver offers {cuda}",
                "" if fine else f"upgrade the NVIDIA driver to one supporting CUDA {framework.cuda}",
            )
        )
    runtimes = engine.daemon().runtimes if engine else ()
    toolkit = "nvidia" in runtimes or bool(shutil.which("nvidia-ctk")) or bool(shutil.which("nvidia-container-cli"))
    checks.append(
        Check(
            "container toolkit",
            "ok" if toolkit else "fail",
            "NVIDIA container toolkit found" if toolkit else "docker cannot hand GPUs to containers",
            "" if toolkit else "install nvidia-container-toolkit and run `nvidia-ctk runtime configure --runtime=docker`",
        )
    )
    checks.extend(check_image_requirements(catalog, engine, driver, cuda))
    checks.extend(Check(f.name, f.status, f.detail, f.fix) for f in gpu_state.findings(_stdout))
    return checks


def load_cuda_drivers(catalog: Catalog) -> dict[str, dict[str, str]]:
    path = catalog.root / "images" / "cuda-drivers.toml"
    return {k: {kk: str(vv) for kk, vv in v.items()} for k, v in read_toml(path).items()} if path.is_file() else {}


def required_cuda(env: Mapping[str, str]) -> str:
    """The CUDA version an image's NVIDIA_REQUIRE_CUDA asks for ("cuda>=13.0" -> "13.0")."""
    found = re.search(r"cuda>=\s*([\d.]+)", env.get("NVIDIA_REQUIRE_CUDA", ""))
    return found.group(1) if found else ""


def judge_driver(driver: str, driver_cuda: str, needed: str, table: Mapping[str, Mapping[str, str]]) -> tuple[str, str, str]:
    """(status, detail, fix) for a driver against an image's CUDA: fine, needs forward
    compatibility, or too old."""
    if version_tuple(driver_cuda)[:2] >= version_tuple(needed)[:2]:
        return "ok", f"needs CUDA {needed}, driver {driver} offers {driver_cuda}", ""
    row = table.get(needed, {})
    minimum, compat = row.get("min_driver", "?"), row.get("forward_compatible_from", "")
    if compat and version_tuple(driver)[:1] >= version_tuple(compat)[:1]:
        return ("warn", f"needs CUDA {needed} (driver >= {minimum}); driver {driver} offers {driver_cuda}: runs only with forward compatibility",
                f"install NVIDIA's cuda-compat package for CUDA {needed} (data-center GPUs), or a driver >= {minimum}")  # fmt: skip
    return "fail", f"needs CUDA {needed} (driver >= {minimum}); driver {driver} offers {driver_cuda}: too old", f"upgrade the NVIDIA driver to >= {minimum}"


def check_image_requirements(catalog: Catalog, engine: Engine | None, driver: str, driver_cuda: str) -> list[Check]:
    """One line per built GPU image: what its NVIDIA_REQUIRE_CUDA asks of this driver."""
    if engine is None:
        return []
    table = load_cuda_drivers(catalog)
    checks = []
    for image in engine.images(f"{LABEL_PREFIX}.kind=topic"):
        needed = required_cuda(image.environment)
        if not needed:
            continue  # no GPU image (docs)
        labels = image.labels
        name = f"{labels.get(f'{LABEL_PREFIX}.topic', '?')}:{labels.get(f'{LABEL_PREFIX}.base', '?')} ({image.id.removeprefix('sha256:')[:12]})"
        status, detail, fix = judge_driver(driver, driver_cuda, needed, table)
        checks.append(Check(f"image {name}", status, detail, fix))
    return checks


def _stdout(cmd: Sequence[str]) -> str | None:
    proc = _run(*cmd)
    return proc.stdout if proc is not None and proc.returncode == 0 else None


def run_checks(catalog: Catalog) -> list[Check]:
    checks, engine = check_engine()
    checks.append(check_compose())
    checks.append(check_disk(engine))
    checks.append(check_bootstrap())
    checks.append(check_memlock())
    checks.append(check_emulation())
    checks.extend(check_gpus(catalog, engine))
    return checks


# --- --fix ---------------------------------------------------------------------------


def _privileged(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", *cmd]
    raise KitError("`--fix` needs root or sudo", fix="run it as root")


def fix(checks: list[Check], log: Callable[[str], None]) -> list[str]:
    """Install the engine, compose and debootstrap from the distribution's packages and
    start dockerd. Returns what was done."""
    if not shutil.which("apt-get"):
        raise KitError("`--fix` knows only Debian/Ubuntu (apt-get)", fix="install Docker by your distribution's guide")
    failing = {c.name for c in checks if c.status in ("fail", "warn")}
    done = []
    packages = []
    # Only where there is no engine at all: a Docker CE that lacks buildx is the user's
    # to complete (its fix line says how), never to be replaced by Debian's docker.io.
    if not find_clients() or not shutil.which("dockerd"):
        packages.append("docker.io")
    if "compose" in failing:
        packages.append("docker-compose")
    if "rootfs bootstrap" in failing:
        packages.append("debootstrap")
    emulation = next((c.name for c in checks if c.name.endswith(" emulation") and c.status == "warn"), "")
    if emulation and not shutil.which("qemu-aarch64-static" if emulation.startswith("arm64") else "qemu-x86_64-static"):
        packages += ["qemu-user-static", "binfmt-support"]
    if packages:
        log(f"installing {' '.join(packages)} from the distribution's packages")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
            if subprocess.run(_privileged(cmd), env=env).returncode != 0:
                raise KitError(f"`{' '.join(cmd[:2])}` failed (see above)", fix="install the packages by hand")
        done.append(f"installed {' '.join(packages)}")
    if emulation:
        done.append(enable_binfmt(emulation.split()[0], log))
    _, engine = check_engine()
    if engine is None:
        done.append(start_dockerd(log))
    return done


def enable_binfmt(arch: str, log: Callable[[str], None]) -> str:
    """Register qemu for `arch` with the F flag. Nothing registers it where no init runs
    (containers, CI machines): binfmt_misc is mounted and the handler enabled here."""
    from mlsyskit.arch import ARCHES
    from mlsyskit.context import binfmt_state

    if not os.path.exists("/proc/sys/fs/binfmt_misc/status"):
        subprocess.run(_privileged(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"]), check=False)
    subprocess.run(_privileged(["update-binfmts", "--enable", f"qemu-{ARCHES[arch]}"]), check=False)
    state = binfmt_state(arch)
    if state != "ready":
        raise KitError(f"{arch} emulation is still not ready: {state}", fix="register it as root on the host (not in a container)")
    log(f"qemu-{ARCHES[arch]} registered with the F flag")
    return f"enabled {arch} emulation (qemu-{ARCHES[arch]}, F flag)"


def start_dockerd(log: Callable[[str], None], wait_s: float = 60) -> str:
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(_privileged(["systemctl", "start", "docker"]), check=True)
        how = "started docker with systemctl"
    else:
        log("no init system: starting dockerd in the background (log: /var/log/dockerd.log)")
        if os.geteuid() != 0:
            raise KitError("starting dockerd needs root", fix="run `sudo dockerd &`, or `invoke doctor --fix` as root")
        with open("/var/log/dockerd.log", "ab") as out:
            subprocess.Popen(_privileged(["dockerd"]), stdout=out, stderr=out, start_new_session=True)
        how = "started dockerd in the background (log: /var/log/dockerd.log)"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if check_engine()[1] is not None:
            return how
        time.sleep(1)
    raise KitError(f"dockerd did not answer within {wait_s:.0f}s", fix="read /var/log/dockerd.log")
