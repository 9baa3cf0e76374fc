"""The OS root filesystem under the base layer. Where a registry answers it is pulled;
where none does (air-gapped clusters, mirrors only) the same OS is bootstrapped from an
apt mirror with debootstrap and imported, so no container registry is ever required."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from mlsyskit import IMAGE_PREFIX, LABEL_PREFIX
from mlsyskit.arch import host_arch
from mlsyskit.data import debian_lock
from mlsyskit.data.catalog import Base
from mlsyskit.data.config import Config
from mlsyskit.data.debian_lock import DebianLock
from mlsyskit.engine import Engine, ImageInfo
from mlsyskit.errors import EngineError, UsageError
from mlsyskit.images.plan import RootImage

PULL_TIMEOUT_S = 90


def bootstrap_ref(base: Base) -> str:
    return f"{IMAGE_PREFIX}/rootfs-{base.name}:{base.bootstrap_suite}"


def _found(engine: Engine, ref: str, origin: str, held: Mapping[str, ImageInfo] | None = None) -> RootImage | None:
    found = engine.image(ref) if held is None else held.get(ref)
    return RootImage(ref=ref, image_id=found.id, origin=origin) if found else None


def find_root_image(engine: Engine, base: Base, config: Config, held: Mapping[str, ImageInfo] | None = None) -> RootImage | None:
    """The root image already in the engine, if any (never pulls or builds); `held`: the
    engine's images as the command listed them (`Context.held`), else the engine is asked."""
    candidates = []
    # another architecture's root filesystem is bootstrapped: a pull gives the host's
    if (config.rootfs in ("auto", "registry") or not base.can_bootstrap) and base.arch == host_arch():
        candidates.append((base.registry_image, "registry"))
    if config.rootfs in ("auto", "bootstrap") and base.can_bootstrap:
        candidates.append((bootstrap_ref(base), "bootstrap"))
    for ref, origin in candidates:
        if found := _found(engine, ref, origin, held):
            return found
    return None


def ensure_root_image(
    engine: Engine, base: Base, config: Config, log: Callable[[str], None], *, lock: DebianLock, held: Mapping[str, ImageInfo] | None = None,
) -> RootImage:  # fmt: skip
    if found := find_root_image(engine, base, config, held):
        return found
    if base.arch != host_arch() and base.can_bootstrap:
        return bootstrap(engine, base, config, log, lock=lock)
    if config.rootfs in ("auto", "registry") or not base.can_bootstrap:
        log(f"pulling {base.registry_image} (up to {PULL_TIMEOUT_S}s)")
        if engine.pull(base.registry_image, PULL_TIMEOUT_S):
            return _found(engine, base.registry_image, "registry")  # type: ignore[return-value]
        if config.rootfs == "registry" or not base.can_bootstrap:
            raise EngineError(
                f"cannot pull {base.registry_image}: no registry answered",
                fix="configure a registry mirror for dockerd, or use `--base pypi` (bootstraps without a registry)",
            )
        log("no registry answered: bootstrapping the root filesystem from the apt mirror instead")
    return bootstrap(engine, base, config, log, lock=lock)


def _check_locked(base: Base, target: str, mirror: str, lock: DebianLock) -> None:
    """The root filesystem must hold the packages images/debian-lock.toml records for it."""
    entry = lock.entries.get(f"{base.name}/rootfs")
    if entry is None:
        return
    with open(os.path.join(target, "var", "lib", "dpkg", "status")) as status:
        found = debian_lock.read_dpkg_status(status.read())
    differ = debian_lock.differences(entry.packages, found)
    if differ:
        raise UsageError(
            f"debootstrap from {mirror} gave other packages than {debian_lock.FILE} records for the root filesystem ({len(differ)} differ, e.g. {differ[0]})",
            fix=f"set network.apt_mirror in kit.toml to a snapshot of the day it was recorded ({lock.snapshot_url()}), "
            f'or delete its [layer."{base.name}/rootfs"] and [layer."{base.name}/base"] tables and run `invoke build`, then `invoke lock`',
        )


def _import_foreign(engine: Engine, base: Base, target: str, ref: str, mirror: str, tmp: str) -> None:
    """Another architecture's root filesystem, imported by BuildKit (`FROM scratch` + `ADD` of
    its tar, built with --platform) so that the image's config says its architecture: Debian's
    engine 20.10 ignores `docker import --platform` and labels every import amd64 (moby#42813)."""
    context = Path(tmp) / "context"
    context.mkdir()
    subprocess.run(["tar", "-C", target, "--numeric-owner", "-cf", str(context / "rootfs.tar"), "."], check=True)
    (context / "Dockerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n')
    engine.build(
        dockerfile=context / "Dockerfile", context=context, tag=ref, build_args={}, secrets={}, platform=base.platform,
        labels={f"{LABEL_PREFIX}.kind": "rootfs", f"{LABEL_PREFIX}.mirror": mirror, f"{LABEL_PREFIX}.arch": base.arch},
    )  # fmt: skip


def bootstrap(engine: Engine, base: Base, config: Config, log: Callable[[str], None], *, lock: DebianLock) -> RootImage:
    debootstrap = shutil.which("debootstrap") or shutil.which("mmdebstrap")
    if not debootstrap:
        raise UsageError("debootstrap is not installed", fix="`sudo apt-get install debootstrap`, or `invoke doctor --fix`")
    if os.geteuid() != 0:
        raise UsageError("bootstrapping a root filesystem needs root", fix="run once as root, or make a registry reachable")
    mirror = config.apt_mirror or base.bootstrap_mirror
    ref = bootstrap_ref(base)
    with tempfile.TemporaryDirectory(prefix="mlsyskit-rootfs-") as tmp:
        target = os.path.join(tmp, "root")
        foreign = base.arch != host_arch()
        log(f"bootstrapping Debian {base.bootstrap_suite} ({base.arch}) from {mirror} ({'a few minutes under emulation' if foreign else 'about a minute'})")
        cmd = [debootstrap, "--variant=minbase", *([f"--arch={base.arch}"] if foreign else []), base.bootstrap_suite, target, mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise UsageError(f"debootstrap failed: {' | '.join(tail)}", fix="check network.apt_mirror in kit.toml")
        _check_locked(base, target, mirror, lock)
        # Downloaded .debs and package lists are not part of the OS.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            subprocess.run(["find", os.path.join(target, leftover), "-type", "f", "-delete"], check=False)
        if foreign:
            _import_foreign(engine, base, target, ref, mirror, tmp)
            log(f"imported {ref} ({base.platform})")
            return _found(engine, ref, "bootstrap")  # type: ignore[return-value]
        with subprocess.Popen(["tar", "-C", target, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE) as tar:
            assert tar.stdout is not None
            engine.import_tar(
                tar.stdout,
                ref,
                changes=[
                    'CMD ["/bin/bash"]',
                    f"LABEL {LABEL_PREFIX}.kind=rootfs {LABEL_PREFIX}.mirror={mirror}",
                ],
            )
    log(f"imported {ref}")
    return _found(engine, ref, "bootstrap")  # type: ignore[return-value]
