"""Kernel caches: what JIT compilers write (Triton, TorchInductor, FlashInfer, DeepGEMM,
TVM-FFI, SGLang's own...), kept across containers, one folder per topic image ID, GPU
architecture and container user, so that a second start reuses the first's kernels and a
rebuilt image or another GPU never meets a stale one.

Which caches a topic has is data: its framework's `[caches]` (framework.toml) and its own
(topic.toml), each a folder name and the variables that point the software at it. On the
host they live under the kit's cache home ($MLSYSKIT_KERNEL_CACHE, else
~/.cache/mlsyskit/kernels; `off` turns them off):

    <home>/<topic>/<image ID, 12 hex>/<arch>/<user>/<cache>/...
        arch   sm_90 (the GPUs the container gets; sm_80+sm_90 for a mix), cpu (none)
        user   root, or uid-1000: a cache a root container filled holds root's files, which
               another UID could neither write nor remove, so each container user has its own

Every container the kit starts (`invoke shell`, `invoke smoke`, the services of `invoke up`)
gets its folder at /var/cache/mlsyskit/kernels with each cache's variables set
(`for_container`); the folder's time is its last use. Nothing of it enters an image.
`invoke cache ls|rm|prune` manages them; `invoke bundle --with-cache` carries a topic
image's caches, and `invoke load` puts them back under the same image ID.

This module needs the standard library only (`./kit shell` runs with `python -S`), and its
command line serves machines without the kit's environment, e.g. a GPU host that runs an
image's root filesystem under chroot:

    python3 -m mlsyskit.runtime.caches env --topic sglang --image-id sha256:... --arch sm_90 --root /kitcache [--uid 0] [--mkdir]
    python3 -m mlsyskit.runtime.caches dir --topic sglang --image-id sha256:... --arch sm_90 --root /kitcache
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from mlsyskit import IMAGE_PREFIX, LABEL_PREFIX, kit_cache
from mlsyskit.data.catalog import Catalog, KernelCache, Topic
from mlsyskit.errors import KitError, UsageError

if TYPE_CHECKING:  # tarfile, argparse and hashlib load when used: `./kit shell` imports this module
    import argparse
    import tarfile

    from mlsyskit.engine import Engine

TARGET = "/var/cache/mlsyskit/kernels"  # where every container sees its cache folder
HOME_VARIABLE = "MLSYSKIT_KERNEL_CACHE"
OFF = ("off", "none", "0")
ROOT_USER = "root"
BUNDLE_MEMBER = "kernel-cache.tar"  # the member of `invoke bundle --with-cache`

TOPIC_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
IMAGE_RE = re.compile(r"[0-9a-f]{12}")
ARCH_RE = re.compile(r"cpu|gpu-[0-9a-f]{8}|sm_\d+(\+sm_\d+)*")
USER_RE = re.compile(r"root|uid-\d+")

PROC_GPUS = "/proc/driver/nvidia/gpus"  # one entry per GPU the loaded driver sees
PROC_VERSION = "/proc/driver/nvidia/version"
ARCH_QUERY = ("nvidia-smi", "--query-gpu=index,compute_cap", "--format=csv,noheader")

Log = Callable[[str], None]


# --- what a topic declares ------------------------------------------------------------------


def declared(catalog: Catalog, topic: Topic) -> tuple[KernelCache, ...]:
    """The topic's caches: its framework's, then its own (one of the same name replaces the
    framework's). Two caches may not set the same variable: the software would see only one."""
    framework = catalog.frameworks[topic.framework].caches if topic.framework in catalog.frameworks else ()
    merged = {c.name: c for c in framework} | {c.name: c for c in topic.caches}
    owner: dict[str, str] = {}
    for cache in merged.values():
        for variable in cache.variables:
            if variable in owner:
                raise UsageError(
                    f"topic '{topic.name}': caches '{owner[variable]}' and '{cache.name}' both set {variable}",
                    fix=f"keep {variable} in one [caches] entry (envs/{topic.name}/topic.toml or its framework.toml)",
                )
            owner[variable] = cache.name
    return tuple(merged.values())


# --- keys and paths (pure) ------------------------------------------------------------------


def cache_home(environ: Mapping[str, str]) -> Path | None:
    """The kit's cache home on this host; None when $MLSYSKIT_KERNEL_CACHE says off."""
    value = environ.get(HOME_VARIABLE, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser().absolute()
    return kit_cache(environ).absolute() / "kernels"


def image_key(image_id: str) -> str:
    """`sha256:0123456789abcdef...` (or its hex) -> its first 12 hex digits, as `docker images` shows."""
    digits = image_id.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{12,64}", digits):
        raise UsageError(f"'{image_id}' is not an image ID", fix="give the ID `docker images --no-trunc` shows (sha256:...)")
    return digits[:12]


def arch_name(capabilities: Iterable[str]) -> str:
    """Compute capabilities as nvidia-smi says them ("9.0") -> the key of their GPUs: sm_90,
    sm_80+sm_90 for a mix, cpu for none."""
    found: set[tuple[int, int]] = set()
    for cap in capabilities:
        match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cap)
        if not match:
            raise ValueError(f"not a compute capability: {cap!r}")
        found.add((int(match[1]), int(match[2])))
    return "+".join(f"sm_{major}{minor}" for major, minor in sorted(found)) or "cpu"


def normalize_arch(text: str) -> str:
    """What a user types for --arch (`sm_90`, `sm90`, `9.0`, `sm_80+sm_90`, `cpu`) -> the key."""
    value = text.strip().lower()
    if value == "cpu" or re.fullmatch(r"gpu-[0-9a-f]{8}", value):
        return value
    caps = []
    for part in value.split("+"):
        if match := re.fullmatch(r"sm_?(\d+)(\d)", part):
            caps.append(f"{match[1]}.{match[2]}")
        elif re.fullmatch(r"\d+\.\d+", part):
            caps.append(part)
        else:
            raise UsageError(f"--arch {text}: not a GPU architecture", fix="e.g. sm_90 (H100/H200), sm_100 (B200), 9.0, or cpu")
    return arch_name(caps)


def user_dim(uid: int) -> str:
    return ROOT_USER if uid == 0 else f"uid-{uid}"


@dataclass(frozen=True)
class Key:
    """Which cache folder: one per topic, image ID, GPU architecture and container user."""

    topic: str
    image: str  # 12 hex digits
    arch: str
    user: str

    @property
    def relative(self) -> Path:
        return Path(self.topic, self.image, self.arch, self.user)


@dataclass(frozen=True)
class KernelMount:
    """A container's kernel cache: the host folder, mounted at TARGET, and the variables
    that point each cache's software at its subfolder."""

    source: Path
    caches: tuple[KernelCache, ...]
    target: str = TARGET
    # What a container spec takes from it, derived once (fields: read by the stage after).
    volumes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    env: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "volumes", (f"{self.source}:{self.target}",))
        object.__setattr__(self, "env", env_assignments(self.caches, self.target))

    @property
    def folders(self) -> tuple[Path, ...]:
        return tuple(self.source / cache.name for cache in self.caches)


