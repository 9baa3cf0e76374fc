"""`invoke lock`: re-resolve every lock (frameworks first, then topics) with the uv the kit
itself is locked to, and check that each topic agrees with its framework."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from mlsyskit import LABEL_PREFIX
from mlsyskit.data import debian_lock
from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.data.config import load_config
from mlsyskit.data.lockfile import disagreements, uv_binary
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.errors import KitError, LockError


def _uv_lock(folder: Path, check: bool) -> subprocess.CompletedProcess[str]:
    cmd = [uv_binary(), "lock", "--directory", str(folder)]
    if check:
        cmd.append("--check")
    return subprocess.run(cmd, capture_output=True, text=True, env=_lock_env())


def _lock_env() -> dict[str, str]:
    # Resolution never needs a managed Python download; kit.toml's mirror, CA bundle and
    # proxies apply to locking as they do to building.
    config = load_config()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", **config.proxy}
    if config.pypi_index:
        env["UV_DEFAULT_INDEX"] = config.pypi_index
    if config.ca_bundle:
        env["SSL_CERT_FILE"] = config.ca_bundle
    return env


def lock(catalog: Catalog, topics: list[Topic], *, check: bool, log: Callable[[str], None] = print) -> None:
    frameworks = sorted({t.framework for t in topics if t.framework})
    folders = [catalog.frameworks[name].path for name in frameworks] + [t.path for t in topics]
    stale = []
    for folder in folders:
        name = folder.relative_to(catalog.root)
        proc = _uv_lock(folder, check)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            if check:
                stale.append(str(name))
                log(f"stale  {name}/uv.lock: {last}")
                continue
            raise LockError(f"cannot resolve {name}: {last}", fix=f"edit {name}/pyproject.toml")
        log(f"{'fresh' if check else 'locked'}  {name}/uv.lock")
    for topic in topics:
        if not topic.framework:
            continue
        framework = catalog.frameworks[topic.framework]
        for package, framework_version, topic_version in disagreements(framework.lock_path, topic.lock_path):
            stale.append(f"{topic.name}:{package}")
            log(f"drift  envs/{topic.name}: {package} {topic_version} but framework {framework.name} has {framework_version}")
    if stale:
        raise LockError(
            f"{len(stale)} lock(s) stale or drifting from their framework: {', '.join(stale)}",
            fix="run `invoke lock` (and pin the framework's version in the topic's pyproject.toml if it drifts)",
        )


# --- Debian packages (images/debian-lock.toml) ---------------------------------------------


def debian_asks(catalog: Catalog, base_name: str) -> dict[str, tuple[str, ...]]:
    """{lock key: what the files ask apt for}, for the base layer and each topic with apt packages."""
    base = catalog.base(base_name)
    asks = {f"{base.name}/base": tuple(sorted(base.apt_packages))}
    for topic in catalog.select([]):
        if topic.apt_packages and base.arch in topic.arches:
            asks[f"{base.name}/topic/{topic.name}"] = tuple(sorted(topic.apt_packages))
    return asks


def check_debian(catalog: Catalog, base_name: str, log: Callable[[str], None] = print) -> list[str]:
    """Lock keys whose recorded asks differ from the files' (or that are not recorded)."""
    lock = debian_lock.load(catalog.root)
    base = catalog.base(base_name)
    if not any(key.startswith(f"{base.name}/") for key in lock.entries):
        # a flavour the lock has never recorded (e.g. nvidia on this machine): its builds take
        # the mirror's versions until `invoke lock` records them; nothing here has gone stale
        log(f"unrecorded  {debian_lock.FILE} [{base.name}]: build it, then `invoke lock` pins its packages")
        return []
    stale = []
    for key, asks in debian_asks(catalog, base_name).items():
        entry = lock.entries.get(key)
        if entry is None or entry.asks != asks:
            stale.append(key)
            log(f"stale  {debian_lock.FILE} [{key}]: the files ask for {' '.join(asks)}; the lock records {' '.join(entry.asks) if entry else 'nothing'}")
        else:
            log(f"fresh  {debian_lock.FILE} [{key}] ({len(entry.packages)} packages)")
    return stale


def dpkg_versions(engine: Engine, image: str) -> dict[str, str]:
    fmt = "${Package}\t${Version}\n"
    proc = engine.run(ContainerSpec(image=image, command=("dpkg-query", "-W", "-f", fmt), network="none"), timeout=120)
    if proc.returncode != 0:
        raise KitError(f"cannot list the Debian packages in {image}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return dict(line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line)


def record_debian(engine: Engine, catalog: Catalog, base_name: str, log: Callable[[str], None] = print) -> Path:
    """Record what apt installed in the built images: the root filesystem, the base layer's
    closure over it, and each topic's over its parent. An image that is not built, or not
    built from today's asks, is left as it was recorded."""
    from mlsyskit.images.plan import topic_alias
    from mlsyskit.images.sbom import PARENT_LABEL, ROOT_LABEL

    lock = debian_lock.load(catalog.root)
    asks = debian_asks(catalog, base_name)
    wrote = False
    for topic in catalog.select([]):
        info = engine.image(topic_alias(topic.name, base_name))
        if info is None:
            continue
        chain = [info]
        while parent_ref := chain[-1].labels.get(PARENT_LABEL, ""):
            parent = engine.image(parent_ref)
            if parent is None:
                break
            chain.append(parent)
        base_image = next((i for i in chain if i.labels.get(f"{LABEL_PREFIX}.kind") == "base"), chain[-1])
        root_ref = base_image.labels.get(ROOT_LABEL, "")
        base_key = f"{base_name}/base"
        base_fresh = base_key in lock.entries and lock.entries[base_key].asks == asks[base_key]
        if not base_fresh and root_ref:
            rootfs, base = dpkg_versions(engine, root_ref), dpkg_versions(engine, base_image.id)
            if set(asks[base_key]) <= set(base):
                lock.entries[f"{base_name}/rootfs"] = debian_lock.Entry(asks=(), packages=rootfs)
                lock.entries[base_key] = debian_lock.Entry(asks=asks[base_key], packages=debian_lock.closure(rootfs, base))
                log(f"recorded {base_name}/rootfs ({len(rootfs)} packages) and {base_name}/base from {root_ref} and {base_image.tags[0]}")
                wrote = True
        key = f"{base_name}/topic/{topic.name}"
        if key in asks and (lock.entries.get(key) is None or lock.entries[key].asks != asks[key]):
            mine, parent_versions = dpkg_versions(engine, info.id), dpkg_versions(engine, chain[1].id)
            if set(asks[key]) <= set(mine):
                lock.entries[key] = debian_lock.Entry(asks=asks[key], packages=debian_lock.closure(parent_versions, mine))
                log(f"recorded {key} from {topic_alias(topic.name, base_name)}")
                wrote = True
    missing = [k for k in asks if k not in lock.entries or lock.entries[k].asks != asks[k]]
    for key in missing:
        log(f"not recorded: {key} (build it first: `invoke build`, then `invoke lock` again)")
    if wrote:
        lock.recorded = debian_lock.now_stamp()
        lock.path.write_text(debian_lock.dump(lock))
    return lock.path