def env_assignments(caches: Sequence[KernelCache], root: str) -> tuple[str, ...]:
    """NAME=ROOT/<cache> for every variable of every cache, in declared order."""
    return tuple(f"{variable}={root.rstrip('/')}/{cache.name}" for cache in caches for variable in cache.variables)


def plan(home: Path | None, topic: str, caches: Sequence[KernelCache], image_id: str, arch: str, user: str) -> KernelMount | None:
    """The mount for a container of this topic image, or None (no caches, or turned off)."""
    if home is None or not caches:
        return None
    key = Key(topic, image_key(image_id), arch, user)
    return KernelMount(home / key.relative, tuple(caches))


def prepare(mount: KernelMount) -> None:
    """Every cache's folder made by this user (docker would make a missing one, owned by
    root), and the folder's time set: its last use."""
    try:
        for folder in mount.folders:
            folder.mkdir(parents=True, exist_ok=True)
        os.utime(mount.source)
    except OSError as exc:
        raise UsageError(
            f"cannot make the kernel cache {mount.source}: {exc.strerror or exc}",
            fix=f"point {HOME_VARIABLE} at a folder you can write, or set it to off",
        ) from None


# --- the host's GPUs ------------------------------------------------------------------------


def _fingerprint() -> str:
    """Names this host's GPUs and driver without running nvidia-smi ("" where the driver
    has no /proc entries): the architectures read once are kept under it."""
    import hashlib

    try:
        entries = sorted(os.listdir(PROC_GPUS))
    except OSError:
        return ""
    parts = []
    for entry in entries:
        try:
            parts.append(f"{entry}\n{(Path(PROC_GPUS) / entry / 'information').read_text()}")
        except OSError:
            parts.append(entry)
    try:
        parts.append(Path(PROC_VERSION).read_text())
    except OSError:
        pass
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def parse_capabilities(text: str) -> dict[str, str]:
    """`nvidia-smi --query-gpu=index,compute_cap --format=csv,noheader` -> {index: "9.0"}."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 2 and cells[0].isdigit() and re.fullmatch(r"\d+\.\d+", cells[1]):
            found[cells[0]] = cells[1]
    return found


def _facts_path(environ: Mapping[str, str]) -> Path:
    return kit_cache(environ) / "gpu-arches.json"


def host_capabilities(environ: Mapping[str, str], query: Callable[[], str] | None = None) -> dict[str, str]:
    """{GPU index: compute capability} of this host: nvidia-smi asked once per set of GPUs
    and driver (kept in ~/.cache/mlsyskit/gpu-arches.json), {} where it cannot say."""
    fingerprint = _fingerprint()
    path = _facts_path(environ)
    if fingerprint:
        try:
            known = json.loads(path.read_text())
            if isinstance(known, dict) and isinstance(known.get(fingerprint), dict):
                return {str(k): str(v) for k, v in known[fingerprint].items()}
        except (OSError, ValueError):
            pass
    if query is None:
        if not shutil.which(ARCH_QUERY[0]):
            return {}
        try:
            proc = subprocess.run(ARCH_QUERY, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        text = proc.stdout if proc.returncode == 0 else ""
    else:
        text = query()
    found = parse_capabilities(text)
    if fingerprint and found:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps({fingerprint: found}))
            os.replace(partial, path)
        except OSError:
            pass  # a cache only: the next start asks again
    return found


def gpu_arch(label: str, capabilities: Mapping[str, str]) -> str:
    """The architecture key of the GPUs a container gets. `label` is what the GPU choice
    says (`none`, `all`, `0,2`); `capabilities` the host's. GPUs whose capability cannot be
    read are keyed by a hash of what is known of them, never as another architecture."""
    if label in ("", "none"):
        return "cpu"
    indices = sorted(capabilities) if label == "all" else [i for i in label.split(",") if i]
    caps = [capabilities[i] for i in indices if i in capabilities]
    if caps and len(caps) == len(indices):
        return arch_name(caps)
    import hashlib

    return "gpu-" + hashlib.sha256(f"{label}|{_fingerprint()}".encode()).hexdigest()[:8]


# --- containers -----------------------------------------------------------------------------


def for_container(catalog: Catalog, topic: Topic, image_id: str, *, gpus: str, user: str, environ: Mapping[str, str]) -> KernelMount | None:
    """The kernel cache of a container the kit starts: the image's ID (as the command found
    the image: images/ensure.py), the architecture of the GPUs it gets (`gpus`: the GPU choice's label), the container's
    user (`root` or `uid-N`). Its folders are made; None when the topic declares no cache
    or the caches are off."""
    caches = declared(catalog, topic)
    home = cache_home(environ)
    if home is None or not caches:
        return None
    arch = gpu_arch(gpus, host_capabilities(environ) if gpus not in ("", "none") else {})
    mount = plan(home, topic.name, caches, image_id, arch, user)
    if mount is not None:
        prepare(mount)
    return mount


# --- invoke cache ls | rm | prune -----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    key: Key
    path: Path
    size: int  # bytes of the files this user can see
    files: int
    last_used: float  # the folder's time: set at every mount


def _walk_size(path: Path) -> tuple[int, int]:
    total = files = 0
    for folder, _dirs, names in os.walk(path, onerror=lambda _exc: None):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                files += 1
    return total, files


def _children(path: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and pattern.fullmatch(p.name))
    except OSError:
        return []


def entries(home: Path, *, sizes: bool = True) -> list[Entry]:
    """Every cache folder under the home, in path order."""
    found = []
    for topic in _children(home, TOPIC_RE):
        for image in _children(topic, IMAGE_RE):
            for arch in _children(image, ARCH_RE):
                for user in _children(arch, USER_RE):
                    size, files = _walk_size(user) if sizes else (0, 0)
                    found.append(Entry(Key(topic.name, image.name, arch.name, user.name), user, size, files, user.stat().st_mtime))
    return found


def select(found: Sequence[Entry], *, topics: Sequence[str] = (), image: str = "", arch: str = "", user: str = "") -> list[Entry]:
    image = image.lower().removeprefix("sha256:")
    arch = normalize_arch(arch) if arch else ""
    return [
        e for e in found
        if (not topics or e.key.topic in topics) and (not image or e.key.image.startswith(image[:12]))
        and (not arch or e.key.arch == arch) and (not user or e.key.user == user)
    ]  # fmt: skip


def image_state(engine: Engine, key: Key) -> str:
    """`current` (the topic's tag `mlsyskit/TOPIC:BASE` is on it: the kit runs it), `untagged`
    (rebuilt since: the kit no longer runs it) or `gone`."""
    info = engine.image(key.image)
    if info is None:
        return "gone"
    alias = f"{IMAGE_PREFIX}/{key.topic}:"
    return "current" if any(tag.startswith(alias) for tag in info.tags) else "untagged"


def _ago(stamp: float, now: float) -> str:
    age = max(now - stamp, 0)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= length:
            return f"{age / length:.0f} {unit} ago"
    return "just now"


def ls(home: Path, engine: Engine | None, topics: Sequence[str] = (), *, image: str = "", arch: str = "") -> str:
    from mlsyskit.errors import EngineError
    from mlsyskit.report import size, table

    found = select(entries(home), topics=topics, image=image, arch=arch)
    if not found:
        return f"no kernel caches under {home}: the kit's containers fill them as their software compiles"
    now = time.time()
    rows = []
    for entry in found:
        state = "?"  # the engine does not answer: whether the kit still runs the image is unknown
        if engine is not None:
            try:
                state = image_state(engine, entry.key)
            except EngineError:
                engine = None
        k = entry.key
        rows.append((k.topic, k.image, state, k.arch, k.user, size(entry.size), entry.files, _ago(entry.last_used, now)))
    total = sum(e.size for e in found)
    headers = ("topic", "image", "image state", "arch", "user", "size", "files", "last used")
    return table(headers, rows) + f"\n{len(found)} cache(s), {size(total)} under {home}; `invoke cache prune` removes those of images the kit no longer runs"


def _tidy(path: Path, home: Path) -> None:
    """Remove the empty folders above a removed cache, up to the home."""
    for parent in path.parents:
        if parent == home or home not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:
            return


def remove(found: Sequence[Entry], home: Path, engine: Callable[[], Engine], log: Log) -> int:
    """Remove these caches. Files a root container wrote into this user's home cannot be
    removed by this user: a throw-away root container of a kit image removes them, as
    they were made. Returns the bytes freed."""
    freed = 0
    for entry in found:
        try:
            shutil.rmtree(entry.path)
        except PermissionError:
            _remove_as_root(entry, engine())
        except FileNotFoundError:
            pass
        _tidy(entry.path, home)
        freed += entry.size
        log(f"removed {entry.key.relative}")
    return freed


def _remove_as_root(entry: Entry, engine: Engine) -> None:
    from mlsyskit.engine import ContainerSpec

    own = engine.image(entry.key.image)  # the cache's own image where it is still here, else any of the kit's
    kit_images = [own] if own is not None else engine.images(f"{LABEL_PREFIX}.kind")
    if not kit_images:
        raise KitError(f"cannot remove {entry.path}: a root container wrote it, and no kit image is here to remove it with", fix=f"sudo rm -rf {entry.path}")
    parent = entry.path.parent
    spec = ContainerSpec(
        image=kit_images[0].id, command=("rm", "-rf", "--one-file-system", f"/cache/{entry.path.name}"),
        volumes=(f"{parent}:/cache",), user="0:0", network="none", init=False,
    )  # fmt: skip
    proc = engine.run(spec, timeout=600)
    if proc.returncode != 0 or entry.path.exists():
        raise KitError(f"cannot remove {entry.path}: {(proc.stderr.strip().splitlines() or ['it is still there'])[-1]}", fix=f"sudo rm -rf {entry.path}")


def prune(home: Path, engine: Engine, older_than_days: float | None, log: Log) -> tuple[list[Entry], int]:
    """Remove the caches of images the kit no longer runs (rebuilt, removed), and with
    `older_than_days` also those not used for that long."""
    now = time.time()
    doomed = []
    for entry in entries(home):
        stale = image_state(engine, entry.key) != "current"
        unused = older_than_days is not None and now - entry.last_used > older_than_days * 86400
        if stale or unused:
            doomed.append(entry)
    return doomed, remove(doomed, home, lambda: engine, log)


# --- bundles: a topic image's caches in one tar ----------------------------------------------


def write_tar(found: Sequence[Entry], out: Path, log: Log) -> list[dict[str, Any]]:
    """The caches as one uncompressed tar, paths `<topic>/<image>/<arch>/<user>/...`,
    regular files and folders only, owned by nobody in particular. Files this user cannot
    read (a root container's) and links are left out, with one line saying how many.
    Returns what it holds, per cache, for the bundle's manifest."""
    import tarfile

    held = []
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in found:
            files = size = skipped = 0
            for folder, dirs, names in os.walk(entry.path, onerror=lambda _exc: None):
                dirs.sort()
                base = Path(folder)
                arc_base = entry.key.relative / base.relative_to(entry.path)
                tar.addfile(_info(tar, base, arc_base, directory=True))
                for name in sorted(names):
                    path = base / name
                    try:
                        st = os.lstat(path)
                        if not stat.S_ISREG(st.st_mode):
                            skipped += 1
                            continue
                        with path.open("rb") as handle:
                            info = _info(tar, path, arc_base / name, directory=False)
                            info.size = st.st_size
                            tar.addfile(info, handle)
                    except OSError:
                        skipped += 1
                        continue
                    files += 1
                    size += st.st_size
            if skipped:
                log(f"kernel cache {entry.key.relative}: {skipped} file(s) left out (links, or files a root container wrote that you cannot read)")
            k = entry.key
            held.append({"topic": k.topic, "image": k.image, "arch": k.arch, "user": k.user, "files": files, "bytes": size})
    return held


def _info(tar: tarfile.TarFile, path: Path, name: Path, *, directory: bool) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(str(PurePosixPath(*name.parts)))
    st = os.lstat(path)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.mode = 0o755 if st.st_mode & 0o100 else 0o644
    return info


def extract_tar(open_stream: Callable[[], AbstractContextManager[IO[bytes]]], home: Path, images: Mapping[str, str], uid: int) -> tuple[int, int]:
    """Put a bundle's caches under `home`. `open_stream` opens the tar (it sits inside the
    bundle: read as a stream, twice). Only folders and regular files under
    `<topic>/<image>/<arch>/<user>/` of an image the bundle carries (`images`: 12-hex key ->
    topic) are allowed; anything else (a link, a device, `..`, another image) refuses the
    whole tar in the first reading, before anything is written. A user's caches become this
    user's (root's stay root's); a file already there is kept. Returns (written, kept)."""
    import tarfile

    for _member in _members(open_stream, home, images, uid):
        pass
    home.mkdir(parents=True, exist_ok=True)
    real_home = home.resolve()
    written = kept = 0
    with open_stream() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            dest = _destination(member, home, images, uid)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if real_home not in dest.parent.resolve().parents:
                raise KitError(f"the bundle's kernel cache would reach outside {home} through a link ({member.name})", fix=f"remove the link under {home}")
            if os.path.lexists(dest):
                kept += 1
                continue
            source = tar.extractfile(member)
            assert source is not None
            partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if member.mode & 0o100 else 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.utime(partial, (member.mtime, member.mtime))
                os.replace(partial, dest)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            written += 1
    return written, kept


def _members(open_stream: Callable[[], AbstractContextManager[IO[bytes]]], home: Path, images: Mapping[str, str], uid: int) -> Iterator[tarfile.TarInfo]:
    import tarfile

    try:
        with open_stream() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _destination(member, home, images, uid)
                yield member
    except (tarfile.TarError, EOFError) as exc:
        raise KitError(f"the bundle's kernel cache is not a readable tar ({exc})", fix="write the bundle again") from None


def _destination(member: tarfile.TarInfo, home: Path, images: Mapping[str, str], uid: int) -> Path:
    parts = PurePosixPath(member.name).parts
    bad = (
        PurePosixPath(member.name).is_absolute() or ".." in parts or len(parts) < 4
        or not (member.isreg() or member.isdir())
        or not (TOPIC_RE.fullmatch(parts[0]) and IMAGE_RE.fullmatch(parts[1]) and ARCH_RE.fullmatch(parts[2]) and USER_RE.fullmatch(parts[3]))
        or images.get(parts[1]) != parts[0]
    )  # fmt: skip
    if bad:
        raise KitError(f"the bundle's kernel cache holds {member.name!r}, which is not a cache file of an image it carries", fix="write the bundle again")
    user = ROOT_USER if parts[3] == ROOT_USER else user_dim(uid)
    return home.joinpath(parts[0], parts[1], parts[2], user, *parts[4:])


# --- the command line, for hosts without the kit's environment --------------------------------


def _catalog_topic(name: str) -> tuple[Catalog, Topic]:
    from mlsyskit.data.catalog import load_catalog

    catalog = load_catalog()
    return catalog, catalog.topic(name)


def _key_folder(args: argparse.Namespace) -> tuple[Path, tuple[KernelCache, ...]]:
    catalog, topic = _catalog_topic(args.topic)
    root = Path(args.root) if args.root else cache_home(os.environ)
    if root is None:
        raise UsageError(f"{HOME_VARIABLE} says off", fix="give --root DIR")
    key = Key(topic.name, image_key(args.image_id), normalize_arch(args.arch), user_dim(args.uid))
    return root / key.relative, declared(catalog, topic)


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog="python3 -m mlsyskit.runtime.caches", description="A topic image's kernel cache, as the kit lays it out.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("env", "print NAME=PATH for every cache variable"), ("dir", "print the cache folder")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--topic", required=True, help="the topic (envs/TOPIC)")
        s.add_argument("--image-id", required=True, help="the image's ID, sha256:... (`docker images --no-trunc`)")
        s.add_argument("--arch", required=True, help="the GPUs' architecture: sm_90, 9.0, sm_80+sm_90, or cpu")
        s.add_argument("--root", default="", help=f"the cache home as the container sees it (default: ${HOME_VARIABLE} or ~/.cache/mlsyskit/kernels)")
        s.add_argument("--uid", type=int, default=0, help="the UID the software runs as (0: root)")
        s.add_argument("--gid", type=int, default=None, help="its group, for --mkdir (default: the same number as --uid)")
        s.add_argument("--mkdir", action="store_true", help="make the folders (owned by --uid:--gid when run as root)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        folder, caches = _key_folder(args)
        if args.mkdir:
            for path in _made(folder, caches):
                if os.geteuid() == 0 and args.uid:
                    os.chown(path, args.uid, args.uid if args.gid is None else args.gid)
        lines = env_assignments(caches, str(folder)) if args.command == "env" else (str(folder),)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\n".join(lines))
    return 0


def _made(folder: Path, caches: Sequence[KernelCache]) -> Iterator[Path]:
    """Make the folder and each cache's subfolder; yields the user-level folder and below."""
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    for cache in caches:
        (folder / cache.name).mkdir(exist_ok=True)
        yield folder / cache.name


if __name__ == "__main__":
    sys.exit(main())
